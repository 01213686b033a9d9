"""``make demo``: train the quickstart model on ARC-AGI-1, then validate its checkpoint.

Runs exactly what a user would type::

    gridlm fit --config quickstart --trainer.limit_val_batches 0
    gridlm validate --config quickstart --ckpt_path <the run's last.ckpt>
    gridlm predict --config quickstart --ckpt_path <ckpt> --data.max_tasks 4 --out <run>/demo_submission.json

each with ``--trainer.callbacks+=gridlm.callbacks.progress.ProgressLines``: one line when a stage
starts, a progress line at least every ``--progress_every`` seconds (step, loss, tokens/s, time
left) whether or not stdout is a terminal, then the validation metrics and where everything was
written. One predicted task is drawn into ``<run>/demo_task.png``. Validation and prediction of
the run's checkpoint write into the run's own folder (``<run>/validate/``, ``<run>/predict/``).

Third-party chatter is off (wandb silent, Lightning's info lines, model summary and results
table); ``--verbose`` brings it back. Extra flags go to every stage, e.g.
``python -m gridlm.experiments.demo --trainer.max_steps 50``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

from gridlm.experiments.quiet import quiet_third_party

CONFIG = "quickstart"  # the packaged configs/quickstart.yaml
METRICS = ("val/loss", "val/cell_acc", "val/exact_match")
COUNTS = ("val/n_exact", "val/n_decoded")  # the counts behind val/exact_match
STAGES = ("fit", "validate", "predict")
N_PREDICT_TASKS = 4


def stage(name: str, text: str) -> None:
    """The one line that opens a stage: ``gridlm demo [2/3] validate: ...``."""
    print(f"gridlm demo [{STAGES.index(name) + 1}/{len(STAGES)}] {name}: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Other flags go to every gridlm stage, e.g. --trainer.max_steps 50.")
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--verbose", action="store_true", help="keep wandb's and Lightning's own output")
    ap.add_argument("--progress_every", type=float, default=30.0, help="seconds between progress lines (default 30)")
    args, extra = ap.parse_known_args(argv)
    extra = extra[1:] if extra[:1] == ["--"] else extra
    if args.progress_every < 0:
        ap.error(f"--progress_every must be >= 0 seconds, got {args.progress_every}")
    quiet_third_party(args.verbose)
    from gridlm.experiments.cli_errors import user_error

    try:
        return run(args.config, extra, args.verbose, args.progress_every)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("GRIDLM_DEBUG"):
            raise
        print(f"gridlm demo: error: {user_error(err)}", file=sys.stderr)
        return 2


def run(config: str, extra: list[str], verbose: bool, progress_every: float) -> int:
    from gridlm.experiments.cli import cli_main

    common = ["--config", config, "--trainer.callbacks+=gridlm.callbacks.progress.ProgressLines", f"--trainer.callbacks.every_s={progress_every}"]
    if not verbose:
        common += ["--trainer.enable_model_summary=false"]
    stage("fit", f"training the {config} model (progress every {progress_every:g} s)")
    # the config validates once, at the end of training; the demo then validates the saved
    # checkpoint instead (the same figures, from the file a user would reload), so fit skips it
    fit = cli_main(["fit", *common, "--trainer.limit_val_batches", "0", *extra])
    run_dir = Path(fit.trainer.log_dir)
    ckpt = fit.trainer.checkpoint_callback.last_model_path

    stage("validate", f"the checkpoint {ckpt}")
    val = cli_main(["validate", *common, "--ckpt_path", ckpt, *([] if verbose else ["--verbose=false"]), *extra])
    got = {k: float(v) for k, v in val.trainer.callback_metrics.items() if k in METRICS + COUNTS}

    stage("predict", f"the test inputs of {N_PREDICT_TASKS} tasks, drawing the first")
    picture, pred_dir = render_prediction(common, ckpt, run_dir, extra)

    n_val, dm = validated_examples(val), val.datamodule
    limited = dm.hparams.max_val_examples is not None or n_val < len(dm.datasets["val"])
    which = f"the first {n_val} held-out test pairs" if limited else "every held-out test pair"
    print(f"\n=== gridlm demo: ARC-AGI-1, {which} of the training tasks ===")
    for k in METRICS:
        v = got.get(k)
        line = f"{k:18s} {v if v is None else f'{v:.4f}'}"
        if k == "val/exact_match" and all(c in got for c in COUNTS):
            line += f"   ({int(got['val/n_exact'])}/{int(got['val/n_decoded'])} pairs solved)"
        print(line)
    print(over(n_val, limited, dm.stats.get("val", {}).get("dropped", 0), dm.max_seq_len, got.get("val/n_decoded")))
    print(f"checkpoint: {ckpt}")
    print(f"validation: {val.trainer.log_dir}  (metrics.csv)")
    print(f"prediction: {run_dir / 'demo_submission.json'}  (config in {pred_dir})")
    print(f"picture:    {picture}")
    print(f"logs:       {run_dir}  (metrics.csv, config.yaml; wandb offline run in wandb/)")
    print(f"reproduce:  gridlm validate --config {config} --ckpt_path {ckpt}")
    return 0


def over(n_val: int, limited: bool, dropped: int, max_seq_len: int, n_decoded: float | None) -> str:
    """The caption saying what the figures are over (not a share of ARC pairs solved): ``n_val``
    pairs validated, the first ones only when ``limited``, ``dropped`` left out as too long."""
    which = " (the first ones: data.max_val_examples, trainer.limit_val_batches)" if limited else ""
    left_out = f", {dropped} longer than max_seq_len={max_seq_len} left out" if dropped else ""
    if n_decoded is None:
        decoded = "val/exact_match: none decoded (model.n_generate 0)"
    elif int(n_decoded) >= n_val:
        decoded = "val/exact_match: greedy decoding of every one of them"
    else:
        decoded = f"val/exact_match: greedy decoding of the {int(n_decoded)} shortest of them (model.n_generate)"
    return f"(over {n_val} validation pairs{which}{left_out}; {decoded}. Not an ARC-AGI score.)"


def validated_examples(val) -> int:
    """Examples a validation saw: the validation set, or the first ``trainer.limit_val_batches``
    batches of its loader (the batch sampler's index lists, no data is loaded)."""
    dataset = val.datamodule.datasets["val"]
    sampler = val.datamodule.val_dataloader().batch_sampler
    n_batches = sum(val.trainer.num_val_batches) if isinstance(val.trainer.num_val_batches, list) else val.trainer.num_val_batches
    if sampler is None or not n_batches or n_batches == float("inf"):
        return len(dataset)
    return sum(len(b) for b in itertools.islice(iter(sampler), int(n_batches)))


def render_prediction(common: list[str], ckpt: str, run_dir: Path, extra: list[str], n_tasks: int = N_PREDICT_TASKS) -> tuple[Path, str]:
    """Predict the test inputs of the first ``n_tasks`` prediction tasks and draw the first one."""
    from gridlm.experiments.cli import cli_main
    from gridlm.datamodules.pictures import render_task

    sub_path = run_dir / "demo_submission.json"
    pred = cli_main(["predict", *common, "--ckpt_path", ckpt, "--data.max_tasks", str(n_tasks), "--submission.out", str(sub_path), *extra])
    tasks = {t.task_id: t for t in pred.datamodule.datasets["predict"].tasks}
    sub = json.loads(sub_path.read_text())
    task_id = next(iter(sub))
    entry = sub[task_id][0]
    attempts = [entry["attempt_1"]] + ([entry["attempt_2"]] if entry["attempt_2"] != entry["attempt_1"] else [])
    out = run_dir / "demo_task.png"
    render_task(tasks[task_id], test_index=0, attempts=attempts, out=out)
    return out, pred.trainer.log_dir


if __name__ == "__main__":
    sys.exit(main())
