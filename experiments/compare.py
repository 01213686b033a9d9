"""``gridlm-compare``: run a study (variants x seeds of ``gridlm fit``) and compare the runs.

A study is a base config, a training budget, seeds, and named variants, each a few flags that
differ from the base (an encoding, an order, an optimizer). Every run is a separate
``python -m gridlm.experiments.cli fit`` process, one after the other, with the same data, budget and
seed list, ``--run_name <study>/<variant>/seed<k>`` and ``--study <study>`` (the wandb group).
Its log folder gets ``run_summary.json`` (``callbacks/loss_logging.py``) and
``val_examples.csv`` (``callbacks/val_examples.py``); the study then writes
(``gridlm.experiments.report``, statistics from ``gridlm.experiments.stats``)

- ``<out>/results.md``: per variant: final metrics, mean ± std and 95% Student-t interval over
  seeds, tokens seen and wall time; per variant against the baseline: the paired difference in
  exact match and loss on the same validation examples, its 95% bootstrap interval over tasks,
  a verdict (better / worse / no detectable difference) and how many tasks or seeds a difference
  of that size needs; a warning when no interval excludes zero;
- ``<out>/results.csv``: one row per run (variant, seed); ``<out>/paired.csv``: the paired table;
- ``<out>/curves.png``: ``val/loss``, ``val/exact_match`` and ``val/cell_acc`` against training
  tokens seen, mean over seeds with a 95% band, also logged to the study's wandb group.

Re-running skips runs whose ``run_summary.json`` says ``finished``. A failed run is reported in
the table with a one-line reason (its full output is in ``<out>/logs/``); the others go on.

Study file (``configs/studies/<name>.yaml``)::

    name: encodings_arc1                 # wandb group and folder name
    base: [configs/quickstart.yaml]      # --config file(s); relative to the cwd or the repo
    budget: {tokens: 1000000, max_time: "00:00:08:00"}  # --max_tokens / trainer.max_steps / trainer.max_time
    seeds: [0, 1]                        # seed_everything and data.seed of each run
    baseline: rope_1d                    # the variant the others are paired with (default: the first)
    flags: {trainer.val_check_interval: 50}             # flags shared by every variant
    variants:                            # name -> flags that differ from the base
      rope_1d: {model.encoding: rope_1d}
      rope_2d: {model.encoding: rope_2d}

Without a study file, ``--config``, ``--encodings``, ``--orders``, ``--optimizers`` (the cross
product makes the variants), ``--seeds``, ``--max_steps``/``--max_time``/``--max_tokens`` and
``--set`` build one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any, Optional

import yaml

from gridlm.callbacks.loss_logging import SUMMARY_FILE
from gridlm.callbacks.val_examples import EXAMPLES_FILE, read_examples
from gridlm.configs import CONFIG_DIR
from gridlm.configs import resolve_config as packaged_config

NAME_RE = re.compile(r"^[A-Za-z0-9_.+=-]+$")  # study / variant names become folder names
CSV_FIELDS = (
    "variant", "seed", "status", "reason", "steps", "tokens_seen", "val_loss", "val_cell_acc",
    "val_exact_match", "best_val_loss", "tokens_per_s", "wall_time_s", "log_dir",
)  # fmt: skip


@dataclass
class Study:
    """One comparison: every variant is trained once per seed with the same base and budget."""

    name: str  # study name: wandb group, run-name prefix
    base: list[str]  # config files given as --config, in order
    variants: dict[str, dict[str, Any]]  # variant name -> {flag (without --): value}
    seeds: list[int] = field(default_factory=lambda: [0])  # seed_everything and data.seed per run
    max_steps: Optional[int] = None  # trainer.max_steps of every run (None: the base config's)
    max_time: Optional[str] = None  # trainer.max_time "DD:HH:MM:SS" cap of every run
    max_tokens: Optional[int] = None  # --max_tokens: training tokens of every run (equal compute)
    flags: dict[str, Any] = field(default_factory=dict)  # flags shared by every variant
    baseline: Optional[str] = None  # variant the others are paired with; None: the first

    def __post_init__(self) -> None:
        for what, name in [("study name", self.name), *(("variant name", v) for v in self.variants)]:
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise ValueError(f"{what} {name!r} must be letters, digits and _ . + = - (it names folders)")
        if not self.variants:
            raise ValueError(f"study {self.name!r} has no variants")
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ValueError(f"study {self.name!r}: seeds must be a non-empty list of integers, got {self.seeds!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"study {self.name!r}: budget.max_steps must be a positive integer, got {self.max_steps!r}")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise ValueError(f"study {self.name!r}: budget.tokens must be a positive integer (e.g. 2000000), got {self.max_tokens!r}")
        if self.baseline is None:
            self.baseline = next(iter(self.variants))
        elif self.baseline not in self.variants:
            raise ValueError(f"study {self.name!r}: baseline {self.baseline!r} is not a variant; variants: {', '.join(self.variants)}")
        for variant, flags in self.variants.items():
            if not isinstance(flags, dict):
                raise ValueError(f"study {self.name!r}: variant {variant!r} must map flags to values, got {flags!r}")

    def runs(self) -> list[tuple[str, int]]:
        return [(v, s) for v in self.variants for s in self.seeds]


def load_study(path: str | Path) -> Study:
    """Read a study YAML file (schema in the module docstring); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such study file")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a study file must be a mapping (name, base, budget, seeds, variants)")
    unknown = set(raw) - {"name", "description", "base", "budget", "seeds", "baseline", "flags", "variants"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; allowed: name, description, base, budget, seeds, baseline, flags, variants")
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"max_steps", "max_time", "tokens"}:
        raise ValueError(f"{path}: budget keys must be tokens, max_steps and/or max_time, got {budget!r}")
    base = raw.get("base") or []
    try:
        return Study(
            name=raw.get("name") or path.stem,
            base=[base] if isinstance(base, str) else list(base),
            variants=raw.get("variants") or {},
            seeds=list(raw.get("seeds") or [0]),
            max_steps=budget.get("max_steps"),
            max_time=budget.get("max_time"),
            max_tokens=budget.get("tokens"),
            flags=raw.get("flags") or {},
            baseline=raw.get("baseline"),
        )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def resolve_config(path: str) -> str:
    """A config path as given if it exists, else a packaged config (``quickstart``,
    ``configs/quickstart.yaml``: see :func:`gridlm.configs.resolve_config`)."""
    found = packaged_config(path)
    if Path(found).is_file():
        return found
    raise FileNotFoundError(f"config file {path} not found (looked in {Path.cwd()} and the packaged configs {CONFIG_DIR})")


