"""The refinement network: draft sequences, corruptions, passes, draft caching, CLI, and the gain.

The output canvas, recursion with deep supervision, halting and the recursion gain are in
``tests/test_refiner_canvas.py``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from gridlm.datamodules.datamodule import GridDataModule
from gridlm.datamodules.drafts import SAME_SHAPE_CORRUPTIONS, corrupt, draft_batch
from gridlm.datamodules.serialize import serialize_example
from gridlm.datamodules.tasks import Pair
from gridlm.experiments.cli import cli_main, main
from gridlm.modules.base_model import AutoregressiveGridModel
from gridlm.modules.refiner import RefinementNetwork
from test_cli import read_metrics, tiny_flags

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = dict(d_model=16, n_layers=1, n_heads=2, max_seq_len=256)


def _datamodule(**kw) -> GridDataModule:
    args = dict(source="synthetic:colour_map", n_synthetic=6, synthetic_max_side=4, max_seq_len=256, batch_size=4, max_val_examples=6)
    dm = GridDataModule(**{**args, **kw})
    dm.setup("fit")
    return dm


def _save_base(path: Path, **kw) -> Path:
    """An untrained tiny base model saved as a Lightning checkpoint."""
    base = AutoregressiveGridModel(**{**TINY, **kw})
    torch.save({"state_dict": base.state_dict(), "hyper_parameters": dict(base.hparams), "pytorch-lightning_version": L.__version__}, path)
    return path


class _FakeDecoder:
    """Stands in for the base model: drafts are the targets with one cell changed; counts rows."""

    def __init__(self) -> None:
        self.rows = 0
        self.device = torch.device("cpu")

    def decode_batch(self, batch, rows):
        from gridlm.modules.decoding import Decoded

        self.rows += len(rows)
        out = []
        for r in rows:
            g = np.array(batch["meta"][r]["target"])
            g[0, 0] = (g[0, 0] + 1) % 10
            out.append(Decoded(g, None, 0.0, 0, []))
        return out


def _refiner_with_fake_base(**kw) -> tuple[RefinementNetwork, _FakeDecoder]:
    ratio = kw.pop("draft_ratio", 0.0)
    model = RefinementNetwork(**{**TINY, "draft_ratio": 0.0, **kw})
    model.draft_ratio = ratio  # set after construction: there is no checkpoint behind the fake base
    fake = _FakeDecoder()
    object.__setattr__(model, "_base", fake)
    return model, fake


# ---------------------------------------------------------------- drafts and corruptions
@pytest.mark.parametrize("order,row_end", [("row_major", False), ("snake", True), ("hilbert", False)], ids=str)
def test_draft_batch_equals_the_serializer_with_the_draft_as_query_output(order, row_end):
    dm = _datamodule(order=order, row_end=row_end)
    ds = dm.datasets["val"]
    batch = next(iter(dm.val_dataloader()))
    rng = np.random.default_rng(0)
    drafts = [rng.integers(0, 10, size=(int(rng.integers(1, 6)), int(rng.integers(1, 6)))) for _ in batch["meta"]]
    inp = draft_batch(batch, drafts, order, row_end)
    for b, (meta, draft) in enumerate(zip(batch["meta"], drafts)):
        spec = ds.specs[meta["index"]]
        task = ds.tasks[spec.task]
        ref = serialize_example([task.train[j] for j in spec.context], Pair(task.test[spec.query].input, draft), order, row_end=row_end)
        n = len(ref)
        assert int(inp["lengths"][b]) == n
        for f in ("tokens", "row", "col", "grid", "role"):
            assert inp[f][b, :n].tolist() == getattr(ref, f).tolist(), f
        cells = inp["cells"][b, :n].numpy()
        assert cells.sum() == draft.size and (ref.row[cells] >= 0).all() and (ref.grid[cells] == ref.grid[-1]).all()
        assert (inp["tokens"][b, n:] == 10).all()  # PAD


@pytest.mark.parametrize("kind", SAME_SHAPE_CORRUPTIONS)
def test_corrupt_always_changes_the_grid_and_keeps_its_shape(kind):
    rng = np.random.default_rng(0)
    for _ in range(200):
        g = rng.integers(0, 3, size=(int(rng.integers(1, 6)), int(rng.integers(1, 6))))
        c = corrupt(g, rng, kinds=[kind])
        assert c.shape == g.shape and not np.array_equal(c, g) and c.min() >= 0 and c.max() <= 9


@pytest.mark.parametrize("kind", ["crop", "extend"])
def test_shape_corruptions_drop_or_repeat_one_row_or_column(kind):
    rng = np.random.default_rng(0)
    for _ in range(200):
        g = rng.integers(0, 10, size=(int(rng.integers(1, 6)), int(rng.integers(1, 6))))
        c = corrupt(g, rng, kinds=[kind])
        dh, dw = c.shape[0] - g.shape[0], c.shape[1] - g.shape[1]
        grew = kind == "extend" or g.shape == (1, 1)  # a 1x1 grid cannot be cropped
        assert sorted((abs(dh), abs(dw))) == [0, 1] and (dh + dw > 0) == grew
        assert set(np.unique(c)) <= set(np.unique(g))  # rows/columns are removed or repeated, never invented
    full = np.zeros((30, 30), dtype=int)
    assert max(corrupt(full, rng, kinds=["extend"]).shape) == 30  # never beyond 30x30


def test_corrupt_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown corruption 'blur'"):
        corrupt(np.zeros((2, 2), dtype=int), np.random.default_rng(0), kinds=["blur"])


# ---------------------------------------------------------------- the module
def test_zero_passes_return_the_draft_and_passes_stop_when_nothing_changes():
    dm = _datamodule()
    batch = next(iter(dm.val_dataloader()))
    model = RefinementNetwork(**TINY, draft_ratio=0.0, n_passes=0, halt_threshold=None).eval()
    drafts = model.eval_drafts(batch, "val")
    out = model.refine(batch, drafts)
    assert all(np.array_equal(a, b) for a, b in zip(out, drafts))
    calls = []
    original = model.forward_pass
    model.forward_pass = lambda inp, z: calls.append(inp["tokens"].shape[0]) or original(inp, z)
    model.refine(batch, drafts, n_passes=1)
    assert len(calls) == 1
    calls.clear()
    per_pass, _, used = model.refine_passes(batch, drafts, n_passes=50)
    assert len(calls) < 50, "refinement must stop once a pass changes nothing"
    assert len(per_pass) == 50 and max(used) == len(calls)
    for i, n in enumerate(used):  # a row's last pass changed nothing: every later grid is the same
        assert all(np.array_equal(per_pass[k][i], per_pass[n - 1][i]) for k in range(n, 50) if per_pass[k][i] is not None)


def test_a_stream_gets_new_drafts_for_the_new_tasks_of_each_epoch():
    """Index i of a synthetic stream is another task every epoch: an un-augmented draft cached in
    epoch 0 must not be reused for epoch 1's task at the same index."""
    dm = _datamodule(augment=False, synthetic_epoch_size=8)
    model, fake = _refiner_with_fake_base(draft_ratio=1.0)
    loader = dm.train_dataloader()
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        model.on_train_epoch_start()
        for batch in loader:
            drafts, counts = model.training_drafts(batch)
            assert counts["base"] == len(drafts) and counts["wrong_shape"] == 0
            assert all(np.shape(d) == np.shape(m["target"]) for d, m in zip(drafts, batch["meta"]))
    assert fake.rows == 16  # every task of both epochs decoded once


