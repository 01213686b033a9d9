"""Shipped weights: pack a trained checkpoint into the package and measure its model-card figure.

``gridlm predict --ckpt_path pretrained:quickstart`` and ``gridlm fit --model.init_from
pretrained:quickstart`` read ``gridlm/configs/pretrained/quickstart.ckpt``
(:func:`gridlm.modules.checkpoints.resolve_checkpoint`). Beside it, ``quickstart.json`` holds
the validation figure measured on a small fixed subset (``subset``: the ``gridlm validate``
flags that choose it), so a test can check that the shipped file still reproduces it.

``python -m gridlm.experiments.pretrained pack <run>/last.ckpt --name quickstart`` keeps only
what inference and fine-tuning need (weights, hyperparameters, provenance; no optimizer or loop
state), writes ``configs/pretrained/<name>.ckpt``, measures the figure and writes it into
``<name>.json``. ``python -m gridlm.experiments.pretrained measure quickstart`` measures the
shipped file again and compares.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

from gridlm.modules.checkpoints import PRETRAINED_PREFIX, pretrained_dir, read_checkpoint, resolve_checkpoint

# what a packed checkpoint keeps: Lightning reads the version, gridlm the rest
KEPT_KEYS = ("state_dict", "hyper_parameters", "gridlm", "epoch", "global_step", "pytorch-lightning_version")
FIGURE_METRICS = ("val/loss", "val/exact_match")
LOSS_TOLERANCE = 1e-3  # relative: the same weights on the same examples, summed in another order
DEFAULT_SUBSET = [  # the first 16 held-out test pairs of the quickstart's ARC-AGI-1 training tasks, all decoded
    "--config", "quickstart",
    "--data.max_val_examples", "16",
    "--trainer.limit_val_batches", "null",
    "--model.n_generate", "16",
]  # fmt: skip


def pack(source: str, out: Path) -> dict:
    """Write the weights-only copy of checkpoint ``source`` to ``out``; returns what was kept."""
    checkpoint = read_checkpoint(source, "pack")
    if "state_dict" not in checkpoint or "d_model" not in (checkpoint.get("hyper_parameters") or {}):
        raise ValueError(f"pack: {source} is not a checkpoint of gridlm fit (no state_dict or model hyperparameters)")
    kept = {k: checkpoint[k] for k in KEPT_KEYS if k in checkpoint}
    kept["state_dict"] = {k: v.detach().clone().contiguous() for k, v in kept["state_dict"].items()}  # off the mmap
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(kept, tmp)
    tmp.replace(out)
    return kept


def measure(ckpt_path: str, subset: list[str], root: Optional[str] = None) -> dict[str, float]:
    """``gridlm validate --ckpt_path <ckpt_path> <subset>``: the figure's metrics."""
    from gridlm.experiments.cli import cli_main

    with tempfile.TemporaryDirectory() as tmp:
        flags = [
            *subset,
            "--ckpt_path", ckpt_path,
            "--run_name", "pretrained-check",
            "--wandb_mode", "disabled",
            "--trainer.default_root_dir", root or tmp,
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.logger", "false",
        ]  # fmt: skip
        cli = cli_main(["validate", *flags])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    missing = [k for k in FIGURE_METRICS if k not in metrics]
    if missing:
        raise ValueError(f"validation logged no {', '.join(missing)}; does the subset decode (--model.n_generate > 0)?")
    return {k: metrics[k] for k in FIGURE_METRICS}


def compare(card: dict, measured: dict[str, float]) -> list[str]:
    """Differences between a card's figure and a new measurement (empty: reproduced)."""
    figure = card.get("figure") or {}
    out = []
    for k in FIGURE_METRICS:
        want = figure.get(k)
        if want is None:
            out.append(f"{k}: the card has no measured value (run `python -m gridlm.experiments.pretrained pack`)")
        elif k == "val/loss" and not math.isclose(measured[k], want, rel_tol=LOSS_TOLERANCE):
            out.append(f"{k} {measured[k]:.6f} now vs {want:.6f} on the card")
        elif k != "val/loss" and not math.isclose(measured[k], want, abs_tol=1e-6):  # a count of solved examples
            out.append(f"{k} {measured[k]:.4f} now vs {want:.4f} on the card")
    return out


def card_path(name: str, folder: Optional[Path] = None) -> Path:
    return (folder or pretrained_dir()) / f"{name}.json"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gridlm.experiments.pretrained", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="copy a trained checkpoint's weights into the package and measure its figure")
    pk.add_argument("checkpoint", help="a checkpoint of gridlm fit (e.g. runs/quickstart/version_0/checkpoints/last.ckpt)")
    pk.add_argument("--name", default="quickstart", help="pretrained:<name>")
    pk.add_argument("--out_dir", default=None, help="default: the package's configs/pretrained folder")
    ms = sub.add_parser("measure", help="measure shipped weights on their card's subset and compare")
    ms.add_argument("name", help="e.g. quickstart")
    args = p.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.command == "pack":
        folder = Path(args.out_dir) if args.out_dir else pretrained_dir()
        card_file = card_path(args.name, folder)
        card = json.loads(card_file.read_text()) if card_file.is_file() else {"name": args.name, "subset": DEFAULT_SUBSET}
        out = folder / f"{args.name}.ckpt"
        kept = pack(args.checkpoint, out)
        figure = measure(str(out), card["subset"])
        card.update(
            figure=figure,
            n_examples=_n_examples(card["subset"]),
            weights=out.name,
            weights_bytes=out.stat().st_size,
            trained_steps=kept.get("global_step"),
            packed_from=str(args.checkpoint),
            torch=torch.__version__,
        )
        card.pop("todo", None)
        card_file.write_text(json.dumps(card, indent=1) + "\n")
        print(f"pack: {out} ({out.stat().st_size / 1e6:.1f} MB, step {kept.get('global_step')}); {card_file}: {figure}")
        return 0
    path = resolve_checkpoint(PRETRAINED_PREFIX + args.name, "measure")
    card = json.loads(card_path(args.name).read_text())
    measured = measure(path, card["subset"])
    diffs = compare(card, measured)
    print(f"measure {args.name}: {measured}" + ("; reproduces the card" if not diffs else "; DIFFERS: " + "; ".join(diffs)))
    return 1 if diffs else 0


def _n_examples(subset: list[str]) -> Optional[int]:
    """The number of validation examples the subset fixes (``--data.max_val_examples``)."""
    for flag, value in zip(subset, subset[1:]):
        if flag == "--data.max_val_examples" and value.isdigit():
            return int(value)
    return None


if __name__ == "__main__":
    sys.exit(main())
