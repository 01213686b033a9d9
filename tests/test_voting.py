"""Augmentation voting: every augmentation is undone exactly, ranking by votes then likelihood,
equal-length batching, two distinct attempts from predict, val/pass1 and val/pass2 logged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gridlm.modules.voting as voting
from gridlm.datamodules.augment import Augmentation
from gridlm.datamodules.batching import collate
from gridlm.datamodules.serialize import serialize_example
from gridlm.datamodules.tasks import Pair
from gridlm.experiments.cli import cli_main, write_submission
from gridlm.modules.base_model import AutoregressiveGridModel
from gridlm.modules.decoding import Decoded
from gridlm.modules.inference import DecodeEngine, EngineConfig
from gridlm.modules.transformer import Transformer, TransformerConfig
from gridlm.modules.voting import VotingConfig, prompt_pairs, rank_candidates, vote
from stub_models import Teacher, TeacherTransformer
from test_cli import read_metrics, tiny_flags

RNG = np.random.default_rng(7)
CONTEXT = [Pair(RNG.integers(0, 10, (3, 4)), RNG.integers(0, 10, (2, 5))) for _ in range(2)]
QUERY = RNG.integers(0, 10, (3, 4))  # asymmetric: each augmentation gives a different grid
TARGET = RNG.integers(0, 10, (2, 5))  # the right answer, in the original frame
AUGS = VotingConfig(n_votes=8).augmentations()


def fake_generate(right: set[Augmentation], wrong: str = "fail", logprob=lambda aug: -1.0):
    """A stand-in for ``DecodeEngine.generate``: reads the (augmented) query input back from each prompt,
    finds which augmentation of ``QUERY`` it is, and answers ``aug.apply(TARGET)`` (correct in the
    augmented frame) for augmentations in ``right``. Otherwise: no grid (``"fail"``) or a copy
    of the augmented input (``"copy"``: consistently wrong, the same grid once mapped back)."""
    calls = []

    def generate(self, model, tokens, positions, lengths, order, row_end=False, **_):
        calls.append(tuple(tokens.shape))
        out = []
        for row, n in zip(tokens, lengths):
            _, q = prompt_pairs(row[:n], order, row_end)
            (aug,) = [a for a in AUGS if a.apply(QUERY).shape == q.shape and (a.apply(QUERY) == q).all()]
            if aug in right:
                grid = aug.apply(TARGET)
            else:
                grid = q.copy() if wrong == "copy" else None
            n = 0 if grid is None else grid.size + 3
            out.append(Decoded(grid, None if grid is not None else "fake failure", logprob(aug) * max(n, 1), n, []))
        return out

    generate.calls = calls
    return generate


def tiny_model(max_seq_len: int = 256) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(max_seq_len=max_seq_len, d_model=16, n_layers=1, n_heads=2)).eval()


def test_augmentations_identity_first_distinct_and_keep_zero():
    augs = VotingConfig(n_votes=8).augmentations()
    assert augs[0].is_identity and len(set(augs)) == 8
    assert [a.dihedral for a in augs] == list(range(8))
    assert all(a.colour_perm[0] == 0 for a in augs)
    assert any(a.colour_perm != tuple(range(10)) for a in augs[1:])
    free = VotingConfig(n_votes=30, keep_zero=False, seed=3).augmentations()
    assert any(a.colour_perm[0] != 0 for a in free)
    assert VotingConfig(n_votes=12, colours=False).augmentations() == [Augmentation(d) for d in range(8)]
    assert VotingConfig(n_votes=5, dihedral=False, colours=False).augmentations() == [Augmentation()]
    with pytest.raises(ValueError, match="n_votes"):
        VotingConfig(n_votes=0)


def test_augmented_queries_are_distinct():  # precondition of the fake model
    assert len({(a.apply(QUERY).shape, a.apply(QUERY).tobytes()) for a in AUGS}) == len(AUGS)


@pytest.mark.parametrize("k", range(8), ids=[a.name.split("+")[0] for a in AUGS])
def test_right_under_one_augmentation_gives_the_unaugmented_answer(monkeypatch, k):
    monkeypatch.setattr(DecodeEngine, "generate", fake_generate({AUGS[k]}))
    (res,) = vote(tiny_model(), [(CONTEXT, QUERY)], "row_major", config=VotingConfig(n_votes=8))
    assert len(res.candidates) == 1 and res.candidates[0].votes == 1
    np.testing.assert_array_equal(res.candidates[0].grid, TARGET)
    assert res.candidates[0].augmentations == [AUGS[k].name]


@pytest.mark.parametrize("order,row_end", [("col_major", False), ("hilbert", False), ("snake", True)])
def test_inversion_with_other_orders(monkeypatch, order, row_end):
    monkeypatch.setattr(DecodeEngine, "generate", fake_generate(set(AUGS[3:6]), wrong="copy"))
    (res,) = vote(tiny_model(), [(CONTEXT, QUERY)], order, row_end, VotingConfig(n_votes=8))
    # 5 consistently wrong votes (the input copied back) beat 3 right ones; attempt 2 is right
    assert [c.votes for c in res.candidates] == [5, 3]
    np.testing.assert_array_equal(res.attempts()[0], QUERY)
    np.testing.assert_array_equal(res.attempts()[1], TARGET)


def test_ties_are_broken_by_mean_loglikelihood(monkeypatch):
    right = set(AUGS[:4])
    fake = fake_generate(right, wrong="copy", logprob=lambda a: -0.1 if a in right else -2.0)
    monkeypatch.setattr(DecodeEngine, "generate", fake)
    (res,) = vote(tiny_model(), [(CONTEXT, QUERY)], "row_major", config=VotingConfig(n_votes=8))
    assert [c.votes for c in res.candidates] == [4, 4]
    np.testing.assert_array_equal(res.candidates[0].grid, TARGET)
    assert res.candidates[0].mean_logprob == pytest.approx(-0.1)
    fake = fake_generate(right, wrong="copy", logprob=lambda a: -3.0 if a in right else -2.0)
    monkeypatch.setattr(DecodeEngine, "generate", fake)
    (res,) = vote(tiny_model(), [(CONTEXT, QUERY)], "row_major", config=VotingConfig(n_votes=8))
    np.testing.assert_array_equal(res.candidates[0].grid, QUERY)


def test_rank_candidates_by_hand():
    a, b, c = np.zeros((2, 2), int), np.ones((2, 2), int), np.zeros((1, 4), int)  # c: same values, other shape
    preds = [(a, -1.0, "x"), (b, -0.5, "y"), (a, -3.0, "z"), (c, -0.1, "w"), (None, 0.0, "v"), (b, -0.7, "u")]
    ranked = rank_candidates(preds)
    assert [(r.votes, round(r.mean_logprob, 3)) for r in ranked] == [(2, -0.6), (2, -2.0), (1, -0.1)]
    np.testing.assert_array_equal(ranked[0].grid, b)
    assert ranked[2].grid.shape == (1, 4)
    assert rank_candidates([(None, 0.0, "x")]) == []


def test_real_model_decodes_all_votes_of_all_prompts_in_one_call(monkeypatch):
    real = DecodeEngine.generate
    calls = []

    def counting(self, model, tokens, positions, lengths, *args, **kwargs):
        calls.append((tuple(tokens.shape), list(map(int, lengths))))
        return real(self, model, tokens, positions, lengths, *args, max_side=4, **kwargs)  # small grids: a fast test

    monkeypatch.setattr(DecodeEngine, "generate", counting)
    prompts = [(CONTEXT, QUERY), (CONTEXT[:1], QUERY[:2])]
    res = vote(tiny_model(), prompts, "row_major", config=VotingConfig(n_votes=8))
    (((rows, _), lengths),) = calls  # one call: 16 prompts of two lengths
    assert rows == 16 and len(set(lengths)) == 2
    for r in res:
        assert [a for a, _ in r.decoded] == AUGS
        assert sum(c.votes for c in r.candidates) == 8
        assert all(1 <= min(g.shape) <= max(g.shape) <= 4 for g in r.attempts())


def test_row_end_transposes_change_lengths_and_still_vote(monkeypatch):
    fake = fake_generate(set(AUGS), wrong="fail")
    monkeypatch.setattr(DecodeEngine, "generate", fake)
    (res,) = vote(tiny_model(), [(CONTEXT, QUERY)], "row_major", True, VotingConfig(n_votes=8))
    assert len(fake.calls) == 1 and fake.calls[0][0] == 8  # two prompt lengths, one call
    assert res.candidates[0].votes == 8
    np.testing.assert_array_equal(res.candidates[0].grid, TARGET)


def test_prompts_too_long_cast_no_vote():
    length = len(serialize_example(CONTEXT, Pair(QUERY, None), prompt_only=True))
    (res,) = vote(tiny_model(max_seq_len=length), [(CONTEXT, QUERY)], "row_major", config=VotingConfig(n_votes=4))
    assert res.candidates == [] and res.decoded == [] and "max_seq_len" in res.reason


def predict_batch(aug: Augmentation = Augmentation()):
    meta = {"index": 0, "task_id": "t0", "query": 0, "augmentation": (aug.dihedral, aug.colour_perm), "target": None}
    seq = serialize_example([aug.apply_pair(p) for p in CONTEXT], Pair(aug.apply(QUERY), None), prompt_only=True, meta=meta)
    return collate([seq])


def test_predict_with_voting_writes_two_different_attempts(monkeypatch, tmp_path):
    monkeypatch.setattr(DecodeEngine, "generate", fake_generate(set(AUGS[:3]), wrong="copy"))
    model = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, n_votes=8).eval()
    (row,) = model.predict_step(predict_batch(), 0)
    assert row["task_id"] == "t0" and row["reason"] is None
    np.testing.assert_array_equal(row["attempts"][0], QUERY)  # 5 votes
    np.testing.assert_array_equal(row["attempts"][1], TARGET)  # 3 votes
    sub = write_submission([row], str(tmp_path / "sub.json"))
    entry = json.loads((tmp_path / "sub.json").read_text())["t0"][0]
    assert entry == sub["t0"][0] and entry["attempt_1"] != entry["attempt_2"]
    assert entry["attempt_2"] == TARGET.tolist()


def test_predict_maps_back_the_dataset_augmentation(monkeypatch):
    # the prompt itself was augmented by the dataset (meta["augmentation"]): attempts come back un-augmented
    outer = Augmentation(5, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9))
    model = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, n_votes=1)
    monkeypatch.setattr(model, "decode_batch", lambda batch, rows: [Decoded(outer.apply(TARGET), None, -1.0, 13, [])])
    (row,) = model.predict_step(predict_batch(outer), 0)
    assert row["attempts"] == [TARGET.tolist()]


def test_validation_step_updates_pass1_pass2_and_greedy_exact_match(monkeypatch):
    monkeypatch.setattr(DecodeEngine, "generate", fake_generate(set(AUGS[1:4]), wrong="copy"))
    model = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, n_votes=8, n_generate=4).eval()
    meta = {"index": 0, "task_id": "t0", "query": 0, "augmentation": (0, tuple(range(10))), "target": TARGET}
    batch = collate([serialize_example(CONTEXT, Pair(QUERY, TARGET), meta=meta)])
    model.validation_step(batch, 0)
    m = model.stage_metrics["val"]
    # votes: the input copied (5, incl. the identity) beat the target (3): pass1 0, pass2 1; greedy is wrong
    assert (float(m["pass1"].compute()), float(m["pass2"].compute()), float(m["exact_match"].compute())) == (0.0, 1.0, 0.0)


@pytest.mark.slow
def test_fit_with_voting_logs_pass1_and_pass2(tmp_path):
    cli = cli_main(["fit", *tiny_flags(tmp_path, steps=2, **{"--model.n_votes": "4"})])
    metrics = read_metrics(cli.trainer.log_dir)
    for key in ("val/exact_match", "val/pass1", "val/pass2"):
        assert key in metrics, f"{key} missing: {sorted(metrics)}"
    assert all(0.0 <= p1 <= p2 <= 1.0 for p1, p2 in zip(metrics["val/pass1"], metrics["val/pass2"]))


def test_score_max_tasks_scores_the_first_tasks_only(tmp_path, capsys):
    from gridlm.experiments.score import main as score_main

    root = tmp_path / "tasks"
    root.mkdir()
    for tid in ("a1", "b2", "c3"):
        task = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]], "output": [[2]]}]}
        (root / f"{tid}.json").write_text(json.dumps(task))
    sub = tmp_path / "sub.json"
    sub.write_text(json.dumps({"a1": [{"attempt_1": [[0]], "attempt_2": [[2]]}]}))
    assert score_main(["--submission", str(sub), "--source", str(root), "--max-tasks", "1"]) == 0
    assert "pass@2 score 1.0000 (1.0 / 1 tasks" in capsys.readouterr().out
    assert score_main(["--submission", str(sub), "--source", str(root)]) == 0
    assert "(1.0 / 3 tasks" in capsys.readouterr().out
    assert score_main(["--submission", str(sub), "--source", str(root), "--max-tasks", "0"]) == 2
    assert "--max-tasks must be >= 1" in capsys.readouterr().err


def test_every_prompt_gets_its_own_votes_from_the_real_decoder():
    """The real decoder behind a teacher that copies the (augmented) query input, which every
    augmentation maps back to the query: each prompt (two of one length, one longer) wins with
    its own query input under all its votes, whatever the batching."""
    queries = [QUERY, (QUERY + 1) % 10, RNG.integers(0, 10, (4, 5))]
    prompts = [(CONTEXT, q) for q in queries]
    model = TeacherTransformer(Teacher(lambda q: q, "row_major"), max_seq_len=256)
    for max_rows in (64, 3):  # all 12 augmented prompts in one engine batch, or chunks of 3
        engine = DecodeEngine(EngineConfig(compile="never", max_rows=max_rows))
        results = vote(model, prompts, "row_major", config=VotingConfig(n_votes=4), engine=engine)
        assert len(results) == 3
        for res, q in zip(results, queries):
            assert [c.votes for c in res.candidates] == [4]
            np.testing.assert_array_equal(res.attempts()[0], q)
