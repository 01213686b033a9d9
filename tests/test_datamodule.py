"""GridDataModule: leave-one-out examples, no test-output leakage, long tasks, augmentation, batches.

The leakage tests read what the training loader really yields (every sequence deserialized and
its augmentation undone) and compare grids, not task ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lightning.fabric.utilities.data import _set_sampler_epoch

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
    a, b = ds[(0, 0)], ds[(0, 0)]
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


# ---------------------------------------------------------------- epochs, and leakage read from the loaders
def write_tasks(folder: Path, n_tasks: int, seed: int, prefix: str) -> list[Task]:
    """ARC JSON files of random tasks (3 demonstrations, 1-2 test pairs; sides 3..5, 10 colours,
    so no two grids coincide by chance) and the tasks as loaded."""
    rng = np.random.default_rng(seed)
    grid = lambda: rng.integers(0, 10, (int(rng.integers(3, 6)), int(rng.integers(3, 6)))).tolist()  # noqa: E731
    folder.mkdir(parents=True)
    for i in range(n_tasks):
        pairs = lambda n: [{"input": grid(), "output": grid()} for _ in range(n)]  # noqa: E731
        (folder / f"{prefix}{i}.json").write_text(json.dumps({"train": pairs(3), "test": pairs(1 + i % 2)}))
    return GridDataModule(source=str(folder)).load(str(folder))


def key(g) -> tuple:
    g = np.asarray(g, dtype=np.int64)
    return g.shape, g.tobytes()


def loader_rows(dm: GridDataModule, name: str, epochs=(0,)):
    """``(meta, grids)`` of every sequence the ``name`` loader yields in ``epochs`` (set as the
    Trainer sets them), each grid mapped back to its task's frame with the row's augmentation."""
    loader = dm.train_dataloader() if name == "train" else dm.val_dataloader()
    for epoch in epochs:
        _set_sampler_epoch(loader, epoch)
        for batch in loader:
            for b, meta in enumerate(batch["meta"]):
                toks = batch["tokens"][b, : int(batch["lengths"][b])].numpy()
                aug = Augmentation(*meta["augmentation"])
                yield meta, [aug.invert(g) for _, g in deserialize(toks, dm.order, dm.row_end)]


def test_augmentation_is_redrawn_every_epoch_and_a_function_of_seed_epoch_index(tmp_path):
    write_tasks(tmp_path / "tasks", 4, seed=0, prefix="t")

    def draws(seed: int) -> dict[tuple[int, int], tuple]:
        dm = GridDataModule(source=str(tmp_path / "tasks"), max_seq_len=1024, batch_size=4, seed=seed)
        dm.setup("fit")
        loader, out = dm.train_dataloader(), {}
        for epoch in range(3):
            _set_sampler_epoch(loader, epoch)
            for batch in loader:
                for b, meta in enumerate(batch["meta"]):
                    out[meta["index"], epoch] = (meta["augmentation"], batch["tokens"][b, : int(batch["lengths"][b])].numpy().tobytes())
        return out

    a, again, other_seed = draws(7), draws(7), draws(8)
    assert a == again  # the same (seed, epoch, index): the same augmentation and tokens
    n = len(a) // 3
    assert n == 12 and {i for i, _ in a} == set(range(n))
    for i in range(n):  # a dihedral transform and a colour permutation redrawn: always another one here
        assert len({a[i, e][0] for e in range(3)}) == 3, f"example {i}: {[a[i, e][0] for e in range(3)]}"
    assert all(a[i, 0] != other_seed[i, 0] for i in range(n))


@pytest.mark.parametrize(
    "case",
    [
        dict(val_source=False, order="row_major"),
        dict(val_source=True, order="snake", row_end=True),
        dict(val_source=True, train_on_val_demos=True, order="hilbert"),
    ],
    ids=["augmented-own-test-pairs", "val_source-snake-row_end", "train_on_val_demos-hilbert"],
)
def test_no_validation_output_in_any_augmented_training_sequence(tmp_path, case):
    """Two epochs of augmented training sequences, each mapped back to its task's frame: no grid is
    an output the validation scores; the grids that should be there (demonstrations, and the
    validation tasks' demonstrations only with train_on_val_demos) are, so the check can see."""
    case = dict(case)
    train = write_tasks(tmp_path / "a", 5, seed=1, prefix="a")
    val = write_tasks(tmp_path / "b", 4, seed=2, prefix="b") if case.pop("val_source") else train
    dm = GridDataModule(source=str(tmp_path / "a"), val_source=str(tmp_path / "b") if val is not train else None,
                        max_seq_len=1024, batch_size=4, augment=True, **case)  # fmt: skip
    dm.setup("fit")
    scored = {key(p.output) for t in val for p in t.test}
    val_demos = {key(g) for t in val for p in t.train for g in (p.input, p.output)}
    train_demos = {key(g) for t in train for p in t.train for g in (p.input, p.output)}
    assert len(scored) == sum(len(t.test) for t in val) and not scored & (train_demos | val_demos), "precondition: distinct grids"
    assert {key(meta["target"]) for meta, _ in loader_rows(dm, "val")} == scored  # what validation scores

    seen = {key(g) for _, grids in loader_rows(dm, "train", epochs=(0, 1)) for g in grids}
    assert not seen & scored, "a validation output is in a training sequence"
    assert train_demos <= seen
    if case.get("train_on_val_demos"):
        assert val_demos <= seen
    elif val is not train:
        assert not val_demos & seen, "a validation task's demonstration is trained on without train_on_val_demos"


def test_no_validation_output_in_the_synthetic_training_stream(tmp_path):
    """The procedural stream, through the public DataModule API only: two epochs of training
    sequences hold no validation output of their own task (unless that grid is also one of the
    task's demonstrations), and no training sequence holds a validation (input, output) pair."""
    dm = GridDataModule(source="synthetic", n_synthetic=12, synthetic_max_side=6, synthetic_epoch_size=48, max_seq_len=1024,
                        batch_size=4, augment=True)  # fmt: skip
    dm.setup("fit")
    own: dict[str, set] = {}  # task id -> its scored outputs that are not among its demonstrations
    pairs = set()  # (input, output) of every scored pair
    for meta, grids in loader_rows(dm, "val"):
        target, context = key(meta["target"]), {key(g) for g in grids[:-1]}
        if target not in context:
            own.setdefault(meta["task_id"], set()).add(target)
        pairs.add((key(grids[-2]), target))
    assert own and pairs
    n = 0
    for meta, grids in loader_rows(dm, "train", epochs=(0, 1)):
        keys = [key(g) for g in grids]
        assert not own.get(meta["task_id"], set()) & set(keys), f"task {meta['task_id']}: a validation output is trained on"
        assert not pairs & set(zip(keys[::2], keys[1::2])), f"task {meta['task_id']}: a validation pair is trained on"
        n += 1
    assert n >= 2 * 12, n
