"""The synthetic stream: fresh tasks per epoch, a pure function of (seed, epoch, index); exact
planned lengths and bucketing; exact mid-epoch resume; family selection; no leakage into the
validation set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridlm.datamodules.batching import BucketBatchSampler, collate, pad_fraction
from gridlm.datamodules.datamodule import GridDataModule
from gridlm.datamodules.synthetic import FAMILIES, Difficulty, Stream, pair_key, select
from gridlm.datamodules.synthetic.stream import MixedDataset, StreamDataset
from gridlm.datamodules.tasks import Task, load_tasks


def grids(task: Task):
    for pair in task.train + task.test:
        yield pair.input
        yield pair.output


def same(a: Task, b: Task) -> bool:
    return a.task_id == b.task_id and len(a.train) == len(b.train) and all(
        g.shape == h.shape and np.array_equal(g, h) for g, h in zip(grids(a), grids(b), strict=True)
    )


ALL = tuple(FAMILIES)


def test_a_task_is_a_pure_function_of_seed_epoch_and_index():
    s = Stream(ALL, seed=3)
    for epoch, index in [(0, 0), (0, 17), (5, 2), (123, 999)]:
        assert same(s.task(epoch, index), Stream(ALL, seed=3).task(epoch, index))
    order = [s.task(1, i) for i in (4, 2, 9)]  # no hidden state: any order gives the same tasks
    assert all(same(t, s.task(1, i)) for t, i in zip(order[::-1], (9, 2, 4)))
    other = Stream(ALL, seed=4)
    assert sum(same(s.task(0, i), other.task(0, i)) for i in range(40)) == 0


def test_every_epoch_brings_fresh_tasks():
    s = Stream(ALL, seed=0)
    a, b = [s.task(0, i) for i in range(60)], [s.task(1, i) for i in range(60)]
    assert not any(same(x, y) for x, y in zip(a, b))
    assert len({t.task_id.rsplit("-", 1)[1] for t in a}) >= 30  # families drawn at random, most of them seen
    firsts = {(t.train[0].input.shape, t.train[0].input.tobytes()) for t in a + b}
    assert len(firsts) == 120  # no grid repeats


def test_fixed_validation_set_comes_from_another_seed_space():
    val = Stream(ALL, seed=0, split="val").tasks(len(ALL) * 2)
    assert [t.task_id.rsplit("-", 1)[1] for t in val] == list(ALL) * 2  # round-robin: equal counts per family
    assert load_tasks("synthetic", n_synthetic=len(ALL) * 2, seed=0)[5].task_id == val[5].task_id
    train = Stream(ALL, seed=0)
    keys = {pair_key(p.input, p.output) for t in val for p in t.test}
    trained = {pair_key(p.input, p.output) for e in range(3) for i in range(100) for p in (train.task(e, i).train + train.task(e, i).test)}
    assert not keys & trained


def test_training_never_shows_a_validation_test_pair():
    """flip_h on 2x2 grids: so few grids that fresh training tasks hit validation test pairs by
    chance; the stream the DataModule builds redraws them, the bare stream does not."""
    args = dict(source="synthetic:flip_h", n_synthetic=40, synthetic_max_side=2, max_seq_len=256, synthetic_epoch_size=60, augment=False)
    dm = GridDataModule(**args)
    dm.setup("fit")
    ds = dm.datasets["train"]
    held_out = {pair_key(p.input, p.output) for t in dm.datasets["val"].tasks for p in t.test}
    assert ds.exclude == held_out and len(held_out) > 5
    bare = [pair_key(p.input, p.output) for e in range(2) for i in range(60) for p in (ds.stream.task(e, i).train + ds.stream.task(e, i).test)]
    assert len(set(bare) & held_out) > 0, "the check needs a case where leakage would happen"
    guarded = [pair_key(p.input, p.output) for e in range(2) for i in range(60)
               for p in (ds.stream.task(e, i, ds.exclude).train + ds.stream.task(e, i, ds.exclude).test)]  # fmt: skip
    assert not set(guarded) & held_out
    for i in range(60):  # and what the training loader serializes is that guarded task
        seq = ds[(i, 1)]
        task = ds.stream.task(1, i, ds.exclude)
        assert np.array_equal(seq.meta["target"], task.test[0].output)


@pytest.mark.parametrize("row_end", [False, True], ids=["plain", "row_end"])
def test_planned_lengths_are_the_serialized_lengths(row_end):
    stream = Stream(ALL, seed=1, max_seq_len=1024, row_end=row_end)
    ds = StreamDataset(stream, 120, "row_major", "all_outputs", row_end=row_end, augment=True)
    for epoch in (0, 1):
        lengths = ds.lengths_for(epoch)
        real = [len(ds[(i, epoch)]) for i in range(len(ds))]
        if row_end:  # the plan counts the longer of plain and transposed: augmentation may transpose
            assert all(r <= p for r, p in zip(real, lengths)) and sum(r == p for r, p in zip(real, lengths)) > 60
        else:
            assert list(lengths) == real


def test_plans_fit_max_seq_len_by_dropping_demos_then_shrinking_grids():
    stream = Stream(ALL, Difficulty(max_side=30, min_side=20), seed=0, max_seq_len=400)
    lengths = stream.lengths(0, 80)
    assert lengths.max() <= 400
    tasks = [stream.task(0, i) for i in range(80)]
    assert min(len(t.train) for t in tasks) >= 1 and max(max(g.shape) for t in tasks for g in grids(t)) < 30
    with pytest.raises(ValueError, match="do not fit max_seq_len=20 even with small grids"):
        Stream(("logic_and",), seed=0, max_seq_len=20).length(0, 0)


def test_length_bucketing_keeps_padding_small():
    stream = Stream(ALL, seed=0, max_seq_len=1024)
    ds = StreamDataset(stream, 1024, "row_major", "all_outputs")
    sampler = BucketBatchSampler(ds.lengths, 8, shuffle=True, seed=0, lengths_for=ds.lengths_for)
    fractions = [pad_fraction(ds.lengths_for(e), sampler.batches(e)) for e in range(3)]
    unbucketed = BucketBatchSampler(ds.lengths, 8, shuffle=True, seed=0, bucket_factor=1, lengths_for=ds.lengths_for)
    assert max(fractions) < 0.05 < pad_fraction(ds.lengths_for(0), unbucketed.batches(0))


def _batches(ds, sampler, epoch):
    sampler.set_epoch(epoch)
    return [collate([ds[k] for k in keys]) for keys in sampler]


def test_mid_epoch_resume_replays_exactly_the_remaining_batches():
    def build():
        ds = StreamDataset(Stream(ALL, seed=5, max_seq_len=1024), 40, "row_major", "all_outputs", augment=True, seed=5)
        return ds, BucketBatchSampler(ds.lengths, 4, shuffle=True, seed=5, bucket_factor=2, lengths_for=ds.lengths_for)

    ds, sampler = build()
    full = _batches(ds, sampler, 1)
    ds2, sampler2 = build()  # a fresh process: nothing cached
    sampler2.resume_at(1, 3)
    rest = [collate([ds2[k] for k in keys]) for keys in sampler2]
    assert len(rest) == len(full) - 3
    for a, b in zip(full[3:], rest):
        assert torch.equal(a["tokens"], b["tokens"]) and [m["task_id"] for m in a["meta"]] == [m["task_id"] for m in b["meta"]]
    assert {m["task_id"] for b in full for m in b["meta"]}.isdisjoint({m["task_id"] for b in _batches(ds, sampler, 2) for m in b["meta"]})


def test_datamodule_trains_on_the_stream_and_validates_on_fresh_tasks():
    dm = GridDataModule(source="synthetic", n_synthetic=12, synthetic_max_side=5, max_seq_len=512, batch_size=4, synthetic_epoch_size=24)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert isinstance(train, StreamDataset) and len(train) == 24 and len(val) == 12
    loader = dm.train_dataloader()
    ids = []
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        ids.append({m["task_id"] for b in loader for m in b["meta"]})
    assert len(ids[0]) == len(ids[1]) == 24 and not ids[0] & ids[1]
    assert all(i.startswith("synthetic-train-0-") for i in ids[0]) and all(t.task_id.startswith("synthetic-val-0-") for t in val.tasks)
    assert {FAMILIES[i.rsplit("-", 1)[1]].needs for i in ids[0] | ids[1]} <= set(range(2, 6))  # only families that fit max_side 5


def test_held_out_families_by_name():
    dm = GridDataModule(source="synthetic:-flip_h,-logic", val_source="synthetic:flip_h,logic", n_synthetic=12, max_seq_len=1024,
                        synthetic_epoch_size=200)  # fmt: skip
    dm.setup("fit")
    held_out = {"flip_h", *select(["logic"])}
    trained = {dm.datasets["train"][(i, 0)].meta["task_id"].rsplit("-", 1)[1] for i in range(200)}
    assert not trained & held_out and len(trained) > 25
    assert {t.task_id.rsplit("-", 1)[1] for t in dm.datasets["val"].tasks} == held_out
    only = GridDataModule(source="synthetic:flip_h,gravity", n_synthetic=4, max_seq_len=1024, synthetic_epoch_size=30)
    only.setup("fit")
    assert {only.datasets["train"][(i, 3)].meta["task_id"].rsplit("-", 1)[1] for i in range(30)} == {"flip_h", "gravity"}


def test_val_demos_join_the_stream_only_when_asked():
    base = dict(source="synthetic", val_source="synthetic_fixed:gravity", n_synthetic=4, max_seq_len=1024, synthetic_epoch_size=16)
    on = GridDataModule(**base, train_on_val_demos=True)
    on.setup("fit")
    train = on.datasets["train"]
    assert isinstance(train, MixedDataset) and len(train) == 16 + 4 * 3  # 4 tasks x 3 leave-one-out demos
    assert len(train.lengths_for(1)) == len(train) and train[(17, 1)].meta["task_id"].endswith("gravity")
    off = GridDataModule(**base)
    off.setup("fit")
    assert isinstance(off.datasets["train"], StreamDataset)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(source="synthetic:spin"), "unknown synthetic family 'spin'; valid: flip_h"),
        (dict(source="synthetic:flip_h,-gravity"), "mix included and excluded names"),
        (dict(source="synthetic:logic_and", synthetic_max_side=4), r"logic_and \(needs 5\) need a larger max_side than 4"),
        (dict(source="synthetic", val_source="synthetic:nope"), "unknown synthetic family 'nope'"),
    ],
    ids=["unknown", "mixed", "too_small", "unknown_val"],
)
def test_bad_family_names_fail_setup_in_one_line(kwargs, fragment):
    dm = GridDataModule(**{"max_seq_len": 512, "n_synthetic": 4, **kwargs})
    with pytest.raises(ValueError, match=fragment) as info:
        dm.setup("fit")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(synthetic_epoch_size=0), "data.synthetic_epoch_size must be an int >= 1"),
        (dict(synthetic_min_side=6, synthetic_max_side=5), "data: synthetic_min_side=6 must be in 1..max_side=5"),
        (dict(synthetic_max_side=40), "data: synthetic_max_side=40 must be an int in 2..30"),
        (dict(synthetic_min_demos=5, synthetic_max_demos=4), "data: synthetic_min_demos=5"),
    ],
    ids=["epoch_size", "sides", "max_side", "demos"],
)
def test_bad_synthetic_options_name_themselves(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        GridDataModule(source="synthetic", **kwargs)


def test_a_list_of_sources_trains_on_all_of_them():
    """``[synthetic:flip_h, arc1]``: the stream's fresh tasks and ARC-AGI-1's leave-one-out examples
    in one epoch; validation on both sources' test pairs."""
    dm = GridDataModule(source=["synthetic:flip_h", "arc1"], synthetic_epoch_size=12, max_tasks=3, max_seq_len=2048, n_synthetic=4)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert isinstance(train, MixedDataset) and isinstance(train.parts[0], StreamDataset)
    arc_only = GridDataModule(source="arc1", max_tasks=3, max_seq_len=2048)
    arc_only.setup("fit")
    assert len(train) == 12 + len(arc_only.datasets["train"])
    ids = {train[(i, 1)].meta["task_id"] for i in range(len(train))}
    assert sum(i.startswith("synthetic-train") and i.endswith("flip_h") for i in ids) == 12
    assert {i for i in ids if not i.startswith("synthetic")} == {t.task_id for t in arc_only.datasets["train"].tasks}
    val_ids = {val.tasks[s.task].task_id for s in val.specs}
    assert any(i.startswith("synthetic-val") for i in val_ids) and any(not i.startswith("synthetic") for i in val_ids)
    assert len(train.lengths_for(1)) == len(train)


@pytest.mark.parametrize("source", [[], ["arc1", 3]], ids=["empty", "not-a-name"])
def test_a_bad_source_list_is_one_line(source):
    with pytest.raises(ValueError, match="data.source: a source name or a non-empty list"):
        GridDataModule(source=source)
