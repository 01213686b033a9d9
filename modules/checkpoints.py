"""Reading gridlm checkpoints: safe loads, one-line errors, names of older releases, shipped weights.

Checkpoint reading lives here, below everything that needs it (the refiner reads its base
model, the CLI checks ``--ckpt_path``, callbacks resume), so no layer imports from one above it.

- :func:`read_checkpoint` loads a file with ``weights_only=True`` (memory-mapped) and turns the
  errors torch raises for truncated or foreign files into one ``ValueError`` line.
- Releases before 0.2 installed the packages at top level (``modules``, ``datamodules``, ...);
  their checkpoints name classes such as ``modules.base_model.AutoregressiveGridModel``.
  :func:`upgrade_class_path` maps those names to ``gridlm.modules...`` so old checkpoints load.
- ``pretrained:<name>`` names weights shipped inside the package (``gridlm/configs/pretrained/
  <name>.ckpt``, with ``<name>.json`` beside it: the model card's measured figure);
  :func:`resolve_checkpoint` turns it into a path (``--ckpt_path``, ``--model.init_from``).
- :func:`load_weights` copies a checkpoint's weights into a model built from the config
  (``--model.init_from``: fine-tuning starts from them; no optimizer state, step or callback
  state is taken), after checking that the architecture and the serialization agree.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional

import torch

LEGACY_PACKAGES = ("modules", "datamodules", "callbacks", "experiments")  # top-level names before 0.2

# hyperparameters that decide the shapes or meaning of the weights, in the order they are reported
MODEL_FIELDS = (
    "vocab_size", "d_model", "n_layers", "n_heads", "mlp_ratio", "encoding", "tie_embeddings", "max_seq_len",
    "norm", "mlp", "qk_norm", "input_attention",
)  # fmt: skip
SERIALIZATION_FIELDS = ("order", "row_end")  # linked from data.*: how a grid becomes tokens

PRETRAINED_PREFIX = "pretrained:"
PRETRAINED_PACKAGE = "gridlm.configs"  # shipped weights: <package folder>/pretrained/<name>.ckpt


def upgrade_class_path(path: Any) -> Any:
    """``"modules.base_model.X"`` -> ``"gridlm.modules.base_model.X"``; anything else unchanged."""
    if isinstance(path, str) and path.split(".", 1)[0] in LEGACY_PACKAGES and "." in path:
        return f"gridlm.{path}"
    return path


def upgrade_checkpoint(checkpoint: Any) -> Any:
    """Rewrite the class paths an older release stored (``hyper_parameters._class_path`` and the
    resolved config's ``class_path`` entries) in place; returns the checkpoint."""
    if not isinstance(checkpoint, dict):
        return checkpoint
    hp = checkpoint.get("hyper_parameters")
    if isinstance(hp, dict) and "_class_path" in hp:
        hp["_class_path"] = upgrade_class_path(hp["_class_path"])
    _upgrade_config(checkpoint.get("gridlm", {}).get("config") if isinstance(checkpoint.get("gridlm"), dict) else None)
    return checkpoint


def _upgrade_config(node: Any) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "class_path":
                node[k] = upgrade_class_path(v)
            else:
                _upgrade_config(v)
    elif isinstance(node, list):
        for v in node:
            _upgrade_config(v)


SHARDED_METADATA = "meta.pt"  # Lightning's FSDP sharded checkpoint: a folder of shards and this file


def read_checkpoint(path: str, what: str = "--ckpt_path") -> dict:
    """Read a checkpoint for inspection or loading: memory-mapped, ``weights_only=True``, class
    paths of older releases upgraded, one-line errors naming ``what`` and the file. A sharded
    FSDP checkpoint (a folder) yields its ``meta.pt``: everything but the weights and optimizer
    state, with ``"sharded": True``."""
    sharded = Path(path).is_dir() and (Path(path) / SHARDED_METADATA).is_file()
    if not sharded and not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path}: no such checkpoint file")
    try:
        checkpoint = torch.load(Path(path) / SHARDED_METADATA if sharded else path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint {path} cannot be loaded ({first}); is it a complete gridlm checkpoint?") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint dict")
    if sharded:
        checkpoint["sharded"] = True
    return upgrade_checkpoint(checkpoint)


def init_kwargs(hparams: dict, cls: type) -> dict:
    """The saved hyperparameters ``cls.__init__`` accepts (private ``_class_path``-style keys and
    fields a newer or older release added are left out; their defaults apply)."""
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in hparams.items() if k in accepted}


def model_from_checkpoint(checkpoint: dict, cls: type, path: str, what: str = "--ckpt_path") -> Any:
    """Build ``cls`` from a checkpoint's hyperparameters and load its weights (strict), without
    Lightning's class-path import (which rejects the names of older releases)."""
    hparams = checkpoint.get("hyper_parameters")
    if checkpoint.get("sharded"):
        raise ValueError(
            f"{what}: {path} is a sharded FSDP checkpoint (a folder); make one file of it first: "
            f"python -m lightning.pytorch.utilities.consolidate_checkpoint {path}"
        )
    if not isinstance(hparams, dict) or "d_model" not in hparams:
        raise ValueError(f"{what}: {path} has no gridlm model hyperparameters; is it a Lightning checkpoint of gridlm fit?")
    model = cls(**init_kwargs(hparams, cls))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what}: {path} is not a {cls.__name__} checkpoint ({first})") from None
    return model


