"""Measure the refiner's gain: refined against draft on the same pairs, and the refiner alone
against the base model alone at equal training time (docs/refiner.md, issue 15).

Two studies, each over seeds, every figure a count beside its fraction:

- ``gain``: a ``RefinementNetwork`` trained for ``--minutes`` of training time on the base model's
  drafts (plus corrupted targets and empty canvases, the configured mix) over the training families
  of the learning benchmark (``experiments/learn.py``: its held-out families stay out) and ARC-AGI-1;
  then, on fresh tasks of the training families and on ARC-AGI-1 training tasks' held-out test
  pairs: draft and refined exact match, wrong-shape drafts corrected, cells fixed / broken, and
  refined minus draft with the studies' paired 95% interval (``experiments/stats.py``: paired
  bootstrap over tasks, pooled over seeds).
- ``alone``: a base model (``AutoregressiveGridModel``, greedy constrained decoding) and the
  refiner from an empty canvas (non-autoregressive), the same width and depth, each trained for
  ``--minutes`` on the same data; exact match on the same fresh tasks, refiner minus base paired.

    python -m gridlm.experiments.refiner_gain gain --base pretrained:quickstart --minutes 8 --seeds 0 1
    python -m gridlm.experiments.refiner_gain alone --minutes 5 --seeds 0 1

Training uses one thread (``torch.set_num_threads(1)``) and records the load average, since the
machine is shared; ``--quick`` checks the pipeline on tiny sets (not the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device

from gridlm.callbacks.learning_curve import family_of
from gridlm.callbacks.schedule_free import ScheduleFreeMode
from gridlm.datamodules.datamodule import GridDataModule
from gridlm.experiments.learn import HELD_OUT
from gridlm.experiments.stats import paired_bootstrap
from gridlm.modules.base_model import AutoregressiveGridModel
from gridlm.modules.refiner import RefinementNetwork, same_grid

TRAIN_FAMILIES = "synthetic:" + ",".join(f"-{f}" for f in HELD_OUT)  # the learning benchmark's training families


def _batches(loader, device):
    for batch in loader:
        yield move_data_to_device(batch, device)


@contextmanager
def _evaluating(module: torch.nn.Module):
    """``module`` in eval mode inside the block, its training mode restored after (even on error)."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


@torch.no_grad()
def refiner_rows(refiner: RefinementNetwork, loader, seed: int) -> list[dict]:
    """One row per example: ``draft``, ``pass_k`` and ``refined`` exact (0/1), shapes, cells."""
    rows = []
    with _evaluating(refiner):
        for batch in _batches(loader, refiner.device):
            drafts = refiner.eval_drafts(batch, "test")
            per_pass, _, used = refiner.refine_passes(batch, drafts)
            refined = per_pass[-1] if per_pass else drafts
            for i, meta in enumerate(batch["meta"]):
                t, d, r = np.asarray(meta["target"]), drafts[i], refined[i]
                row = {"seed": seed, "task_id": meta["task_id"], "test_index": meta["query"], "family": family_of(meta["task_id"]),
                       "draft": int(same_grid(d, t)), "refined": int(same_grid(r, t)), "passes": used[i],
                       "draft_shape_ok": int(d is not None and d.shape == t.shape), "refined_shape_ok": int(r is not None and r.shape == t.shape),
                       "fixed": 0, "broken": 0}  # fmt: skip
                for k, grids in enumerate(per_pass, start=1):
                    row[f"pass_{k}"] = int(same_grid(grids[i], t))
                if d is not None and r is not None and d.shape == r.shape == t.shape:
                    row["fixed"], row["broken"] = int(((d != t) & (r == t)).sum()), int(((d == t) & (r != t)).sum())
                rows.append(row)
    return rows


