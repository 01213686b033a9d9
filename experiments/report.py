"""The report of a ``gridlm-compare`` study: tables with intervals and verdicts, banded curves.

Input: the records ``gridlm.experiments.compare.run_study`` returns, one per run (variant, seed):
the final metrics of its ``run_summary.json``, every validation with the tokens seen, and the last
validation's per-example rows (``val_examples.csv``). Output, in the study folder:

- ``results.md``: per variant, mean ± std and the 95% Student-t interval over seeds of the final
  metrics, tokens seen and wall time; per variant, the paired difference against the baseline in
  exact match and loss, its 95% bootstrap interval over tasks, a verdict and the tasks / seeds a
  difference of that size needs for 80% power; a warning when every interval contains 0;
- ``results.csv`` (one row per run) and ``paired.csv`` (one row per variant and metric);
- ``curves.png``: ``val/loss``, ``val/exact_match``, ``val/cell_acc`` against training tokens
  seen, mean over seeds with the 95% Student-t band (each run interpolated onto the tokens at
  which any run of the variant validated), also logged to the study's wandb group.

The statistics are ``gridlm.experiments.stats`` (scipy.stats); ``docs/studies.md`` explains how
to read them.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from gridlm.callbacks.val_examples import EXAMPLES_FILE
from gridlm.experiments import stats
from gridlm.experiments.stats import Paired, SeedStats

if TYPE_CHECKING:
    from gridlm.experiments.compare import Study

RUN_FIELDS = (
    "variant", "seed", "status", "reason", "steps", "tokens_seen", "val_loss", "val_cell_acc",
    "val_exact_match", "best_val_loss", "tokens_per_s", "wall_time_s", "log_dir",
)  # fmt: skip
PAIRED_FIELDS = ("variant", "baseline", "metric", "difference", "lo", "hi", "method", "verdict", "examples", "tasks", "seeds", "tasks_needed", "seeds_needed")
SEED_METRICS = ("val_loss", "val_cell_acc", "val_exact_match", "tokens_seen", "wall_time_s", "tokens_per_s")
PAIRED_METRICS = {"exact_match": ("val_exact_match", True), "loss": ("val_loss", False)}  # per-example column -> (run metric, higher is better)
CURVES = (
    ("val/loss", "val/loss (nats per test-output token)"),
    ("val/exact_match", "val/exact_match (greedy, decoded examples)"),
    ("val/cell_acc", "val/cell_acc (test-output cells)"),
)


# ---------------------------------------------------------------------- numbers
def summarize(study: "Study", records: list[dict]) -> list[dict]:
    """One row per variant (study order): status, seeds, :class:`SeedStats` of every final metric,
    decoded / validation examples of a run, seeds short of a token budget."""
    rows = []
    for variant in study.variants:
        recs = [r for r in records if r["variant"] == variant]
        ok = [r for r in recs if r["status"] == "ok"]
        failed = [r for r in recs if r["status"] != "ok"]
        status = "ok" if not failed else ("failed" if not ok else f"{len(failed)}/{len(recs)} failed")
        row = {"variant": variant, "status": status, "reason": failed[0]["reason"] if failed else "", "seeds": [r["seed"] for r in ok]}
        for key in SEED_METRICS:
            row[key] = stats.over_seeds(r.get(key) for r in ok)
        examples = next((r["examples"] for r in ok if r.get("examples")), [])
        row["decoded"] = (sum(e["exact_match"] is not None for e in examples), len(examples)) if examples else None
        budget = study.max_tokens
        row["short"] = [r["seed"] for r in ok if budget and (r.get("tokens_seen") or 0) < budget]
        rows.append(row)
    return rows


def paired(study: "Study", records: list[dict]) -> list[dict]:
    """Per variant other than the baseline: a :class:`Paired` per metric (``exact_match``,
    ``loss``) over the last validation's examples of every seed, and the seeds a difference of
    the observed size needs (paired t-test on the per-seed final metrics)."""
    ok = [r for r in records if r["status"] == "ok"]
    base = [r for r in ok if r["variant"] == study.baseline]
    base_rows = [e for r in base for e in r.get("examples") or []]
    out = []
    for variant in study.variants:
        if variant == study.baseline:
            continue
        runs = [r for r in ok if r["variant"] == variant]
        entry: dict = {"variant": variant}
        for metric, (run_key, higher) in PAIRED_METRICS.items():
            entry[metric] = stats.paired_bootstrap(base_rows, [e for r in runs for e in r.get("examples") or []], metric, higher)
            b = {r["seed"]: r.get(run_key) for r in base}
            diffs = [r[run_key] - b[r["seed"]] for r in runs if r.get(run_key) is not None and b.get(r["seed"]) is not None]
            entry[f"{metric}_seeds_needed"] = stats.n_for_power(stats.effect_size(diffs))
        out.append(entry)
    return out


def separates_nothing(pairs: list[dict]) -> bool:
    """True when there are paired examples and every comparison's interval contains 0 (or is missing)."""
    results = [e[m] for e in pairs for m in PAIRED_METRICS if e[m].n_examples]
    return bool(results) and all(p.crosses_zero for p in results)


