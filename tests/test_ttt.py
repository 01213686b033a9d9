"""Test-time training: adapts (loss falls, predictions change), restores the base weights
bitwise, works under inference mode (Lightning's predict loop), and runs through `gridlm predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gridlm.datamodules.batching import collate
from gridlm.datamodules.serialize import serialize_example
from gridlm.datamodules.tasks import Pair
from gridlm.experiments.cli import cli_main
from gridlm.modules.base_model import AutoregressiveGridModel, positions_of
from gridlm.modules.decoding import generate_grids
from gridlm.modules.transformer import Transformer, TransformerConfig
from gridlm.modules.ttt import TTTConfig, adapt, adapted
from gridlm.experiments.demo import render_prediction
from test_cli import CONFIGS, tiny_flags


def flip_demos(n: int = 3, side: int = 3, seed: int = 0) -> list[Pair]:
    """A task: flip the grid left-right."""
    rng = np.random.default_rng(seed)
    grids = [rng.integers(0, 10, (side, side + 1)) for _ in range(n)]
    return [Pair(g, g[:, ::-1].copy()) for g in grids]


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(max_seq_len=256, d_model=16, n_layers=1, n_heads=2)).eval()


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} changed"


def greedy(model: Transformer, demos: list[Pair], query: np.ndarray):
    batch = collate([serialize_example(demos, Pair(query, None), prompt_only=True)])
    (d,) = generate_grids(model, batch["tokens"], positions_of(batch), "row_major", max_side=5)
    return d


def test_adapted_trains_inside_and_restores_bitwise_after():
    model, demos = tiny_model(), flip_demos()
    before = weights(model)
    query = np.arange(12).reshape(3, 4) % 10
    base = greedy(model, demos, query)
    cfg = TTTConfig(steps=12, lr=1e-2, batch_size=2)
    with adapted(model, demos, "row_major", config=cfg, key="flip") as losses:
        assert len(losses) == 12 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])  # it learns the task's demonstrations
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
        assert changed, "no weight moved during test-time training"
        assert not model.training
        tuned = greedy(model, demos, query)
        assert tuned.tokens != base.tokens or tuned.logprob != pytest.approx(base.logprob)
    assert_bitwise_equal(weights(model), before)
    assert all(p.grad is None for p in model.parameters())  # no gradients (or optimizer) left behind
    assert greedy(model, demos, query).tokens == base.tokens


def test_restores_when_the_block_raises_and_keeps_training_mode():
    model, demos = tiny_model(), flip_demos()
    model.train()
    before = weights(model)
    with pytest.raises(RuntimeError, match="boom"):
        with adapted(model, demos, "row_major", config=TTTConfig(steps=2, lr=1e-2)):
            raise RuntimeError("boom")
    assert_bitwise_equal(weights(model), before)
    assert model.training


def test_works_under_inference_mode_like_the_predict_loop():
    model, demos = tiny_model(), flip_demos()
    before = weights(model)
    with torch.inference_mode():
        with adapted(model, demos, "hilbert", config=TTTConfig(steps=3, lr=1e-2)) as losses:
            assert len(losses) == 3 and all(np.isfinite(losses))
            greedy(model, demos, np.zeros((2, 2), dtype=int))
    assert_bitwise_equal(weights(model), before)


def test_same_task_key_adapts_identically_and_other_keys_differ():
    demos = flip_demos(4)
    runs = {}
    for key in ("a", "a", "b"):
        model = tiny_model()
        losses = adapt(model, demos, "row_major", config=TTTConfig(steps=3, lr=1e-2), key=key)
        runs.setdefault(key, []).append((losses, weights(model)))
    (l1, w1), (l2, w2) = runs["a"]
    assert l1 == l2
    assert_bitwise_equal(w1, w2)
    assert runs["b"][0][0] != l1


def test_no_leave_one_out_example_leaves_the_model_alone():
    model = tiny_model()
    before = weights(model)
    assert adapt(model, flip_demos(1), "row_major", config=TTTConfig(steps=5)) == []
    assert adapt(model, flip_demos(3), "row_major", config=TTTConfig(steps=0)) == []
    assert_bitwise_equal(weights(model), before)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"steps": -1}, "ttt_steps"), ({"lr": 0.0}, "ttt_lr"), ({"batch_size": 0}, "ttt_batch_size"), ({"target_policy": "x"}, "target_policy")],
    ids=["steps", "lr", "batch_size", "policy"],
)
def test_config_errors_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TTTConfig(**kwargs)


def test_predict_step_adapts_per_task_and_restores(monkeypatch):
    model = AutoregressiveGridModel(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, ttt_steps=2, ttt_lr=1e-2).eval()
    before = weights(model)
    seen = []
    real = adapted

    def spy(m, demos, order, row_end, config, key):
        seen.append((key, len(demos)))
        return real(m, demos, order, row_end, config, key)

    monkeypatch.setattr("gridlm.modules.base_model.adapted", spy)
    monkeypatch.setattr(model, "decode_batch", lambda batch, rows: [greedy(model.model, flip_demos(), np.zeros((2, 2), int)) for _ in rows])
    seqs = []
    for i, (tid, n) in enumerate([("a", 3), ("a", 3), ("b", 2)]):
        meta = {"index": i, "task_id": tid, "query": i % 2, "augmentation": (0, tuple(range(10)))}
        seqs.append(serialize_example(flip_demos(n, seed=i), Pair(np.zeros((2, 2), int), None), prompt_only=True, meta=meta))
    rows = model.predict_step(collate(seqs), 0)
    assert seen == [("a", 3), ("b", 2)]  # once per task of the batch, with the prompt's demonstrations
    assert [r["task_id"] for r in rows] == ["a", "a", "b"] and all(len(r["attempts"]) == 1 for r in rows)
    assert_bitwise_equal(weights(model), before)


@pytest.mark.slow
def test_gridlm_predict_with_voting_and_ttt_writes_a_submission_and_demo_draws_it(tmp_path):
    fit = cli_main(["fit", *tiny_flags(tmp_path, steps=2)])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    out = tmp_path / "sub.json"
    extra = {"--model.n_votes": "2", "--model.ttt_steps": "2", "--data.max_tasks": "3", "--data.synthetic_max_side": "3"}
    pred = cli_main(["predict", *tiny_flags(tmp_path, **extra), "--ckpt_path", ckpt, "--submission.out", str(out)])
    # the predict options win over the checkpoint's hyperparameters (Lightning overlays those)
    assert (pred.model.voting.n_votes, pred.model.ttt.steps) == (2, 2)
    sub = json.loads(out.read_text())
    assert len(sub) == 3 and all({"attempt_1", "attempt_2"} <= set(e) for v in sub.values() for e in v)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert_bitwise_equal({k: v.cpu() for k, v in pred.model.state_dict().items()}, saved)  # TTT restored the base weights
    (tmp_path / "demo").mkdir()  # the demo draws into its run folder, which exists (predict --out checks its folder first)
    picture, _ = render_prediction(["--config", str(CONFIGS / "quickstart.yaml")], ckpt, tmp_path / "demo", tiny_flags(tmp_path, **{"--data.max_tasks": "2"})[2:])
    assert picture == tmp_path / "demo" / "demo_task.png" and picture.stat().st_size > 1000  # make demo's picture