@torch.no_grad()
def base_rows(base: AutoregressiveGridModel, loader, seed: int) -> list[dict]:
    """One row per example: the base model's greedy constrained decoding, ``exact`` (0/1)."""
    rows = []
    with _evaluating(base):
        for batch in _batches(loader, base.device):
            for meta, d in zip(batch["meta"], base.decode_batch(batch)):
                rows.append({"seed": seed, "task_id": meta["task_id"], "test_index": meta["query"], "family": family_of(meta["task_id"]),
                             "exact": int(same_grid(d.grid, np.asarray(meta["target"])))})  # fmt: skip
    return rows


def _paired(baseline: list[dict], variant: list[dict], b: str, v: str) -> dict:
    p = paired_bootstrap([{**r, "x": r[b]} for r in baseline], [{**r, "x": r[v]} for r in variant], "x", higher_is_better=True)
    return {"estimate": p.estimate, "lo": p.lo, "hi": p.hi, "method": p.method, "n_examples": p.n_examples, "n_tasks": p.n_tasks,
            "n_seeds": p.n_seeds, "verdict": p.verdict, "tasks_needed": p.tasks_needed}  # fmt: skip


def gain_summary(rows: list[dict]) -> dict:
    """Counts of a ``refiner_rows`` list (all seeds) and refined minus draft, paired."""
    n = len(rows)
    wrong = [r for r in rows if not r["draft_shape_ok"]]
    out = {
        "n": n, "draft": sum(r["draft"] for r in rows), "refined": sum(r["refined"] for r in rows),
        "wrong_shape_drafts": len(wrong), "wrong_shapes_corrected": sum(r["refined_shape_ok"] for r in wrong),
        "wrong_shape_drafts_made_exact": sum(r["refined"] for r in wrong),
        "cells_fixed": sum(r["fixed"] for r in rows), "cells_broken": sum(r["broken"] for r in rows),
        "drafts_broken": sum(r["draft"] and not r["refined"] for r in rows), "drafts_fixed": sum(r["refined"] and not r["draft"] for r in rows),
        "mean_passes": float(np.mean([r["passes"] for r in rows])) if rows else float("nan"),
    }  # fmt: skip
    for k in range(1, 10):
        if rows and f"pass_{k}" in rows[0]:
            out[f"pass_{k}"] = sum(r[f"pass_{k}"] for r in rows)
    out["refined_minus_draft"] = _paired(rows, rows, "draft", "refined")
    return out


def _trainer(root: Path, minutes: float, max_steps: int) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, max_steps=max_steps,
                     max_time={"seconds": minutes * 60}, callbacks=[ScheduleFreeMode()], default_root_dir=str(root))  # fmt: skip


