"""gridlm-compare: study files, fit commands, reports, skipping finished runs, failed variants."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gridlm.callbacks.val_examples import EXAMPLES_FILE, FIELDS, read_examples
from gridlm.experiments import compare
from gridlm.experiments.cli import cli_main
from gridlm.experiments.compare import Study, fit_command, load_study, main, study_from_flags
from test_cli import CONFIGS, tiny_flags

STUDIES = sorted((CONFIGS / "studies").glob("*.yaml"))


def tiny_study_flags(tmp_path: Path) -> dict[str, str]:
    """test_cli's tiny fit flags as a study's shared flags (the study sets the rest)."""
    flags = tiny_flags(tmp_path, steps=2)
    pairs = dict(zip(flags[::2], flags[1::2]))
    for own in ("--config", "--run_name", "--wandb_mode", "--trainer.default_root_dir", "--trainer.max_steps"):
        pairs.pop(own)
    pairs["--trainer.val_check_interval"] = "1"
    return {k.lstrip("-"): v for k, v in pairs.items()}


def write_study(tmp_path: Path, variants: dict, name: str = "tiny", budget: dict | None = None, seeds: list[int] = [0]) -> Path:
    path = tmp_path / f"{name}.yaml"
    study = {"name": name, "base": [str(CONFIGS / "quickstart.yaml")], "budget": budget or {"max_steps": 2}, "seeds": seeds,
             "flags": tiny_study_flags(tmp_path), "variants": variants}  # fmt: skip
    path.write_text(json.dumps(study))  # JSON is YAML
    return path


# ---------------------------------------------------------------- study files and commands
@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_study_file_builds_valid_fit_commands(path, tmp_path):
    study = load_study(path)
    assert study.name == path.stem
    parser = None
    for variant in study.variants:
        cmd = fit_command(study, variant, study.seeds[0], tmp_path, "disabled")
        assert cmd[1:4] == ["-m", "gridlm.experiments.cli", "fit"]
        if parser is None:  # build (and instantiate) the real CLI once, then parse the others
            parser = cli_main(cmd[4:], run=False).parser  # run=False: no subcommand
        config = parser.parse_args(cmd[4:])
        assert config["study"] == study.name and config["run_name"] == f"{study.name}/{variant}/seed{study.seeds[0]}"
        for key, value in study.variants[variant].items():  # the variant's flags reached the config
            node = config
            for part in key.split("."):
                node = node[part] if part in node else node["init_args"][part]
            assert node == value or node["class_path"] == value["class_path"], (variant, key)


def test_optimizers_study_schedule_matches_the_budget():
    study = load_study(CONFIGS / "studies" / "optimizers.yaml")
    cosine = study.variants["adamw_cosine"]["model.lr_scheduler"]["init_args"]
    assert cosine["total_steps"] == study.max_steps
    assert study.variants["schedule_free"]["model.optimizer"]["class_path"] == "schedulefree.AdamWScheduleFree"


def test_encodings_study_covers_every_encoding():
    from gridlm.modules.encodings import ENCODINGS

    study = load_study(CONFIGS / "studies" / "encodings_arc1.yaml")
    assert sorted(v["model.encoding"] for v in study.variants.values()) == sorted(ENCODINGS)
    assert {tuple(v) for v in study.variants.values()} == {("model.encoding",)}  # nothing else differs


def test_default_encodings_study_answers_1d_vs_2d_and_onehot_vs_quadtree_at_equal_tokens():
    from gridlm.modules.encodings import ENCODINGS

    study = load_study(CONFIGS / "studies" / "encodings.yaml")
    encodings = [v["model.encoding"] for v in study.variants.values()]
    assert set(encodings) <= set(ENCODINGS)
    assert {"rope_1d", "learned_1d"} <= set(encodings) and {"onehot_2d", "quadtree_2d", "edges_2d", "rope_2d"} <= set(encodings)
    assert study.base == ["configs/quickstart.yaml"] and study.seeds == [0, 1] and study.baseline == "rope_1d"
    assert study.max_tokens and study.max_steps is None and study.baseline in study.variants
    assert study.flags["model.n_generate"] is None and study.flags["data.max_val_examples"] is None  # every task decoded
    assert "model.encoding" not in study.flags  # the variants choose it; every other model flag is pinned
    flags = dict(a[2:].split("=", 1) for a in fit_command(study, "rope_2d", 0, Path("out"), "disabled") if a.startswith("--") and "=" in a)
    assert flags["max_tokens"] == str(study.max_tokens) and flags["trainer.max_steps"] == "-1"


def test_orders_study_pairs_hilbert_with_row_major():
    study = load_study(CONFIGS / "studies" / "orders.yaml")
    assert [v["data.order"] for v in study.variants.values()] == ["row_major", "hilbert"] and study.baseline == "row_major"
    assert study.flags["model.encoding"] == ["rope_1d", "edges_2d"] and study.max_tokens


def test_fit_command_sets_budget_seed_group_and_run_name(tmp_path):
    study = Study(name="s", base=[str(CONFIGS / "quickstart.yaml")], variants={"a": {"model.encoding": ["rope_1d", "onehot_2d"]}},
                  seeds=[3], max_steps=7, max_time="00:00:01:00", flags={"trainer.log_every_n_steps": 1, "model.encoding": "none"})  # fmt: skip
    cmd = fit_command(study, "a", 3, tmp_path, "offline")
    flags = dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
    assert flags["model.encoding"] == '["rope_1d", "onehot_2d"]'  # the variant wins over shared flags
    assert flags["trainer.max_steps"] == "7" and flags["trainer.max_time"] == "00:00:01:00"
    assert flags["seed_everything"] == "3" and flags["data.seed"] == "3"
    assert flags["run_name"] == "s/a/seed3" and flags["study"] == "s" and flags["wandb_mode"] == "offline"
    assert flags["trainer.default_root_dir"] == str(tmp_path / "runs")
    tokens = Study(name="s", base=study.base, variants={"a": {}}, max_tokens=5000, flags={"trainer.max_steps": 100})
    flags = dict(a[2:].split("=", 1) for a in fit_command(tokens, "a", 0, tmp_path, "offline") if a.startswith("--") and "=" in a)
    assert flags["max_tokens"] == "5000" and flags["trainer.max_steps"] == "100"  # a shared step cap stays a cap
    tokens.flags = {}
    flags = dict(a[2:].split("=", 1) for a in fit_command(tokens, "a", 0, tmp_path, "offline") if a.startswith("--") and "=" in a)
    assert flags["trainer.max_steps"] == "-1"  # else the token budget alone stops the run


def test_variants_from_flags_are_the_cross_product(tmp_path):
    args = compare.parser().parse_args(
        ["--config", "configs/quickstart.yaml", "--encodings", "rope_1d,rope_2d", "--orders", "row_major,hilbert",
         "--optimizers", "torch.optim.AdamW", "--seeds", "0,1", "--max_steps", "5", "--set", "trainer.val_check_interval=5"]
    )  # fmt: skip
    study = study_from_flags(args)
    assert list(study.variants) == ["rope_1d-row_major-AdamW", "rope_1d-hilbert-AdamW", "rope_2d-row_major-AdamW", "rope_2d-hilbert-AdamW"]
    assert study.variants["rope_2d-hilbert-AdamW"] == {"model.encoding": "rope_2d", "data.order": "hilbert", "model.optimizer": "torch.optim.AdamW"}
    assert study.seeds == [0, 1] and study.max_steps == 5 and study.flags == {"trainer.val_check_interval": 5}
    args = compare.parser().parse_args(["--config", "configs/quickstart.yaml", "--encodings", "a,b", "--max_tokens", "900", "--baseline", "b"])
    study = study_from_flags(args)
    assert study.max_tokens == 900 and study.baseline == "b" and study_from_flags(compare.parser().parse_args(["--config", "c", "--encodings", "a,b"])).baseline == "a"


@pytest.mark.parametrize(
    "content, message",
    [
        ({"name": "x", "variants": {"a b": {}}}, "variant name 'a b' must be letters"),
        ({"name": "x", "variants": {}}, "has no variants"),
        ({"name": "x", "variants": {"a": {}}, "budget": {"steps": 3}}, "budget keys must be tokens, max_steps and/or max_time"),
        ({"name": "x", "variants": {"a": {}}, "budget": {"tokens": "1e6"}}, "budget.tokens must be a positive integer"),
        ({"name": "x", "variants": {"a": {}}, "baseline": "b"}, "baseline 'b' is not a variant; variants: a"),
        ({"name": "x", "variants": {"a": {}}, "seed": [1]}, "unknown keys ['seed']"),
        ({"name": "x", "variants": {"a": "rope_1d"}}, "variant 'a' must map flags to values"),
        ({"name": "x", "variants": {"a": {}}, "budget": {"max_steps": 0}}, "budget.max_steps must be a positive integer"),
    ],
    ids=["bad-name", "no-variants", "bad-budget", "bad-tokens", "bad-baseline", "unknown-key", "bad-variant", "zero-steps"],
)
def test_bad_study_files_name_the_file_and_the_defect(tmp_path, content, message, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="bad.yaml: ") as err:
        load_study(path)
    assert message in str(err.value)
    assert main(["--study", str(path)]) == 2
    assert capsys.readouterr().err.startswith("gridlm-compare: error: ")


# ---------------------------------------------------------------- reports from finished runs
def fake_run(out: Path, study: str, variant: str, seed: int, loss: float, acc: float, examples: dict | None = None) -> None:
    """A finished run's folder: run_summary.json and, with ``examples`` ({(task, test index):
    (exact match or None, loss)}), the last validation's val_examples.csv."""
    folder = out / "runs" / study / variant / f"seed{seed}" / "version_0"
    folder.mkdir(parents=True)
    validations = [{"step": s, "tokens_seen": 100 * s, "val/loss": loss + 1.0 / s, "val/cell_acc": acc, "val/exact_match": acc / 2} for s in (1, 2, 3)]
    summary = {"status": "finished", "steps": 3, "tokens_seen": 300, "tokens_per_s": 50.0, "wall_time_s": 6.0,
               "final": {"val/loss": validations[-1]["val/loss"], "val/cell_acc": acc, "val/exact_match": acc / 2},
               "best": {"val/loss": {"value": validations[-1]["val/loss"]}}, "validations": validations}  # fmt: skip
    (folder / "run_summary.json").write_text(json.dumps(summary))
    if examples is not None:
        with open(folder / EXAMPLES_FILE, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for step in (1, 3):  # an earlier validation's rows are ignored (9.0): the last one counts
                for (task, index), (exact, ex_loss) in examples.items():
                    writer.writerow({"step": step, "tokens_seen": 100 * step, "task_id": task, "test_index": index,
                                     "exact_match": "" if exact is None else exact, "loss": ex_loss if step == 3 else 9.0, "tokens": 10,
                                     "encoding": "none", "order": "row_major", "seed": seed})  # fmt: skip


def no_subprocess(*args, **kwargs):
    raise AssertionError("a finished run was run again")


def test_finished_runs_are_skipped_and_reported_with_intervals(tmp_path, monkeypatch):
    study = Study(name="s", base=[str(CONFIGS / "quickstart.yaml")], variants={"a": {}, "b": {}}, seeds=[0, 1])
    out = tmp_path / "out"
    for variant, seed, loss in [("a", 0, 1.0), ("a", 1, 2.0), ("b", 0, 3.0), ("b", 1, 3.0)]:
        fake_run(out, "s", variant, seed, loss, acc=0.25 * (seed + 1))
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    rows = compare.compare(study, out, wandb_mode="disabled")
    assert [r["status"] for r in rows] == ["ok", "ok"]

    md = (out / "results.md").read_text()
    final_a = [1.0 + 1 / 3, 2.0 + 1 / 3]
    half = 12.706204736174707 * 0.7071067811865476 / 2**0.5  # t(0.975, 1) * std / sqrt(2)
    mean = sum(final_a) / 2
    assert f"| a | ok | 0,1 | {mean:.3f} ± 0.707 [{mean - half:.3f}, {mean + half:.3f}] | 0.375 ± 0.177 [" in md
    assert "| b | ok | 0,1 | 3.333 ± 0.000 [3.333, 3.333] |" in md
    assert "| b | 0 (0, 0); decoded 0 | — (no paired examples) | — |" in md  # runs without val_examples.csv
    assert "No per-example results to pair (`val_examples.csv` missing" in md and "separates nothing" not in md
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"], r["status"]) for r in table] == [("a", "0", "ok"), ("a", "1", "ok"), ("b", "0", "ok"), ("b", "1", "ok")]
    assert float(table[1]["val_loss"]) == pytest.approx(2.0 + 1 / 3)

    import matplotlib.image

    image = matplotlib.image.imread(out / "curves.png")
    assert image.shape[0] > 200 and image.shape[1] > 1000  # three panels


def _examples(rng: np.random.Generator, n_tasks: int, shift: float, solved: float) -> dict:
    """Two test pairs per task; loss 1 + task effect + shift, exact match with probability ``solved``."""
    out = {}
    for t in range(n_tasks):
        effect = rng.normal(0, 0.2)
        for i in range(2):
            out[(f"task{t:02d}", i)] = (float(rng.random() < solved) if i == 0 else None, 1.0 + effect + shift + rng.normal(0, 0.01))
    return out


def test_paired_verdicts_against_the_baseline(tmp_path, monkeypatch):
    """'better' has 0.3 nats lower loss on every example (plus noise); 'same' equals the baseline; the baseline
    is the second variant (``baseline:``)."""
    rng = np.random.default_rng(0)
    study = Study(name="s", base=[str(CONFIGS / "quickstart.yaml")], variants={"better": {}, "base": {}, "same": {}}, seeds=[0, 1], baseline="base")
    out = tmp_path / "out"
    for seed in (0, 1):
        base = _examples(rng, 30, 0.0, 0.2)
        fake_run(out, "s", "base", seed, 2.0 + seed / 10, 0.4, base)
        fake_run(out, "s", "same", seed, 2.0 + seed / 10, 0.4, base)
        fake_run(out, "s", "better", seed, 1.7 + seed / 10, 0.6, {k: (v[0], v[1] - 0.3 + rng.normal(0, 0.05)) for k, v in base.items()})
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    compare.compare(study, out, wandb_mode="disabled")

    with open(out / "paired.csv") as f:
        paired = {(r["variant"], r["metric"]): r for r in csv.DictReader(f)}
    assert set(paired) == {("better", "exact_match"), ("better", "loss"), ("same", "exact_match"), ("same", "loss")}
    loss = paired[("better", "loss")]
    assert loss["verdict"] == "better" and loss["method"] == "BCa" and float(loss["difference"]) == pytest.approx(-0.3, abs=0.02)
    assert float(loss["lo"]) < -0.3 < float(loss["hi"]) < 0 and loss["tasks"] == "30" and loss["examples"] == "120" and loss["seeds"] == "2"
    assert paired[("better", "exact_match")]["examples"] == "60"  # decoded examples only
    assert paired[("same", "loss")]["verdict"] == "no detectable difference" and float(paired[("same", "loss")]["difference"]) == 0.0
    md = (out / "results.md").read_text()
    assert "## Paired against `base`" in md and "| better | 120 (30, 2); decoded 60 |" in md
    assert "| **better** |" in md and "this budget separates nothing" not in md


def test_a_budget_that_separates_nothing_is_flagged_with_sample_sizes(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    study = Study(name="s", base=[str(CONFIGS / "quickstart.yaml")], variants={"a": {}, "b": {}}, seeds=[0, 1], max_tokens=300)
    out = tmp_path / "out"
    for seed in (0, 1):
        ex = _examples(rng, 12, 0.0, 0.0)
        fake_run(out, "s", "a", seed, 2.0, 0.4, ex)
        fake_run(out, "s", "b", seed, 2.01 - seed / 50, 0.4, {k: (v[0], v[1] + rng.normal(0.01, 0.1)) for k, v in ex.items()})
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    compare.compare(study, out, wandb_mode="disabled")
    md = (out / "results.md").read_text()
    assert "this budget separates nothing" in md and "noncentral t" in md
    with open(out / "paired.csv") as f:
        loss = next(r for r in csv.DictReader(f) if r["metric"] == "loss")
    assert loss["verdict"] == "no detectable difference" and int(loss["tasks_needed"]) > 12
    assert f"would need about **{loss['tasks_needed']} tasks** (this validation has 12)" in md
    assert "budget per run: tokens=300" in md and "stopped short" not in md  # every run reached the budget
    assert "this budget separates nothing" in capsys.readouterr().out


def test_a_failed_baseline_is_said_not_taken_for_no_difference(tmp_path, monkeypatch):
    study = Study(name="s", base=[str(CONFIGS / "quickstart.yaml")], variants={"a": {}, "b": {}}, seeds=[0])
    out = tmp_path / "out"
    fake_run(out, "s", "b", 0, 1.0, 0.5, {("t0", 0): (1.0, 1.0), ("t1", 0): (0.0, 2.0)})
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 2))  # the baseline's fit fails
    rows = compare.compare(study, out, wandb_mode="disabled")
    assert [r["status"] for r in rows] == ["failed", "ok"]
    md = (out / "results.md").read_text()
    assert "No run of the baseline `a` finished: nothing to pair with" in md and "separates nothing" not in md


