"""``make learn``: does a recipe learn? Train it for a fixed wall-clock budget, then count solved tasks.

One command, like ``make bench``: trains a config (default: the packaged ``quickstart``) for
``--minutes`` of *training* time (evaluation excluded, ``callbacks/learning_curve.py``), with a
fixed list of synthetic families held out of training, then decodes greedily (constrained to the
grid grammar) and reports full-set exact match, with counts, on

(a) fresh tasks of the training families (the stream's validation seed space: never trained on),
(b) fresh tasks of the held-out families (rules the model never saw),
(c) ARC-AGI-1 training tasks' held-out test pairs (every pair that fits ``max_seq_len``),
(d) ARC-AGI-1 evaluation tasks' test pairs (tasks never trained on),

plus the learning curve (exact match and loss against tokens seen, on a small fixed set of (a))
as a PNG. It prints and records the machine, the budget and the load average, and writes
``learning.json`` and the results block of ``docs/learning.md`` (between the ``learn:begin`` /
``learn:end`` markers; the ablations around it are kept). ``--quick`` trains a tiny model for
under a minute on small sets: it checks the pipeline, not the figures.

    python -m gridlm.experiments.learn [--config quickstart] [--minutes 30] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

from gridlm.callbacks.learning_curve import CURVE_FILE, evaluate, summarize
from gridlm.configs import resolve_config
from gridlm.experiments.cli import cli_main

# one or two families per group, each with a trained sibling (flip_h, colour_map, crop_largest, ...)
HELD_OUT = ("flip_v", "colour_swap", "crop_smallest", "halo", "connect_points", "logic_or")
MARK_BEGIN, MARK_END = "<!-- learn:begin -->", "<!-- learn:end -->"
QUICK_FLAGS = [
    "--model.d_model", "32", "--model.n_layers", "1", "--model.n_heads", "2",
    "--data.batch_size", "4", "--data.max_seq_len", "512", "--data.synthetic_max_side", "5",
]  # fmt: skip


def training_source(source, held_out: Sequence[str]):
    """The config's training source with ``held_out`` families removed from its synthetic stream:
    ``synthetic`` -> ``synthetic:-a,-b``; a list of sources has its synthetic entry rewritten.
    A synthetic source that names families (``synthetic:flip_h``) is left alone, since it
    already decides which families train; a source without a synthetic stream is an error."""
    if isinstance(source, (list, tuple)):
        rewritten = [training_source(s, held_out) if str(s).startswith("synthetic") else s for s in source]
        if not any(str(s).startswith("synthetic") for s in source):
            raise ValueError(f"make learn: data.source {list(source)} has no synthetic stream to hold families out of")
        return rewritten
    source = str(source)
    if source == "synthetic":
        return "synthetic:" + ",".join(f"-{f}" for f in held_out)
    if source.startswith("synthetic:-"):
        mine = source.split(":", 1)[1].split(",")
        return "synthetic:" + ",".join(dict.fromkeys(mine + [f"-{f}" for f in held_out]))
    if source.startswith("synthetic"):
        return source
    raise ValueError(f"make learn: data.source {source!r} has no synthetic stream to hold families out of; use 'synthetic' or a list with it")


def _flags(d: dict) -> list[str]:
    return [x for k, v in d.items() for x in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]


def run(config: str, minutes: float, seed: int, quick: bool, out_dir: Path, root: Path, extra: Sequence[str] = (),
        held_out: Sequence[str] = HELD_OUT, n_fresh: int = 400, every_s: Optional[float] = None,
        only: Optional[Sequence[str]] = None) -> dict:  # fmt: skip
    """Train, evaluate the four sets, return the results (also written by :func:`write_outputs`)."""
    cfg_path = resolve_config(config)
    cfg = yaml.safe_load(Path(cfg_path).read_text()) or {}
    extra = list(extra)
    source = (cfg.get("data") or {}).get("source", "arc1")
    for i, flag in enumerate(extra):  # a --data.source among the extra flags replaces the config's
        if flag == "--data.source" and i + 1 < len(extra):
            source = yaml.safe_load(extra[i + 1])
            del extra[i : i + 2]
            break
        if flag.startswith("--data.source="):
            source = yaml.safe_load(flag.split("=", 1)[1])
            del extra[i]
            break
    source = training_source(source, held_out)
    train_fams = "synthetic:" + ",".join(f"-{f}" for f in held_out)
    n_fresh = 24 if quick else n_fresh
    budget_s = minutes * 60
    every_s = every_s or max(10.0, budget_s / 12)
    name = f"learn/{Path(cfg_path).stem}-s{seed}"
    load_start = os.getloadavg()
    fit_flags = {
        "run_name": name, "seed_everything": seed, "data.seed": seed, "data.source": source, "wandb_mode": "disabled",
        "trainer.default_root_dir": str(root), "trainer.max_steps": -1, "trainer.max_time": None, "trainer.limit_val_batches": 0,
        "trainer.num_sanity_val_steps": 0, "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False,
    }  # fmt: skip
    curve = [
        "--trainer.callbacks+=gridlm.callbacks.learning_curve.LearningCurve",
        "--trainer.callbacks.every_s", str(every_s), "--trainer.callbacks.budget_s", str(budget_s),
        "--trainer.callbacks.n_examples", "16" if quick else "64", "--trainer.callbacks.source", train_fams,
    ]  # fmt: skip
    argv = ["fit", "--config", cfg_path, *_flags(fit_flags), *curve, *(QUICK_FLAGS if quick else []), *extra]
    t0 = time.perf_counter()
    fit = cli_main(argv)
    wall_fit = time.perf_counter() - t0
    module, dm = fit.model, fit.datamodule
    log_dir = Path(fit.trainer.log_dir)
    curve_rows = list(csv.DictReader(open(log_dir / CURVE_FILE))) if (log_dir / CURVE_FILE).is_file() else []
    sets = {
        "train_families": (train_fams, f"fresh tasks of the {len(_families(train_fams, dm))} training families"),
        "held_out_families": ("synthetic:" + ",".join(held_out), f"fresh tasks of the held-out families ({', '.join(held_out)})"),
        "arc1_train_test_pairs": ("arc1", "ARC-AGI-1 training tasks' held-out test pairs"),
        "arc1_eval": ("arc1:eval", "ARC-AGI-1 evaluation tasks' test pairs"),
    }
    results: dict = {"sets": {}}
    for key, (src, what) in sets.items():
        if only and key not in only:
            continue
        t = time.perf_counter()
        rows = evaluate(module, _eval_loader(dm, src, n_fresh, quick))
        s = summarize(rows)
        fams: dict[str, list[int]] = {}
        for r in rows:
            fams.setdefault(r["family"], []).append(r["exact"])
        results["sets"][key] = {
            "what": what, "source": src, **s, "seconds": round(time.perf_counter() - t, 1),
            "per_family": {f: [sum(v), len(v)] for f, v in sorted(fams.items())} if src.startswith("synthetic") else None,
        }  # fmt: skip
        print(f"gridlm learn: {key:24s} exact {s['n_exact']}/{s['n']} ({100 * s['exact_match']:.1f}%), loss {s['loss']:.3f}")
    last = curve_rows[-1] if curve_rows else {}
    results.update(
        config=str(config), seed=seed, quick=quick, budget_minutes=minutes, held_out=list(held_out), training_source=source,
        steps=int(fit.trainer.global_step), tokens_seen=int(float(last.get("tokens_seen", 0))), train_seconds=float(last.get("train_s", 0)),
        fit_wall_seconds=round(wall_fit, 1), log_dir=str(log_dir), curve=curve_rows,
        model={k: module.hparams.get(k) for k in ("d_model", "n_layers", "n_heads", "encoding", "norm", "mlp", "qk_norm")},
        params=sum(p.numel() for p in module.parameters()),
        machine={"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                 "torch": torch.__version__, "python": platform.python_version(), "load_average_start": load_start,
                 "load_average_end": os.getloadavg()},
    )  # fmt: skip
    return results


def _families(spec: str, dm) -> list[str]:
    from gridlm.datamodules import synthetic

    return synthetic.select(synthetic.parse_spec(spec), dm.difficulty.max_side)


def _eval_loader(dm, source: str, n_fresh: int, quick: bool):
    """Every test pair of ``source`` serialized as the training data was (a synthetic source:
    ``n_fresh`` fresh tasks from the validation seed space)."""
    from gridlm.datamodules.datamodule import GridDataModule

    # the synthetic knobs (grid sizes, objects, demonstrations) are the DataModule's defaults, not
    # the recipe's: a recipe that trains on small grids is still measured on the benchmark's tasks
    knobs = {"synthetic_max_side": 5} if quick else {}
    ev = GridDataModule(
        source=source, val_source=source, order=dm.order, max_seq_len=dm.max_seq_len, batch_size=max(dm.batch_size, 8),
        seed=dm.seed, row_end=dm.row_end, target_policy=dm.target_policy, n_synthetic=n_fresh,
        max_tasks=8 if quick and not source.startswith("synthetic") else None, **knobs,
    )  # fmt: skip
    ev.setup("validate")
    return ev.val_dataloader()


# ---------------------------------------------------------------------------------- outputs
def plot_curve(curve: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [float(p["tokens_seen"]) / 1e6 for p in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(tokens, [100 * float(p["exact_match"]) for p in curve], marker="o")
    a.set(xlabel="tokens seen (millions)", ylabel="exact match (%)", title="exact match, curve set")
    b.plot(tokens, [float(p["loss"]) for p in curve], marker="o", color="tab:orange")
    b.set(xlabel="tokens seen (millions)", ylabel="nats / query-output token", title="loss, curve set")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results_markdown(r: dict, command: str, png: Optional[str]) -> str:
    m = r["machine"]
    lines = [
        MARK_BEGIN,
        f"Measured by `{command}`: config `{r['config']}`, seed {r['seed']}, {r['budget_minutes']} minutes of training "
        f"({r['steps']} steps, {r['tokens_seen'] / 1e6:.1f}M tokens, {r['params'] / 1e6:.2f}M parameters), "
        f"{m['cores']} cores ({m['cpu']}), torch {m['torch']}, load average {tuple(round(x, 2) for x in m['load_average_start'])} "
        f"at start, {tuple(round(x, 2) for x in m['load_average_end'])} at end. Greedy decoding, every example of each set."
        + (" **Quick mode: a tiny model on small sets; not a result.**" if r["quick"] else ""),
        "",
        "| set | exact match | solved / total | loss (nats/token) |",
        "|---|---|---|---|",
    ]
    for s in r["sets"].values():
        lines.append(f"| {s['what']} | {100 * s['exact_match']:.1f}% | {s['n_exact']} / {s['n']} | {s['loss']:.3f} |")
    held = r["sets"].get("held_out_families", {}).get("per_family") or {}
    if held:
        lines += ["", "Held-out families: " + ", ".join(f"{f} {a}/{b}" for f, (a, b) in held.items()) + "."]
    if png:
        lines += ["", f"![learning curve]({png})"]
    lines.append(MARK_END)
    return "\n".join(lines)


def write_outputs(r: dict, out_dir: Path, command: str) -> tuple[Path, Path]:
    docs = out_dir / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    png = docs / "learning_curve.png"
    if r["curve"]:
        plot_curve(r["curve"], png, f"{r['config']} seed {r['seed']}, {r['budget_minutes']} min")
    json_path = out_dir / "learning.json"
    json_path.write_text(json.dumps(r, indent=1, default=str))
    md = docs / "learning.md"
    block = results_markdown(r, command, png.name if r["curve"] else None)
    text = md.read_text() if md.is_file() else "# Learning\n\n" + MARK_BEGIN + "\n" + MARK_END + "\n"
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    md.write_text(text)
    return json_path, md


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gridlm.experiments.learn", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="quickstart", help="the recipe (a packaged config name or a YAML path)")
    p.add_argument("--minutes", type=float, default=None, help="training wall-clock budget (default 30; --quick: 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny model for under a minute on small sets (checks the pipeline)")
    p.add_argument("--out_dir", default=".", help="where learning.json and docs/learning.md go")
    p.add_argument("--root", default="runs", help="the runs folder")
    p.add_argument("--n_fresh", type=int, default=400, help="fresh synthetic tasks per synthetic evaluation set")
    p.add_argument("--sets", default=None, help="evaluate only these sets (comma-separated keys; default: all four)")
    args, extra = p.parse_known_args(argv)  # the rest are gridlm fit flags, e.g. --model.d_model=192
    minutes = args.minutes if args.minutes is not None else (0.5 if args.quick else 30.0)
    if minutes <= 0:
        p.error(f"--minutes must be > 0, got {minutes}")
    command = "python -m gridlm.experiments.learn " + " ".join(sys.argv[1:] if argv is None else argv)
    r = run(args.config, minutes, args.seed, args.quick, Path(args.out_dir), Path(args.root), extra, n_fresh=args.n_fresh,
            only=args.sets.split(",") if args.sets else None)
    json_path, md = write_outputs(r, Path(args.out_dir), command)
    print(f"gridlm learn: wrote {json_path} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