def _fit(model: L.LightningModule, dm: GridDataModule, root: Path, minutes: float, max_steps: int) -> dict:
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = _trainer(root, minutes, max_steps)
    trainer.fit(model, dm)
    return {"steps": int(trainer.global_step), "train_wall_s": round(time.perf_counter() - t0, 1),
            "train_cpu_s": round(time.process_time() - c0, 1), "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2)}  # fmt: skip


def _eval_loader(source: str, n_fresh: int, seq: int, max_side: Optional[int], max_tasks: Optional[int]):
    knobs = {} if max_side is None else {"synthetic_max_side": max_side}
    ev = GridDataModule(source=source, val_source=source, max_seq_len=seq, batch_size=8, n_synthetic=n_fresh, max_tasks=max_tasks,
                        augment=False, **knobs)  # fmt: skip
    ev.setup("validate")
    return ev.val_dataloader()


def _sets(args) -> dict[str, tuple[str, int]]:
    sets = {"train_families": TRAIN_FAMILIES}
    if args.study == "gain" and not args.no_arc:
        sets["arc1_train_test_pairs"] = "arc1"
    return sets


def run(args) -> dict:
    torch.set_num_threads(1)
    root = Path(args.out).parent / "refiner_gain_runs"
    q = args.quick
    side = 5 if q else None
    data = dict(source=[TRAIN_FAMILIES] if args.no_arc or q else [TRAIN_FAMILIES, "arc1"], val_source=TRAIN_FAMILIES,
                max_seq_len=args.max_seq_len, batch_size=args.batch_size, augment=not q, **({"synthetic_max_side": side} if q else {}))  # fmt: skip
    size = dict(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads)
    results: dict = {"study": args.study, "args": vars(args), "runs": [], "sets": {}}
    rows: dict[str, dict[str, list[dict]]] = {name: {} for name in _sets(args)}
    for seed in args.seeds:
        L.seed_everything(seed)
        dm = GridDataModule(**data, seed=seed)
        kinds = ["refiner"] if args.study == "gain" else ["base", "refiner"]
        for kind in kinds:
            L.seed_everything(seed)
            if kind == "base":
                model = AutoregressiveGridModel(**size, max_seq_len=args.max_seq_len, encoding=["rope_1d", "onehot_2d"])
            elif args.study == "gain":
                model = RefinementNetwork(**size, max_seq_len=args.max_seq_len, encoding=["rope_1d", "onehot_2d"], base_checkpoint=args.base,
                                          draft_ratio=args.draft_ratio, empty_ratio=args.empty_ratio, eval_draft="base", seed=seed,
                                          train_passes=args.passes, n_passes=args.passes)  # fmt: skip
            else:
                model = RefinementNetwork(**size, max_seq_len=args.max_seq_len, encoding=["rope_1d", "onehot_2d"], draft_ratio=0.0,
                                          empty_ratio=1.0, eval_draft="empty", seed=seed, train_passes=args.passes, n_passes=args.passes)  # fmt: skip
            fit = _fit(model, dm, root, args.minutes, args.max_steps)
            results["runs"].append({"seed": seed, "model": kind, **fit})
            print(f"refiner_gain: seed {seed} {kind}: {fit}", flush=True)
            for name, source in _sets(args).items():
                t = time.perf_counter()
                loader = _eval_loader(source, args.n_fresh, args.max_seq_len, side, 8 if q and source == "arc1" else None)
                got = base_rows(model, loader, seed) if kind == "base" else refiner_rows(model, loader, seed)
                rows[name].setdefault(kind, []).extend(got)
                print(f"refiner_gain: seed {seed} {kind} {name}: {len(got)} pairs in {time.perf_counter() - t:.0f} s", flush=True)
    for name, by_kind in rows.items():
        if args.study == "gain":
            results["sets"][name] = gain_summary(by_kind["refiner"])
        else:
            base, ref = by_kind["base"], by_kind["refiner"]
            results["sets"][name] = {"n": len(base), "base": sum(r["exact"] for r in base), "refiner_alone": sum(r["refined"] for r in ref),
                                     "refiner_alone_pass_1": sum(r.get("pass_1", 0) for r in ref),
                                     "refiner_minus_base": _paired([{**r, "refined": r["exact"]} for r in base], ref, "refined", "refined")}  # fmt: skip
    results["rows"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    return results


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gridlm.experiments.refiner_gain", description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=["gain", "alone"])
    p.add_argument("--base", default="pretrained:quickstart", help="the drafting base model's checkpoint (gain)")
    p.add_argument("--minutes", type=float, default=8.0, help="training wall-clock budget per model (Lightning max_time)")
    p.add_argument("--max_steps", type=int, default=-1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n_fresh", type=int, default=200, help="fresh tasks of the training families evaluated")
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--n_layers", type=int, default=2)
    p.add_argument("--n_heads", type=int, default=4)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--draft_ratio", type=float, default=0.5)
    p.add_argument("--empty_ratio", type=float, default=0.1)
    p.add_argument("--max_seq_len", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--no_arc", action="store_true", help="train and evaluate without ARC-AGI-1")
    p.add_argument("--quick", action="store_true", help="tiny sets and grids: checks the pipeline, not the figures")
    p.add_argument("--out", default="runs/refiner_gain.json")
    args = p.parse_args(argv)
    for name in ("minutes", "n_fresh", "passes"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"refiner_gain: --{name} must be > 0, got {getattr(args, name)}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    r = run(parse(argv))
    for name, s in r["sets"].items():
        print(f"refiner_gain {r['study']} {name}: " + json.dumps(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
