"""experiments/refiner_gain.py: the refiner's measured gain (refined vs draft, refiner alone vs base)."""

from __future__ import annotations

import json

import pytest
import torch

from gridlm.experiments import refiner_gain

TINY = ["--d_model", "16", "--n_layers", "1", "--n_heads", "2", "--max_seq_len", "320", "--quick", "--seeds", "0", "--n_fresh", "6"]


def test_gain_counts_pair_the_draft_and_the_refined_grid_of_every_example(tmp_path):
    out = tmp_path / "gain.json"
    refiner_gain.main(["gain", "--base", "pretrained:quickstart", "--minutes", "1", "--max_steps", "2", "--no_arc", "--out", str(out), *TINY])
    r = json.loads(out.read_text())
    s, rows = r["sets"]["train_families"], r["rows"]["train_families"]["refiner"]
    assert r["runs"][0]["steps"] == 2 and s["n"] == len(rows) > 0
    assert s["draft"] == sum(x["draft"] for x in rows) and s["refined"] == sum(x["refined"] for x in rows)
    assert s["refined"] - s["draft"] == s["drafts_fixed"] - s["drafts_broken"]
    paired = s["refined_minus_draft"]
    assert paired["n_examples"] == len(rows) and paired["estimate"] == pytest.approx((s["refined"] - s["draft"]) / len(rows))
    assert s["wrong_shapes_corrected"] <= s["wrong_shape_drafts"] == sum(1 - x["draft_shape_ok"] for x in rows)
    assert all(x[f"pass_{k}"] in (0, 1) for x in rows for k in (1, 2, 3))


def test_alone_pairs_the_refiner_from_an_empty_canvas_with_the_base_model(tmp_path):
    out = tmp_path / "alone.json"
    refiner_gain.main(["alone", "--minutes", "1", "--max_steps", "2", "--out", str(out), *TINY])
    r = json.loads(out.read_text())
    s = r["sets"]["train_families"]
    assert [x["model"] for x in r["runs"]] == ["base", "refiner"]
    assert s["n"] == len(r["rows"]["train_families"]["base"]) == len(r["rows"]["train_families"]["refiner"]) > 0
    assert s["refiner_minus_base"]["n_examples"] == s["n"]
    assert s["refiner_minus_base"]["estimate"] == pytest.approx((s["refiner_alone"] - s["base"]) / s["n"])


def test_bad_options_are_one_line_errors():
    with pytest.raises(SystemExit, match="--minutes must be > 0, got 0.0"):
        refiner_gain.parse(["gain", "--minutes", "0"])


def test_evaluation_restores_the_training_mode_even_on_error():
    net = torch.nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError, match="boom"), refiner_gain._evaluating(net):
        assert not net.training
        raise RuntimeError("boom")
    assert net.training
    with refiner_gain._evaluating(net.eval()):
        pass
    assert not net.training