# ---------------------------------------------------------------- compatibility
def _fmt(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def hparam_mismatches(saved: dict, requested: dict, defaults: Optional[dict] = None) -> list[str]:
    """``"<field> <saved> in the checkpoint vs <requested> in the config"`` for every
    ``MODEL_FIELDS`` entry that differs. With ``defaults``, a requested value equal to its default
    (not set by the user) is not a mismatch: the checkpoint's value will be used."""
    out = []
    for k in MODEL_FIELDS:
        if k not in saved or k not in requested:
            continue
        if defaults is not None and k in defaults and _fmt(requested[k]) == _fmt(defaults[k]):
            continue
        if _fmt(saved[k]) != _fmt(requested[k]):
            out.append(f"{k} {_fmt(saved[k])} in the checkpoint vs {_fmt(requested[k])} in the config")
    return out


def tensor_mismatches(mine: dict, theirs: dict, limit: int = 5) -> list[str]:
    """The first ``limit`` differences between two state dicts (missing keys, other shapes)."""
    diffs: list[str] = []
    for k in sorted(set(mine) | set(theirs)):
        if k not in theirs:
            diffs.append(f"{k} missing from the checkpoint")
        elif k not in mine:
            diffs.append(f"{k} in the checkpoint is not in the model")
        elif tuple(mine[k].shape) != tuple(theirs[k].shape):
            diffs.append(f"{k} shape {tuple(theirs[k].shape)} in the checkpoint vs {tuple(mine[k].shape)} in the model")
        if len(diffs) >= limit:
            break
    return diffs


# ---------------------------------------------------------------- shipped weights
def pretrained_dir() -> Path:
    """The folder of the weights shipped inside the package (it may hold none)."""
    from importlib.resources import files

    return Path(str(files(PRETRAINED_PACKAGE))) / "pretrained"


def pretrained_names() -> list[str]:
    """Names with a model card (``<name>.json``), whether or not the weights file is there yet."""
    folder = pretrained_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def pretrained_card(name: str) -> dict:
    """The model card figures of shipped weights ``name`` (``<name>.json``)."""
    import json

    path = pretrained_dir() / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"pretrained:{name}: no such shipped weights; available: {', '.join(pretrained_names()) or 'none'}")
    return json.loads(path.read_text())


def resolve_checkpoint(path: Any, what: str = "--ckpt_path") -> Any:
    """``pretrained:<name>`` -> the path of the shipped ``<name>.ckpt``; anything else unchanged.

    One-line errors name ``what``: an unknown name lists the shipped ones; a known name whose
    weights file is missing (a checkout made before the weights were added) says so."""
    if not isinstance(path, str) or not path.startswith(PRETRAINED_PREFIX):
        return path
    name = path[len(PRETRAINED_PREFIX) :]
    names = pretrained_names()
    if name not in names:
        raise ValueError(f"{what} {path}: no shipped weights named {name!r}; available: {', '.join(names) or 'none'} (or give a checkpoint path)")
    file = pretrained_dir() / f"{name}.ckpt"
    if not file.is_file():
        raise FileNotFoundError(f"{what} {path}: this copy of gridlm has the model card of {name!r} but not its weights ({file} is missing)")
    return str(file)


def load_weights(model: Any, source: str, what: str = "--model.init_from") -> dict:
    """Copy the weights of checkpoint ``source`` (a path or ``pretrained:<name>``) into ``model``.

    Only the weights: the optimizer state, the step counter and callback states are not read, so
    training starts afresh from them. The architecture (``MODEL_FIELDS``) and the serialization
    (``order``, ``row_end``) of the checkpoint must equal the model's; otherwise one ``ValueError``
    line names ``what`` and every mismatching field. Returns the checkpoint's ``global_step`` and
    resolved ``path``."""
    path = resolve_checkpoint(source, what)
    checkpoint = read_checkpoint(path, what)
    saved = checkpoint.get("hyper_parameters")
    if not isinstance(saved, dict) or "d_model" not in saved or "state_dict" not in checkpoint:
        raise ValueError(f"{what} {source}: {path} holds no gridlm model weights; is it a checkpoint of gridlm fit?")
    mine = dict(getattr(model, "hparams", {}))
    diffs = hparam_mismatches(saved, mine)
    diffs += [f"{k} {saved[k]!r} in the checkpoint vs {mine[k]!r} in the config (data.{k})" for k in SERIALIZATION_FIELDS if k in saved and k in mine and saved[k] != mine[k]]
    diffs = diffs or tensor_mismatches(model.state_dict(), checkpoint["state_dict"])
    if diffs:
        raise ValueError(f"{what} {source}: the architecture does not match the model: " + "; ".join(diffs))
    model.load_state_dict(checkpoint["state_dict"])
    return {"path": path, "global_step": checkpoint.get("global_step")}