def test_panel_grids_show_input_target_draft_and_refined():
    """What WandbTracking draws for a refiner run (it drew nothing: it asked for decode_batch)."""
    from gridlm.experiments.show import grids_to_image

    batch = next(iter(_datamodule().val_dataloader()))
    model = RefinementNetwork(**TINY, draft_ratio=0.0, corruptions=["flip"]).eval()
    panels = model.panel_grids(batch, [0, 2])
    assert len(panels) == 2
    for (grids, caption), r in zip(panels, [0, 2]):
        meta = batch["meta"][r]
        assert [label for label, _ in grids] == ["input", "target", "draft", "refined"]
        np.testing.assert_array_equal(grids[1][1], meta["target"])
        assert grids[2][1].shape == np.shape(meta["target"])
        assert grids[3][1] is None or grids[3][1].ndim == 2  # the refined grid may have any shape
        assert caption.startswith(f"{meta['task_id']} test {meta['query']}: refined ")
        image = grids_to_image(grids)  # (H, W, 3)
        assert image.shape[1] == 4 * image.shape[0] and image.shape[2] == 3


def test_each_draft_is_decoded_once_per_epoch():
    dm = _datamodule(augment=True)
    model, fake = _refiner_with_fake_base(draft_ratio=1.0)
    val = list(dm.val_dataloader())
    for _ in range(3):  # three validations: the frozen base drafts every validation example once
        for batch in val:
            model.eval_drafts(batch, "val")
    n_val = len(dm.datasets["val"])
    assert fake.rows == n_val
    train = list(dm.train_dataloader())
    for _ in range(2):  # the same epoch seen twice (e.g. a retried step): no new decodes
        for batch in train:
            drafts, counts = model.training_drafts(batch)
            assert counts["base"] == len(drafts) and counts["wrong_shape"] == 0
    assert fake.rows == n_val + len(dm.datasets["train"])
    model.on_train_epoch_start()  # a new epoch: augmented training drafts are dropped, validation drafts kept
    for batch in val:
        model.eval_drafts(batch, "val")
    assert fake.rows == n_val + len(dm.datasets["train"])
    assert all(k[0] == "val" or k[-1][0] == 0 for k in model.draft_cache)