# ---------------------------------------------------------------------- formatting
def _num(x: Optional[float], digits: int = 3, sign: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def fmt_seeds(s: SeedStats, digits: int = 3) -> str:
    """``mean ± std [lo, hi]`` (the interval from 2 seeds on)."""
    if s.mean is None:
        return "—"
    if s.std is None:
        return _num(s.mean, digits)
    return f"{_num(s.mean, digits)} ± {_num(s.std, digits)} [{_num(s.lo, digits)}, {_num(s.hi, digits)}]"


def fmt_diff(p: Paired, digits: int = 3) -> str:
    if p.estimate is None:
        return "— (no paired examples)"
    interval = f" [{_num(p.lo, digits, True)}, {_num(p.hi, digits, True)}]" if p.lo is not None else " (fewer than 2 tasks)"
    return _num(p.estimate, digits, True) + interval


def fmt_verdict(p: Paired) -> str:
    if not p.n_examples:
        return "—"
    return f"**{p.verdict}**" if p.verdict in (stats.BETTER, stats.WORSE) else p.verdict


def fmt_needed(tasks: Optional[int], seeds: Optional[int]) -> str:
    return f"{tasks if tasks is not None else '—'} / {seeds if seeds is not None else '—'}"


def _budget(study: "Study") -> str:
    parts = [f"tokens={study.max_tokens:,}" if study.max_tokens else None, f"max_steps={study.max_steps}" if study.max_steps else None,
             f"max_time={study.max_time}" if study.max_time else None]  # fmt: skip
    return ", ".join(p for p in parts if p) or "the base config's"


def warning_lines(study: "Study", pairs: list[dict]) -> list[str]:
    """The too-small-budget warning, with the easiest observed difference's sample sizes."""
    candidates = [(e[m].tasks_needed, e[m].n_tasks, e["variant"], m, e[m].estimate) for e in pairs for m in PAIRED_METRICS if e[m].tasks_needed]
    seeds = [(e[f"{m}_seeds_needed"], e["variant"], m) for e in pairs for m in PAIRED_METRICS if e[f"{m}_seeds_needed"]]
    lines = [
        f"> **Warning: this budget separates nothing.** Every 95% interval above contains 0: no variant is distinguishable "
        f"from the baseline `{study.baseline}` on these examples at this budget ({_budget(study)}; seeds {study.seeds}).",
    ]
    if candidates:
        need, have, variant, metric, est = min(candidates)
        lines.append(
            f"> The most detectable observed difference ({variant}, {metric} {_num(est, 3, True)}) would need about **{need} tasks** "
            f"(this validation has {have}) to be detected with 80% power"
            + (f", or about **{min(seeds)[0]} seeds** ({min(seeds)[1]}, {min(seeds)[2]}) for the per-seed final metrics" if seeds else "")
            + ". Formula: a two-sided paired t-test at α = 0.05, power from the noncentral t distribution "
            "(scipy.stats.nct), effect size d_z = mean / sd of the per-task (per-seed) differences."
        )
    else:
        lines.append("> No observed difference to size a study on (every paired difference is 0 or undefined).")
    lines.append(
        "> More steps or tokens change the differences themselves, which one budget cannot predict: raise the budget "
        "(`--max_tokens`), add validation tasks (`data.max_val_examples`, `trainer.limit_val_batches`) or seeds, and read the verdicts again."
    )
    return lines


def write_markdown(study: "Study", rows: list[dict], pairs: list[dict], path: Path) -> None:
    lines = [
        f"# Study `{study.name}`",
        "",
        f"Base: {', '.join(f'`{b}`' for b in study.base)}; budget per run: {_budget(study)}; seeds: {study.seeds}; "
        f"baseline: `{study.baseline}`.",
        "",
        "## Final validation metrics over seeds",
        "",
        "mean ± std [95% Student-t interval] over the seeds that finished (the interval needs 2 seeds; with 2 it is "
        "mean ± 12.7 · std/√2). `val/exact_match` is over the decoded examples (column `decoded`).",
        "",
        "| variant | status | seeds | val/loss | val/cell_acc | val/exact_match | decoded | tokens seen | wall time (s) | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = r["status"] + (f": {r['reason']}" if r["reason"] else "")
        if r["short"]:
            status += f" (seeds {r['short']} stopped short of the token budget)"
        decoded = f"{r['decoded'][0]}/{r['decoded'][1]}" if r["decoded"] else "—"
        lines.append(
            f"| {r['variant']} | {status.replace('|', chr(92) + '|')} | {','.join(map(str, r['seeds'])) or '—'} | {fmt_seeds(r['val_loss'])} | "
            f"{fmt_seeds(r['val_cell_acc'])} | {fmt_seeds(r['val_exact_match'])} | {decoded} | {_num(r['tokens_seen'].mean, 0)} | "
            f"{_num(r['wall_time_s'].mean, 0)} | {_num(r['tokens_per_s'].mean, 0)} |"
        )
    lines += [
        "",
        f"## Paired against `{study.baseline}` (the same validation examples)",
        "",
        "Δ = variant − baseline, the mean per-example difference over the examples both evaluated (same seed, task and "
        "test index; exact match only where both decoded), seeds pooled; [95% bootstrap interval over tasks]: "
        f"{stats.N_RESAMPLES} resamples of whole tasks (scipy.stats.bootstrap, BCa). Higher exact match and lower loss "
        "are better; the verdict is better / worse when the interval excludes 0. The interval covers the choice of "
        "validation tasks; training randomness is in the seed intervals above. `80% power`: tasks / seeds a "
        "difference of the observed size needs (paired t-test, α = 0.05).",
        "",
        "| variant | paired examples (tasks, seeds) | Δ exact match | verdict | 80% power: tasks / seeds | Δ val loss | verdict | 80% power: tasks / seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in pairs:
        x, lo = e["exact_match"], e["loss"]
        lines.append(
            f"| {e['variant']} | {lo.n_examples} ({lo.n_tasks}, {lo.n_seeds}); decoded {x.n_examples} | {fmt_diff(x)} | {fmt_verdict(x)} | "
            f"{fmt_needed(x.tasks_needed, e['exact_match_seeds_needed'])} | {fmt_diff(lo)} | {fmt_verdict(lo)} | "
            f"{fmt_needed(lo.tasks_needed, e['loss_seeds_needed'])} |"
        )
    if not pairs:
        lines.append("| — | only the baseline variant | | | | | | |")
    base = next((r for r in rows if r["variant"] == study.baseline), None)
    if base is not None and not base["seeds"]:
        lines += ["", f"No run of the baseline `{study.baseline}` finished: nothing to pair with (`--baseline` chooses another)."]
    elif pairs and not any(e[m].n_examples for e in pairs for m in PAIRED_METRICS):
        lines += ["", f"No per-example results to pair (`{EXAMPLES_FILE}` missing from the runs' log folders: runs of an older gridlm?)."]
    if separates_nothing(pairs):
        lines += [""] + warning_lines(study, pairs)
    path.write_text("\n".join(lines) + "\n")


def write_csv(records: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RUN_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in RUN_FIELDS})


def write_paired_csv(study: "Study", pairs: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PAIRED_FIELDS)
        for e in pairs:
            for m in PAIRED_METRICS:
                p = e[m]
                values = [e["variant"], study.baseline, m, p.estimate, p.lo, p.hi, p.method, p.verdict, p.n_examples, p.n_tasks, p.n_seeds,
                          p.tasks_needed, e[f"{m}_seeds_needed"]]  # fmt: skip
                writer.writerow(["" if v is None else v for v in values])


# ---------------------------------------------------------------------- curves
def variant_curve(runs: list[list[dict]], key: str) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``(tokens, mean, lo, hi)`` of ``key`` over a variant's runs (each a list of validations):
    each run interpolated onto the tokens at which any run validated, inside the range all runs
    cover; the band is the 95% Student-t interval over runs (NaN with one run)."""
    curves = []
    for validations in runs:
        pts = [(v["tokens_seen"], v[key]) for v in validations if v.get(key) is not None and np.isfinite(v[key])]
        if pts:
            curves.append(np.asarray(sorted(pts), dtype=float))  # (points, 2)
    if not curves:
        return None
    start, stop = max(c[0, 0] for c in curves), min(c[-1, 0] for c in curves)
    grid = np.unique(np.concatenate([c[:, 0] for c in curves]))
    grid = grid[(grid >= start) & (grid <= stop)]
    if len(grid) == 0:  # runs that share no range of tokens: each at its own points
        grid = curves[0][:, 0]
    y = np.stack([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])  # (runs, points)
    mean, lo, hi = stats.t_band(y)
    return grid, mean, lo, hi


def plot_curves(study: "Study", records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4.5))
    for i, variant in enumerate(study.variants):
        runs = [r["validations"] for r in records if r["variant"] == variant and r["status"] == "ok" and r.get("validations")]
        colour = plt.cm.tab10(i % 10) if len(study.variants) <= 10 else plt.cm.tab20(i % 20)
        for ax, (key, _) in zip(axes, CURVES):
            curve = variant_curve(runs, key)
            if curve is None:
                continue
            x, mean, lo, hi = curve
            ax.plot(x, mean, marker="o", markersize=3, color=colour, label=f"{variant} ({len(runs)})")
            if np.isfinite(lo).any():
                ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
    for ax, (_, label) in zip(axes, CURVES):
        ax.set_xlabel("training tokens seen")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="variant (seeds)", title_fontsize=7)
    band = "; band: 95% Student-t interval over seeds" if len(study.seeds) > 1 else ""
    fig.suptitle(f"study {study.name}: mean over seeds {study.seeds}{band}; budget: {_budget(study)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------- console and wandb
def print_table(study: "Study", rows: list[dict], pairs: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    by_variant = {e["variant"]: e for e in pairs}
    table = Table(title=f"study {study.name} (baseline {study.baseline})")
    for col in ("variant", "status", "val/loss [95%]", "val/exact_match [95%]", "Δ loss: verdict", "Δ exact: verdict", "tokens", "wall s"):
        table.add_column(col)
    for r in rows:
        e = by_variant.get(r["variant"])
        table.add_row(
            r["variant"], r["status"] + (f": {r['reason'][:60]}" if r["reason"] else ""), fmt_seeds(r["val_loss"]),
            fmt_seeds(r["val_exact_match"]), f"{fmt_diff(e['loss'])}: {e['loss'].verdict}" if e else "baseline",
            f"{fmt_diff(e['exact_match'])}: {e['exact_match'].verdict}" if e else "baseline",
            _num(r["tokens_seen"].mean, 0), _num(r["wall_time_s"].mean, 0),
        )  # fmt: skip
    Console(width=200).print(table)
    if separates_nothing(pairs):
        Console(width=200).print("\n".join(line.lstrip("> ") for line in warning_lines(study, pairs)), markup=False)


def log_to_wandb(study: "Study", out: Path, rows: list[dict], pairs: list[dict], wandb_mode: str) -> Optional[Path]:
    """One run in the study's wandb group (job type ``study``): the curves image and the two
    tables. Offline without a key or network, like the training runs; any wandb error becomes a
    warning (the files in ``out`` are the report). Returns the run's folder, or None."""
    from gridlm.callbacks.wandb_tracking import bounded_settings, resolve_mode

    mode = resolve_mode(wandb_mode)
    if mode == "disabled":
        return None
    try:
        import wandb

        run = wandb.init(
            project=str(study.flags.get("wandb_project", "gridlm")), group=study.name, job_type="study", name=f"{study.name}/report",
            dir=str(out), mode=mode, settings=bounded_settings() if mode == "online" else None,
            config={"study": study.name, "baseline": study.baseline, "seeds": study.seeds, "budget": _budget(study), "variants": study.variants},
        )  # fmt: skip
        summary = [[r["variant"], r["status"], *(getattr(r[k], a) for k in ("val_loss", "val_exact_match") for a in ("mean", "lo", "hi")),
                    r["tokens_seen"].mean, r["wall_time_s"].mean] for r in rows]  # fmt: skip
        columns = ["variant", "status", "val_loss", "val_loss_lo", "val_loss_hi", "val_exact_match", "val_exact_match_lo", "val_exact_match_hi", "tokens_seen", "wall_time_s"]
        paired_rows = [[e["variant"], m, e[m].estimate, e[m].lo, e[m].hi, e[m].verdict, e[m].n_tasks] for e in pairs for m in PAIRED_METRICS]
        run.log({
            "study/curves": wandb.Image(str(out / "curves.png")),
            "study/results": wandb.Table(columns=columns, data=summary),
            "study/paired": wandb.Table(columns=["variant", "metric", "difference", "lo", "hi", "verdict", "tasks"], data=paired_rows),
        })  # fmt: skip
        folder = Path(run.dir).parent
        run.finish()
        return folder
    except Exception as err:  # wandb raises many types; the report files are already written
        warnings.warn(f"gridlm-compare: logging the report to wandb failed ({type(err).__name__}: {' '.join(str(err).split())[:300]})")
        return None


def write_report(study: "Study", records: list[dict], out: Path, wandb_mode: str = "auto") -> list[dict]:
    """Every output of a study's report; returns the per-variant rows."""
    rows, pairs = summarize(study, records), paired(study, records)
    write_markdown(study, rows, pairs, out / "results.md")
    write_csv(records, out / "results.csv")
    write_paired_csv(study, pairs, out / "paired.csv")
    plot_curves(study, records, out / "curves.png")
    print_table(study, rows, pairs)
    log_to_wandb(study, out, rows, pairs, wandb_mode)
    print(f"gridlm-compare: wrote {', '.join(str(out / f) for f in ('results.md', 'results.csv', 'paired.csv', 'curves.png'))}")
    return rows