def flag_value(value: Any) -> str:
    """A YAML value as a command-line flag value (lists/dicts as JSON, which jsonargparse reads)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def fit_command(study: Study, variant: str, seed: int, out: Path, wandb_mode: str) -> list[str]:
    """The ``gridlm fit`` command line of one run (later flags win)."""
    cmd = [sys.executable, "-m", "gridlm.experiments.cli", "fit"]
    for cfg in study.base:
        cmd += ["--config", resolve_config(cfg)]
    flags: dict[str, Any] = dict(study.flags)
    flags.update(study.variants[variant])
    if study.max_steps is not None:
        flags["trainer.max_steps"] = study.max_steps
    if study.max_time is not None:
        flags["trainer.max_time"] = study.max_time
        flags.setdefault("trainer.max_steps", -1)
    if study.max_tokens is not None:
        flags["max_tokens"] = study.max_tokens
        flags.setdefault("trainer.max_steps", -1)  # the token budget stops the run
    flags.update(
        {
            "seed_everything": seed,
            "data.seed": seed,
            "run_name": f"{study.name}/{variant}/seed{seed}",
            "study": study.name,
            "wandb_mode": wandb_mode,
            "trainer.default_root_dir": str(out / "runs"),
        }
    )
    for key, value in flags.items():
        cmd.append(f"--{key.lstrip('-')}={flag_value(value)}")
    return cmd


def run_dir(out: Path, study: Study, variant: str, seed: int) -> Path:
    """Folder holding the run's ``version_N`` log folders (CSVLogger layout)."""
    return out / "runs" / study.name / variant / f"seed{seed}"


