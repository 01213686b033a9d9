"""GridDataModule: leave-one-out examples, no test-output leakage, long tasks, augmentation, batches."""

from __future__ import annotations

import numpy as np
import pytest

from gridlm.datamodules.augment import Augmentation
from gridlm.datamodules.datamodule import GridDataModule, build_specs
from gridlm.datamodules.serialize import deserialize
from gridlm.datamodules.tasks import Pair, Task
from gridlm.datamodules.tokens import BOS, PAD, ROLE_TEST_OUTPUT, VOCAB_SIZE


def grid(h, w, value):
    return np.full((h, w), value, dtype=np.int64)


def make_task(task_id="t", n_train=3, side=3, test_side=3):
    train = [Pair(grid(side, side, 1 + i), grid(side, side, 5 + i % 4)) for i in range(n_train)]
    test = [Pair(grid(test_side, test_side, 4), grid(test_side, test_side, 9))]
    return Task(task_id, train, test, "unit")


def test_training_examples_are_leave_one_out():
    specs, lengths, stats = build_specs([make_task(n_train=4)], "train", max_seq_len=10_000)
    assert [s.query for s in specs] == [0, 1, 2, 3]
    for s in specs:
        assert s.split == "train" and s.query not in s.context and len(s.context) == 3
    assert stats == {"examples": 4, "shortened": 0, "dropped": 0}


def test_long_examples_lose_demonstrations_before_being_dropped():
    task = Task(
        "long",
        [Pair(grid(10, 10, 1), grid(10, 10, 2)), Pair(grid(2, 2, 1), grid(2, 2, 2)), Pair(grid(3, 3, 3), grid(3, 3, 4))],
        [Pair(grid(2, 2, 1), grid(2, 2, 2))],
    )
    specs, lengths, stats = build_specs([task], "test", max_seq_len=60)
    assert stats == {"examples": 1, "shortened": 1, "dropped": 0}
    assert specs[0].context == (1, 2)  # the 10x10 demonstration went first
    assert all(n <= 60 for n in lengths)
    _, _, stats = build_specs([task], "test", max_seq_len=20)
    assert stats["dropped"] == 1 and stats["examples"] == 0


def test_no_test_output_in_any_training_sequence():
    """Every training sequence, deserialized, contains no grid of any test output (arc1 tasks whose
    test output also appears among their own demonstrations are excluded from the check)."""
    dm = GridDataModule(source="arc1", max_seq_len=1024, max_tasks=60, augment=False)
    dm.setup("fit")
    ds = dm.datasets["train"]
    tasks = ds.tasks
    checked = 0
    for i in range(len(ds)):
        seq = ds[(i, 0)]
        task = tasks[ds.specs[i].task]
        demo_grids = [p.input for p in task.train] + [p.output for p in task.train]
        forbidden = [p.output for p in task.test if not any(np.array_equal(p.output, g) for g in demo_grids)]
        assert seq.meta["split"] == "train"
        for _, g in deserialize(seq, "row_major"):
            assert not any(np.array_equal(g, t) for t in forbidden), (task.task_id, i)
        checked += 1
    assert checked > 100
    val = dm.datasets["val"]
    assert all(s.split == "test" for s in val.specs)


def test_eval_demonstrations_join_training_only_when_asked():
    base = dict(source="synthetic_fixed:flip_h", val_source="synthetic_fixed:gravity", n_synthetic=6, max_seq_len=1024)
    off = GridDataModule(**base)
    off.setup("fit")
    on = GridDataModule(**base, train_on_val_demos=True)
    on.setup("fit")
    assert len(on.datasets["train"]) > len(off.datasets["train"])
    ids_off = {t.task_id for t in off.datasets["train"].tasks}
    val_ids = {t.task_id for t in off.datasets["val"].tasks}
    ids_on = {t.task_id for t in on.datasets["train"].tasks}
    assert val_ids and not ids_off & val_ids
    assert val_ids <= ids_on


def test_augmentation_is_consistent_across_the_example_and_deterministic():
    dm = GridDataModule(source="synthetic_fixed:flip_h", n_synthetic=4, max_seq_len=1024, seed=7)
    dm.setup("fit")
    ds = dm.datasets["train"]
    a, b, c = ds[(0, 0)], ds[(0, 0)], ds[(0, 1)]
    assert np.array_equal(a.tokens, b.tokens)
    aug = Augmentation(*a.meta["augmentation"])
    grids = deserialize(a, "row_major")
    spec = ds.specs[0]
    task = ds.tasks[spec.task]
    originals = []
    for j in spec.context:
        originals += [task.train[j].input, task.train[j].output]
    originals += [task.train[spec.query].input, task.train[spec.query].output]
    assert len(grids) == len(originals)
    for (_, g), o in zip(grids, originals):
        assert np.array_equal(aug.invert(g), o)
    assert not np.array_equal(a.tokens, c.tokens) or Augmentation(*c.meta["augmentation"]) == aug


def test_batches_are_padded_only_to_their_longest_member():
    dm = GridDataModule(source="synthetic", n_synthetic=24, max_seq_len=1024, batch_size=4, synthetic_epoch_size=48)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        T = batch["tokens"].shape[1]
        assert int(batch["lengths"].max()) == T
        assert (batch["tokens"][:, 0] == BOS).all()
        for i, n in enumerate(batch["lengths"].tolist()):
            assert (batch["tokens"][i, n:] == PAD).all() and not batch["target_mask"][i, n:].any()
        assert (batch["role"] == ROLE_TEST_OUTPUT).any(1).all()
    assert dm.vocab_size == VOCAB_SIZE


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(target_policy="everything"), "target_policy"),
        (dict(batch_size=0), "batch_size"),
        (dict(max_seq_len=4), "max_seq_len"),
    ],
    ids=["policy", "batch-size", "max-seq-len"],
)
def test_bad_options_name_themselves(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GridDataModule(**kw)


def test_empty_split_after_length_filter_is_a_clear_error():
    dm = GridDataModule(source="arc1", max_seq_len=16, max_tasks=5)
    with pytest.raises(ValueError, match="empty.*max_seq_len"):
        dm.setup("fit")


def test_row_end_with_a_non_row_wise_order_fails_at_construction():
    with pytest.raises(ValueError, match="row_end=True needs an order that visits whole rows.*got order='hilbert'"):
        GridDataModule(source="synthetic", order="hilbert", row_end=True)
