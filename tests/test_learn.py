"""``make learn``: the learning benchmark's quick mode end to end, its source rewriting, and the
``LearningCurve`` callback (training-time budget, curve points, resume state)."""

from __future__ import annotations

import csv
import json

import pytest

from gridlm.callbacks.learning_curve import CURVE_FILE, LearningCurve, family_of, summarize
from gridlm.experiments import learn
from gridlm.experiments.cli import cli_main

from test_cli import tiny_flags


def test_training_source_holds_the_families_out_of_the_stream():
    held = ("flip_v", "halo")
    assert learn.training_source("synthetic", held) == "synthetic:-flip_v,-halo"
    assert learn.training_source(["synthetic", "arc1"], held) == ["synthetic:-flip_v,-halo", "arc1"]
    assert learn.training_source("synthetic:-gravity", held) == "synthetic:-gravity,-flip_v,-halo"
    with pytest.raises(ValueError, match="no synthetic stream"):
        learn.training_source("arc1", held)
    with pytest.raises(ValueError, match="no synthetic stream"):
        learn.training_source(["arc1", "arc1:eval"], held)


def test_family_of_task_ids():
    assert family_of("synthetic-val-0-00003-flip_h") == "flip_h"
    assert family_of("synthetic-train-0-2-000007-rotate_90") == "rotate_90"
    assert family_of("007bbfb7") == "arc"
    rows = [dict(exact=1, loss=1.0, tokens=2), dict(exact=0, loss=4.0, tokens=6)]
    assert summarize(rows) == {"loss": 3.25, "exact_match": 0.5, "n_exact": 1, "n": 2}


def test_curve_callback_stops_on_training_time_and_records_points(tmp_path):
    flags = tiny_flags(tmp_path, steps=10_000) + [
        "--trainer.max_steps", "-1", "--trainer.limit_val_batches", "0",
        "--trainer.callbacks+=gridlm.callbacks.learning_curve.LearningCurve",
        "--trainer.callbacks.every_s", "1", "--trainer.callbacks.budget_s", "3", "--trainer.callbacks.n_examples", "4",
    ]  # fmt: skip
    cli = cli_main(["fit", *flags])
    curve = next(c for c in cli.trainer.callbacks if isinstance(c, LearningCurve))
    assert 3 <= curve.train_s < 30 and cli.trainer.global_step > 1  # stopped by the budget, not max_steps
    rows = list(csv.DictReader(open(f"{cli.trainer.log_dir}/{CURVE_FILE}")))
    assert len(rows) >= 3 and rows[0]["step"] == "0" and int(rows[-1]["step"]) == cli.trainer.global_step
    tokens = [int(r["tokens_seen"]) for r in rows]
    assert tokens == sorted(tokens) and tokens[-1] > 0 and all(int(r["n"]) == 4 for r in rows)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it learned something in 3 seconds
    state = curve.state_dict()
    again = LearningCurve(every_s=1, budget_s=3)
    again.load_state_dict(state)
    assert again.points == curve.points and again.train_s == curve.train_s and again.tokens_seen == curve.tokens_seen


@pytest.mark.parametrize("kwargs, msg", [({"every_s": 0}, "every_s"), ({"budget_s": -1}, "budget_s"), ({"n_examples": 0}, "n_examples")])
def test_curve_callback_rejects_bad_options(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        LearningCurve(**kwargs)


def test_quick_mode_writes_the_table_the_curve_and_keeps_the_ablations(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "learning.md").write_text("# Learning\n\nintro\n\n<!-- learn:begin -->\nold\n<!-- learn:end -->\n\n## Ablations\nkept\n")
    assert learn.main(["--quick", "--minutes", "0.1", "--n_fresh", "12", "--out_dir", str(tmp_path), "--root", str(tmp_path / "runs"),
                       "--data.source", "[synthetic, arc1]"]) == 0  # fmt: skip
    r = json.loads((tmp_path / "learning.json").read_text())
    assert set(r["sets"]) == {"train_families", "held_out_families", "arc1_train_test_pairs", "arc1_eval"}
    for s in r["sets"].values():
        assert s["n"] > 0 and 0 <= s["n_exact"] <= s["n"] and s["exact_match"] == s["n_exact"] / s["n"]
    held = r["sets"]["held_out_families"]["per_family"]
    assert set(held) == set(learn.HELD_OUT) and sum(b for _, b in held.values()) == r["sets"]["held_out_families"]["n"]
    assert not set(held) & set(r["sets"]["train_families"]["per_family"])  # never trained on, never in (a)
    assert r["training_source"] == ["synthetic:" + ",".join(f"-{f}" for f in learn.HELD_OUT), "arc1"]
    assert r["quick"] and r["tokens_seen"] > 0 and len(r["curve"]) >= 2 and r["machine"]["load_average_start"]
    text = (docs / "learning.md").read_text()
    assert "old" not in text and "## Ablations\nkept" in text and "intro" in text and "Quick mode" in text
    assert "| solved / total |" in text and (docs / "learning_curve.png").stat().st_size > 1000