def latest_summary(folder: Path) -> Optional[dict]:
    """The newest ``run_summary.json`` under ``folder/version_*`` (by version number), or None."""
    versions = sorted(folder.glob("version_*"), key=lambda p: int(p.name.split("_")[-1]) if p.name.split("_")[-1].isdigit() else -1)
    for v in reversed(versions):
        f = v / SUMMARY_FILE
        if f.is_file():
            try:
                summary = json.loads(f.read_text())
            except json.JSONDecodeError:
                continue
            summary["log_dir"] = str(v)
            return summary
    return None


def failure_reason(log_file: Path, returncode: int) -> str:
    """One line: the ``gridlm: error:`` line, else the last exception line, else the exit code."""
    lines = [ln.strip() for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()] if log_file.is_file() else []
    for ln in reversed(lines):
        if ln.startswith("gridlm: error:"):
            return ln[len("gridlm: error:") :].strip()
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", ln):
            return ln
    return f"exit code {returncode}" + (f": {lines[-1]}" if lines else "")


def run_study(study: Study, out: str | Path, wandb_mode: str = "auto", force: bool = False, dry_run: bool = False) -> list[dict]:
    """Run every (variant, seed) not finished yet, sequentially; return one record per run."""
    out = Path(out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    records = []
    runs = study.runs()
    for i, (variant, seed) in enumerate(runs, 1):
        folder = run_dir(out, study, variant, seed)
        summary = latest_summary(folder)
        label = f"[{i}/{len(runs)}] {variant} seed {seed}"
        if summary and summary.get("status") == "finished" and not force:
            print(f"gridlm-compare: {label}: already finished ({summary['log_dir']}), skipped", flush=True)
            records.append(_record(variant, seed, summary))
            continue
        cmd = fit_command(study, variant, seed, out, wandb_mode)
        if dry_run:
            print(" ".join(cmd))
            continue
        log_file = out / "logs" / f"{variant}-seed{seed}.log"
        print(f"gridlm-compare: {label}: running (output in {log_file})", flush=True)
        start = time.time()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_file, "w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
        summary = latest_summary(folder)
        if proc.returncode == 0 and summary and summary.get("status") == "finished":
            print(f"gridlm-compare: {label}: done in {time.time() - start:.0f} s", flush=True)
            records.append(_record(variant, seed, summary))
        else:
            reason = failure_reason(log_file, proc.returncode)
            print(f"gridlm-compare: {label}: FAILED: {reason}", flush=True)
            records.append({"variant": variant, "seed": seed, "status": "failed", "reason": reason, "log_dir": str(log_file)})
    return records


def _record(variant: str, seed: int, summary: dict) -> dict:
    final, best = summary.get("final") or {}, summary.get("best") or {}
    return {
        "variant": variant,
        "seed": seed,
        "status": "ok",
        "reason": "",
        "steps": summary.get("steps"),
        "tokens_seen": summary.get("tokens_seen"),
        "val_loss": final.get("val/loss"),
        "val_cell_acc": final.get("val/cell_acc"),
        "val_exact_match": final.get("val/exact_match"),
        "best_val_loss": (best.get("val/loss") or {}).get("value"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "wall_time_s": summary.get("wall_time_s"),
        "log_dir": summary.get("log_dir"),
        "validations": summary.get("validations") or [],
        "examples": _examples(summary.get("log_dir"), seed),
    }


def _examples(log_dir: Optional[str], seed: int) -> list[dict]:
    """The last validation's per-example rows of a run (``val_examples.csv``), keyed by the
    study's seed; [] for a run without the file (older runs, other modules)."""
    path = Path(log_dir or "") / EXAMPLES_FILE
    if not log_dir or not path.is_file():
        return []
    return [{**r, "seed": seed} for r in read_examples(path)]


def compare(study: Study, out: str | Path, wandb_mode: str = "auto", force: bool = False) -> list[dict]:
    """Run the study, write ``results.md``, ``results.csv``, ``paired.csv`` and ``curves.png``
    into ``out``, log the curves and tables to the study's wandb group; one row per variant."""
    from gridlm.experiments import report

    out = Path(out)
    records = run_study(study, out, wandb_mode=wandb_mode, force=force)
    return report.write_report(study, records, out, wandb_mode=wandb_mode)


# ---------------------------------------------------------------------- command line
def _split(text: Optional[str]) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def study_from_flags(args: argparse.Namespace) -> Study:
    """Variants = cross product of --encodings x --orders x --optimizers (axes left out vary nothing)."""
    if not args.config:
        raise ValueError("give --study FILE, or --config FILE with --encodings/--orders/--optimizers")
    axes = []
    for flag, key, values in (
        ("encodings", "model.encoding", _split(args.encodings)),
        ("orders", "data.order", _split(args.orders)),
        ("optimizers", "model.optimizer", _split(args.optimizers)),
    ):
        if values:
            axes.append([(v.rsplit(".", 1)[-1], key, v) for v in values])
    if not axes:
        raise ValueError("no variants: give at least one of --encodings, --orders, --optimizers (comma-separated)")
    variants = {}
    for combo in product(*axes):
        variants["-".join(name for name, _, _ in combo)] = {key: value for _, key, value in combo}
    shared = {}
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set trainer.val_check_interval=50")
        key, value = item.split("=", 1)
        shared[key] = yaml.safe_load(value)
    return Study(
        name=args.name or "study",
        base=list(args.config),
        variants=variants,
        seeds=_seeds(args.seeds) or [0],
        max_steps=args.max_steps,
        max_time=args.max_time,
        max_tokens=args.max_tokens,
        flags=shared,
        baseline=args.baseline,
    )


def _seeds(text: Optional[str]) -> list[int]:
    try:
        return [int(s) for s in _split(text)]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gridlm-compare", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", help="study YAML file (configs/studies/<name>.yaml)")
    p.add_argument("--out", help="output folder (default runs/studies/<study name>)")
    p.add_argument("--config", action="append", help="base config file (repeatable), without --study")
    p.add_argument("--name", help="study name, without --study (default 'study')")
    p.add_argument("--encodings", help="comma-separated model.encoding values, one variant each")
    p.add_argument("--orders", help="comma-separated data.order values")
    p.add_argument("--optimizers", help="comma-separated optimizer class paths, e.g. torch.optim.AdamW")
    p.add_argument("--seeds", help="comma-separated seeds (default 0)")
    p.add_argument("--max_steps", type=int, help="training steps of every run (overrides the study's budget)")
    p.add_argument("--max_time", help="wall-time cap of every run, DD:HH:MM:SS (overrides the study's budget)")
    p.add_argument("--max_tokens", type=int, help="training tokens of every run: equal compute (overrides the study's budget)")
    p.add_argument("--baseline", help="variant the others are paired with (default: the study's, else the first)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="flag shared by every run, e.g. trainer.val_check_interval=50")
    p.add_argument("--wandb_mode", default="auto", choices=["auto", "online", "offline", "disabled"])
    p.add_argument("--force", action="store_true", help="re-run finished runs too")
    p.add_argument("--dry_run", action="store_true", help="print the fit commands, run nothing")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.study:
            study = load_study(args.study)
            overrides = {"max_steps": args.max_steps, "max_time": args.max_time, "max_tokens": args.max_tokens,
                         "baseline": args.baseline, "seeds": _seeds(args.seeds) or None}  # fmt: skip
            study = replace(study, **{k: v for k, v in overrides.items() if v is not None})  # checked again
        else:
            study = study_from_flags(args)
        out = Path(args.out or Path("runs") / "studies" / study.name)
        if args.dry_run:
            run_study(study, out, wandb_mode=args.wandb_mode, dry_run=True)
            return 0
        rows = compare(study, out, wandb_mode=args.wandb_mode, force=args.force)
    except (ValueError, FileNotFoundError) as err:
        print(f"gridlm-compare: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
