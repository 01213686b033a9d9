"""Reading gridlm checkpoints: safe loads, one-line errors, and names of older releases.

Checkpoint reading lives here, below everything that needs it (the refiner reads its base
model, the CLI checks ``--ckpt_path``, callbacks resume), so no layer imports from one above it.

- :func:`read_checkpoint` loads a file with ``weights_only=True`` (memory-mapped) and turns the
  errors torch raises for truncated or foreign files into one ``ValueError`` line.
- Releases before 0.2 installed the packages at top level (``modules``, ``datamodules``, ...);
  their checkpoints name classes such as ``modules.base_model.AutoregressiveGridModel``.
  :func:`upgrade_class_path` maps those names to ``gridlm.modules...`` so old checkpoints load.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

LEGACY_PACKAGES = ("modules", "datamodules", "callbacks", "experiments")  # top-level names before 0.2


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
