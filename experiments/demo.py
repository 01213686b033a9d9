"""``make demo``: train the quickstart model on ARC-AGI-1, then validate its checkpoint.

Runs exactly what a user would type::

    gridlm fit --config configs/quickstart.yaml
    gridlm validate --config configs/quickstart.yaml --ckpt_path <the run's last.ckpt>
    gridlm predict --config configs/quickstart.yaml --ckpt_path <ckpt> --data.max_tasks 4 --out <run>/demo_submission.json

prints the validation metrics and where everything was written, and renders one predicted task
(demonstrations, test input, target, attempt) into ``<run>/demo_task.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gridlm.experiments.cli import cli_main
from gridlm.experiments.show import render_task

CONFIG = "quickstart"  # the packaged configs/quickstart.yaml
METRICS = ("val/loss", "val/cell_acc", "val/exact_match")
COUNTS = ("val/n_exact", "val/n_decoded")  # the counts behind val/exact_match (every held-out pair)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("extra", nargs="*", help="extra LightningCLI flags, e.g. --trainer.max_steps=50")
    args = ap.parse_args(argv)
    # the config validates once, at the end of training; the demo then validates the saved
    # checkpoint instead (the same figures, from the file a user would reload), so fit skips it
    fit = cli_main(["fit", "--config", args.config, "--trainer.limit_val_batches", "0", *args.extra])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    val = cli_main(["validate", "--config", args.config, "--ckpt_path", ckpt, *args.extra])
    got = {k: float(v) for k, v in val.trainer.callback_metrics.items() if k in METRICS + COUNTS}
    picture = render_prediction(args.config, ckpt, Path(fit.trainer.log_dir), args.extra)
    print("\n=== gridlm demo: ARC-AGI-1, every held-out test pair of the training tasks ===")
    for k in METRICS:
        v = got.get(k)
        line = f"{k:18s} {v if v is None else f'{v:.4f}'}"
        if k == "val/exact_match" and all(c in got for c in COUNTS):
            line += f"   ({int(got['val/n_exact'])}/{int(got['val/n_decoded'])} pairs solved)"
        print(line)
    print(f"checkpoint: {ckpt}")
    print(f"picture:    {picture}")
    print(f"logs:       {fit.trainer.log_dir}  (metrics.csv, config.yaml; wandb offline run in wandb/)")
    print(f"reproduce:  gridlm validate --config {args.config} --ckpt_path {ckpt}")
    return 0


def render_prediction(config: str, ckpt: str, run_dir: Path, extra: list[str], n_tasks: int = 4) -> Path:
    """Predict the test inputs of the first ``n_tasks`` prediction tasks and draw the first one."""
    sub_path = run_dir / "demo_submission.json"
    pred = cli_main(["predict", "--config", config, "--ckpt_path", ckpt, "--data.max_tasks", str(n_tasks), "--submission.out", str(sub_path), *extra])
    tasks = {t.task_id: t for t in pred.datamodule.datasets["predict"].tasks}
    sub = json.loads(sub_path.read_text())
    task_id = next(iter(sub))
    entry = sub[task_id][0]
    attempts = [entry["attempt_1"]] + ([entry["attempt_2"]] if entry["attempt_2"] != entry["attempt_1"] else [])
    out = run_dir / "demo_task.png"
    render_task(tasks[task_id], test_index=0, attempts=attempts, out=out)
    return out


if __name__ == "__main__":
    sys.exit(main())
