"""How fast the synthetic stream makes tasks: per family and overall, and against a training step.

Generation runs in the training process (``num_workers: 0`` by default), so its cost is a share of
every step. ``family_times`` is the mean CPU time (``time.process_time``: the process's own
time, little moved by other processes on a shared machine) to generate one task of 3-4
demonstrations and 1 test with sides 2..10, per family. ``bench_synthetic`` (a ``make bench``
section) times, interleaved in one run, the DataModule's work for one batch of stream examples
(generate, augment, serialize, collate) and one training step of the quickstart model on that
batch; the figure is their ratio.

    python -m gridlm.experiments.synthetic_speed [--tasks 200]   # prints the per-family table
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gridlm.datamodules.synthetic import FAMILIES, GROUPS, Difficulty, fill_task, plan_task


def family_times(n_tasks: int = 200, d: Difficulty = Difficulty(max_side=10), seed: int = 0) -> dict[str, float]:
    """Mean CPU milliseconds to generate one task (plan + grids + checks), per family."""
    out = {}
    for name, fam in FAMILIES.items():
        start = time.process_time()
        for i in range(n_tasks):
            rng = np.random.default_rng([seed, i])  # as the stream: a generator per task
            n_train = int(rng.integers(d.min_demos, d.max_demos + 1))
            fill_task(plan_task(fam, rng, d, n_train), rng, name)
        out[name] = (time.process_time() - start) / n_tasks * 1e3
    return out


def markdown_table(times: dict[str, float]) -> str:
    lines = ["| group | family | ms per task |", "|---|---|---|"]
    for group, names in GROUPS.items():
        lines += [f"| {group} | `{n}` | {times[n]:.2f} |" for n in names]
    lines.append(f"| all | mean over families | {np.mean(list(times.values())):.2f} |")
    return "\n".join(lines)


def bench_synthetic(cfg) -> dict:
    """``make bench`` section: stream batch preparation time / training step time (interleaved)."""
    import torch

    from gridlm.datamodules.batching import BucketBatchSampler, collate, pad_fraction
    from gridlm.datamodules.datamodule import GridDataModule
    from gridlm.experiments.benchmark import _timed_batch_step, interleaved, median_ratio, model_kwargs, ratio_range
    from gridlm.modules.base_model import AutoregressiveGridModel, positions_of

    epoch_size = 64 * cfg.batch_size  # one mega-batch of the default bucket_factor
    dm = GridDataModule(source="synthetic", max_seq_len=cfg.max_seq_len, batch_size=cfg.batch_size, synthetic_epoch_size=epoch_size)
    dm.setup("fit")
    ds = dm.datasets["train"]
    sampler = BucketBatchSampler(ds.lengths, cfg.batch_size, shuffle=True, seed=0, lengths_for=ds.lengths_for)
    batches = sampler.batches(0)
    pad = float(np.mean([pad_fraction(ds.lengths_for(e), sampler.batches(e)) for e in range(3)]))
    torch.manual_seed(0)
    model = AutoregressiveGridModel(**model_kwargs(cfg)).model
    first = collate([ds[(int(i), 0)] for i in batches[0]])
    train_step = _timed_batch_step(model, first, positions_of(first))
    k = iter(range(1, len(batches)))

    def prepare() -> float:  # a new batch each time: generation is never cached
        t = time.perf_counter()
        collate([ds[(int(i), 0)] for i in batches[next(k)]])
        return time.perf_counter() - t

    runs = interleaved({"prepare": prepare, "step": train_step}, cfg.repeats * 4)
    times = family_times(10 * cfg.repeats * (1 if cfg.quick else 4))  # 200 tasks per family at the default 5 repeats
    return {
        "synthetic_prepare_vs_step": median_ratio(runs["prepare"], runs["step"]),
        "synthetic_prepare_vs_step_range": ratio_range(runs["prepare"], runs["step"]),
        "pad_fraction_synthetic": pad,
        "synthetic_ms_per_task": float(np.mean(list(times.values()))),
        "synthetic_ms_per_task_slowest": max(times.items(), key=lambda kv: kv[1]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gridlm.experiments.synthetic_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks generated per family")
    args = parser.parse_args(argv)
    print(markdown_table(family_times(args.tasks)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