def test_training_keeps_wrong_shape_and_unfinished_base_drafts_for_the_canvas():
    dm = _datamodule()
    model, fake = _refiner_with_fake_base(draft_ratio=1.0)
    batch = next(iter(dm.train_dataloader()))
    fake.decode_batch = lambda b, rows, _d=fake.decode_batch: [
        type(d)(np.zeros((1, 1), dtype=np.int64) if i % 2 else None, None if i % 2 else "unfinished", 0.0, 0, [])
        for i, d in enumerate(_d(b, rows))
    ]  # every base draft has the wrong shape or did not finish
    drafts, counts = model.training_drafts(batch)
    assert counts["base"] == counts["wrong_shape"] == fake.rows == len(drafts)
    assert [d is None for d in drafts] == [i % 2 == 0 for i in range(len(drafts))]
    losses, _ = model.pass_losses(batch, drafts, [np.asarray(m["target"]) for m in batch["meta"]])
    assert len(losses) == model.train_passes and all(torch.isfinite(x) for x in losses)


def test_the_draft_mix_follows_the_configured_ratios():
    dm = _datamodule(n_synthetic=40, max_val_examples=2)
    model, _ = _refiner_with_fake_base(draft_ratio=0.3, empty_ratio=0.5)
    counts = {"base": 0, "corrupt": 0, "empty": 0}
    for batch in dm.train_dataloader():
        drafts, c = model.training_drafts(batch)
        for k in counts:
            counts[k] += c[k]
        for d, m in zip(drafts, batch["meta"]):
            assert d is None or d.ndim == 2
    n = sum(counts.values())
    assert n >= 30 and all(counts.values()), counts
    assert abs(counts["empty"] / n - 0.5) < 0.25 and abs(counts["base"] / n - 0.3) < 0.25, counts
    with pytest.raises(ValueError, match=r"model.draft_ratio \+ model.empty_ratio must be <= 1"):
        RefinementNetwork(**TINY, draft_ratio=0.6, empty_ratio=0.6)


