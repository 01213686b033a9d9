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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("extra", nargs="*", help="extra LightningCLI flags, e.g. --trainer.max_steps=50")
    args = ap.parse_args(argv)
    fit = cli_main(["fit", "--config", args.config, *args.extra])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    fit_metrics = {k: float(v) for k, v in fit.trainer.callback_metrics.items() if k in METRICS}
    val = cli_main(["validate", "--config", args.config, "--ckpt_path", ckpt, *args.extra])
    val_metrics = {k: float(v) for k, v in val.trainer.callback_metrics.items() if k in METRICS}
    picture = render_prediction(args.config, ckpt, Path(fit.trainer.log_dir), args.extra)
    print("\n=== gridlm demo: ARC-AGI-1 (training tasks' held-out test pairs) ===")
    for k in METRICS:
        a, b = fit_metrics.get(k), val_metrics.get(k)
        print(f"{k:18s} end of fit: {a if a is None else f'{a:.4f}'}   validate from checkpoint: {b if b is None else f'{b:.4f}'}")
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