def test_report_is_logged_to_the_study_wandb_group(tmp_path, monkeypatch):
    from test_wandb_tracking import offline_run

    study = Study(name="grouped", base=[str(CONFIGS / "quickstart.yaml")], variants={"a": {}, "b": {}}, seeds=[0])
    out = tmp_path / "out"
    fake_run(out, "grouped", "a", 0, 1.0, 0.5, {("t0", 0): (1.0, 1.0), ("t1", 0): (0.0, 2.0)})
    fake_run(out, "grouped", "b", 0, 1.5, 0.5, {("t0", 0): (0.0, 1.5), ("t1", 0): (0.0, 2.5)})
    monkeypatch.setattr(compare, "fit_command", no_subprocess)  # (wandb itself starts processes)
    compare.compare(study, out, wandb_mode="offline")
    run = offline_run(str(out))
    assert run["run"].run_group == "grouped" and run["run"].job_type == "study"
    assert any(f.startswith("media/images/study/curves") for f in run["files"])
    assert any(f.startswith("media/table/study/paired") for f in run["files"])


# ---------------------------------------------------------------- a real tiny study
@pytest.mark.slow
def test_tiny_study_runs_reports_a_failure_and_skips_on_rerun(tmp_path, capsys):
    """Two encodings and a broken variant, 2 seeds, a budget in tokens: the report has intervals,
    paired verdicts from every run's val_examples.csv, banded curves; a re-run skips finished runs."""
    budget = 1200
    variants = {"rope_1d": {"model.encoding": "rope_1d"}, "rope_2d": {"model.encoding": "rope_2d"}, "broken": {"model.encoding": "no_such"}}
    path = write_study(tmp_path, variants, budget={"tokens": budget}, seeds=[0, 1])
    out = tmp_path / "out"
    assert main(["--study", str(path), "--out", str(out), "--wandb_mode", "disabled"]) == 1  # one variant failed

    md = (out / "results.md").read_text()
    assert re.search(r"\| rope_1d \| ok \| 0,1 \| \d\.\d{3} ± \d\.\d{3} \[-?\d\.\d{3}, \d\.\d{3}\] \|", md), md  # mean ± std [interval]
    assert "| broken | failed: --model.encoding: 'no_such' is not one of" in md
    assert f"budget per run: tokens={budget:,}" in md and "stopped short" not in md
    with open(out / "results.csv") as f:
        rows = [r for r in csv.DictReader(f)]
    ok = [r for r in rows if r["status"] == "ok"]
    assert [(r["variant"], r["seed"]) for r in ok] == [("rope_1d", "0"), ("rope_1d", "1"), ("rope_2d", "0"), ("rope_2d", "1")]
    for r in ok:  # the token budget stopped every run, a step after it was reached at most
        assert budget <= int(r["tokens_seen"]) < budget + 1000 and float(r["val_loss"]) > 0
    assert all(r["status"] == "failed" and "no_such" in r["reason"] for r in rows if r["variant"] == "broken")

    # every run wrote its per-example rows; the paired comparison used all of them
    run = out / "runs" / "tiny" / "rope_2d" / "seed1" / "version_0"
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["config"]["study"] == "tiny" and summary["config"]["seed_everything"] == 1 and summary["config"]["max_tokens"] == budget
    examples = read_examples(run / EXAMPLES_FILE, last_only=False)
    assert len(examples) == 8 * len(summary["validations"]) == 8 * summary["steps"]  # validation every step
    with open(out / "paired.csv") as f:
        paired = {(r["variant"], r["metric"]): r for r in csv.DictReader(f)}
    loss = paired[("rope_2d", "loss")]
    assert loss["baseline"] == "rope_1d" and loss["examples"] == "16" and loss["seeds"] == "2"  # 8 examples x 2 seeds
    assert loss["verdict"] in ("better", "worse", "no detectable difference") and float(loss["lo"]) <= float(loss["difference"]) <= float(loss["hi"])
    assert paired[("rope_2d", "exact_match")]["examples"] == "4"  # n_generate 2 per run
    assert paired[("broken", "loss")]["examples"] == "0"
    assert "## Paired against `rope_1d`" in md and f"| rope_2d | 16 ({loss['tasks']}, 2); decoded 4 |" in md
    assert (out / "curves.png").stat().st_size > 10_000

    capsys.readouterr()
    assert main(["--study", str(path), "--out", str(out), "--wandb_mode", "disabled"]) == 1
    log = capsys.readouterr().out
    assert "rope_1d seed 0: already finished" in log and "rope_2d seed 1: already finished" in log
    assert "broken seed 0: running" in log  # a failed run is tried again
    assert not (out / "runs" / "tiny" / "rope_1d" / "seed0" / "version_1").exists()