def test_missing_base_checkpoint_is_one_error_naming_option_and_path(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"model.base_checkpoint: no such file .*nope.ckpt"):
        RefinementNetwork(**TINY, base_checkpoint=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ValueError, match="model.base_checkpoint is required when model.draft_ratio > 0"):
        RefinementNetwork(**TINY, draft_ratio=0.5)
    code = main(["fit", "--config", str(CONFIGS / "refiner.yaml"), "--model.base_checkpoint", str(tmp_path / "nope.ckpt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.base_checkpoint" in err[0] and "nope.ckpt" in err[0], err


def test_a_refiner_checkpoint_is_not_accepted_as_the_base(tmp_path):
    refiner = RefinementNetwork(**TINY, draft_ratio=0.0)
    path = tmp_path / "refiner.ckpt"
    torch.save({"state_dict": refiner.state_dict(), "hyper_parameters": dict(refiner.hparams), "pytorch-lightning_version": L.__version__}, path)
    with pytest.raises(ValueError, match=r"model.base_checkpoint: .*refiner.ckpt is a RefinementNetwork checkpoint"):
        RefinementNetwork(**TINY, base_checkpoint=str(path))


@pytest.mark.parametrize("content", [b"not a checkpoint", None], ids=["garbage", "no-hparams"])
def test_a_base_checkpoint_that_is_not_a_gridlm_checkpoint_is_one_line(tmp_path, content):
    path = tmp_path / "x.ckpt"
    if content is None:
        torch.save({"state_dict": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"^model.base_checkpoint: .*x.ckpt") as err:
        RefinementNetwork(**TINY, base_checkpoint=str(path))
    assert "\n" not in str(err.value)


def test_base_checkpoint_must_match_the_data_order(tmp_path):
    path = _save_base(tmp_path / "base.ckpt", order="snake")
    with pytest.raises(ValueError, match="order='snake'.*order='row_major'"):
        RefinementNetwork(**TINY, base_checkpoint=str(path))


def test_refiner_config_reuses_the_quickstart_data_block():
    refiner = yaml.safe_load((CONFIGS / "refiner.yaml").read_text())
    quick = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
    assert refiner["data"] == quick["data"]
    assert refiner["model"]["class_path"] == "gridlm.modules.refiner.RefinementNetwork"


# ---------------------------------------------------------------- the real CLI
def refiner_flags(tmp_path: Path, base_ckpt: str, steps: int, **extra: str) -> list[str]:
    flags = tiny_flags(tmp_path, steps=steps, **extra)
    flags[flags.index("--config") + 1] = str(CONFIGS / "refiner.yaml")
    i = flags.index("--model.n_generate")
    del flags[i : i + 2]  # a base-model option
    return [*flags, "--model.base_checkpoint", base_ckpt]


@pytest.mark.slow  # the untrained base decodes grids up to the sequence limit (~1-4 min on 2 busy cores)
def test_cli_fit_validate_predict_with_an_untrained_base(tmp_path):
    base = str(_save_base(tmp_path / "base.ckpt", max_seq_len=512))
    extra = {"--data.synthetic_max_side": "3", "--data.max_val_examples": "4", "--model.draft_ratio": "0.0"}
    fit = cli_main(["fit", *refiner_flags(tmp_path, base, steps=2, **extra)])
    metrics = read_metrics(fit.trainer.log_dir)
    keys = ("train/loss", "train/loss_pass_1", "val/loss", "val/exact_match_draft", "val/exact_match_pass_1", "val/exact_match_refined",
            "val/cells_fixed", "val/cells_broken", "val/wrong_shape_drafts", "val/wrong_shape_refined", "val/shapes_fixed")  # fmt: skip
    for key in keys:
        assert key in metrics, key
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    assert not any(k.startswith("_base") for k in torch.load(ckpt, weights_only=True)["state_dict"])
    val = cli_main(["validate", *refiner_flags(tmp_path, base, steps=2, **extra), "--ckpt_path", ckpt, "--model.n_passes", "0"])
    got = {k: float(v) for k, v in val.trainer.callback_metrics.items()}
    assert got["val/exact_match_refined"] == got["val/exact_match_draft"]
    assert got["val/cells_fixed"] == got["val/cells_broken"] == 0.0
    out = tmp_path / "sub.json"
    cli_main(["predict", *refiner_flags(tmp_path, base, steps=2, **extra), "--ckpt_path", ckpt, "--out", str(out)])
    assert out.exists()


# ---------------------------------------------------------------- the gain, measured
def _trainer(root: Path, **kw) -> L.Trainer:
    from gridlm.callbacks.schedule_free import ScheduleFreeMode

    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, callbacks=[ScheduleFreeMode()], default_root_dir=root,
                     **kw)  # fmt: skip


@pytest.mark.slow  # two real tiny trainings, ~15 s on 2 idle cores
def test_a_trained_refiner_raises_exact_match_above_the_base_drafts(tmp_path):
    """flip_h on 2x2 grids, no augmentation: a base model trained for 300 steps gets every shape
    right and about a third of the grids (measured: 0.28 of 64); a refiner trained for 300 steps
    on half base drafts, half corrupted targets lifts exact match on the same 64 validation pairs
    (measured: 0.70), fixing far more cells than it breaks."""
    L.seed_everything(0)
    # max_seq_len 49 = BOS + 3 pairs of 2x2 grids: validation keeps 2 of the 3 demonstrations, as
    # leave-one-out training does, so the base model never decodes at positions it was not trained on
    # (with the 3rd demonstration its rope_1d positions extrapolate and every draft shape was wrong)
    data = dict(source="synthetic_fixed:flip_h", n_synthetic=64, synthetic_max_side=2, max_seq_len=49, batch_size=8,
                max_val_examples=64, augment=False)  # fmt: skip
    arch = dict(d_model=32, n_layers=2, n_heads=2, max_seq_len=49, encoding=["rope_1d", "onehot_2d"])
    base = AutoregressiveGridModel(**arch, n_generate=0)
    trainer = _trainer(tmp_path, max_steps=300, limit_val_batches=0)
    trainer.fit(base, GridDataModule(**data))
    ckpt = tmp_path / "base.ckpt"
    trainer.save_checkpoint(ckpt)  # a real Lightning checkpoint, schedule-free averaged weights

    refiner = RefinementNetwork(**arch, base_checkpoint=str(ckpt), draft_ratio=0.5, n_passes=3)
    dm = GridDataModule(**data)
    _trainer(tmp_path, max_steps=300, limit_val_batches=0).fit(refiner, dm)
    decoded_in_training = refiner.n_decoded
    assert 0 < decoded_in_training <= len(dm.datasets["train"])  # one epoch of un-augmented examples at most once each
    (got,) = _trainer(tmp_path).validate(refiner, dm, verbose=False)
    assert refiner.n_decoded - decoded_in_training == len(dm.datasets["val"]) == 64

    assert got["val/wrong_shape_drafts"] == 0
    assert 0.05 <= got["val/exact_match_draft"] <= 0.6, "the base model must make some, not only, cell errors"
    assert got["val/exact_match_refined"] >= got["val/exact_match_draft"] + 0.15, got
    assert got["val/cells_fixed"] >= 3 * max(1.0, got["val/cells_broken"]), got
