import numpy as np
import pytest

from gridlm.datamodules.batching import BucketBatchSampler, pad_fraction


@pytest.fixture
def lengths():
    rng = np.random.default_rng(0)
    return rng.integers(50, 2000, size=1000)


def flat(sampler):
    return [i for b in sampler for i, _ in b]


def test_every_example_once_per_epoch(lengths):
    s = BucketBatchSampler(lengths, batch_size=8, seed=1)
    for epoch in range(3):
        s.set_epoch(epoch)
        seen = flat(s)
        assert sorted(seen) == list(range(len(lengths)))
        assert len(list(s)) == len(s)


def test_deterministic_for_a_seed_and_differs_across_epochs_and_seeds(lengths):
    a, b, c = (BucketBatchSampler(lengths, 8, seed=s) for s in (1, 1, 2))
    assert flat(a) == flat(b)
    assert flat(a) != flat(c)
    b.set_epoch(1)
    assert flat(a) != flat(b)


def test_epoch_travels_with_each_key(lengths):
    s = BucketBatchSampler(lengths, 8, seed=0)
    s.set_epoch(4)
    assert {e for b in s for _, e in b} == {4}


def test_bucketing_cuts_padding(lengths):
    bucketed = BucketBatchSampler(lengths, 8, seed=0).batches()
    naive = BucketBatchSampler(lengths, 8, seed=0, bucket_factor=1).batches()
    pb, pn = pad_fraction(lengths, bucketed), pad_fraction(lengths, naive)
    assert pb < 0.05 < pn


def test_replicas_partition_the_batches(lengths):
    ranks = [BucketBatchSampler(lengths, 8, seed=0, num_replicas=2, rank=r) for r in range(2)]
    parts = [flat(r) for r in ranks]
    assert len(list(ranks[0])) == len(list(ranks[1])) == len(ranks[0])
    assert set(parts[0]) | set(parts[1]) == set(range(len(lengths)))


@pytest.mark.parametrize("n, batch_size, replicas", [(21, 5, 2), (9, 2, 4), (8, 3, 2), (5, 8, 3), (13, 5, 4)])
def test_evaluation_ranks_see_every_example_exactly_once_in_equal_batch_counts(n, batch_size, replicas):
    """fill='split' halves batches instead of repeating them, so synced metrics count each example once."""
    lengths = np.arange(n) % 7 + 1
    ranks = [BucketBatchSampler(lengths, batch_size, shuffle=False, num_replicas=replicas, rank=r, fill="split")
             for r in range(replicas)]
    per_rank = [list(r) for r in ranks]
    assert {len(b) for b in per_rank} == {len(ranks[0])}  # lockstep: the same number of batches per rank
    seen = sorted(i for batches in per_rank for b in batches for i, _ in b)
    assert seen == list(range(n))  # none twice, none missing
    assert all(0 < len(b) <= batch_size for batches in per_rank for b in batches)
    # the default (training) fill repeats batches instead: with these sizes some example comes twice
    repeated = [list(BucketBatchSampler(lengths, batch_size, shuffle=False, num_replicas=replicas, rank=r))
                for r in range(replicas)]
    assert len([i for batches in repeated for b in batches for i, _ in b]) > n


def test_evaluation_repeats_only_when_there_are_fewer_examples_than_ranks():
    ranks = [list(BucketBatchSampler([3, 1], 4, shuffle=False, num_replicas=3, rank=r, fill="split")) for r in range(3)]
    assert [len(b) for b in ranks] == [1, 1, 1]
    assert sorted(i for batches in ranks for b in batches for i, _ in b) == [0, 1, 1]  # the shortest, once more


def test_predict_shards_deal_whole_tasks_to_ranks():
    from gridlm.datamodules.datamodule import shard_by_task

    task_ids = ["a", "a", "b", "c", "c", "c", "d", "e"]
    shards = [shard_by_task(task_ids, 3, r) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(8))  # a partition
    for s in shards:
        tasks = {task_ids[i] for i in s}
        assert all(sum(task_ids[i] == t for i in s) == task_ids.count(t) for t in tasks)  # whole tasks
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced here
    assert shard_by_task(task_ids, 1, 0) == list(range(8))
    assert [shard_by_task(["a", "a"], 2, r) for r in range(2)] == [[0, 1], [0]]  # an idle rank repeats one row


def test_resume_skips_consumed_batches(lengths):
    full = list(BucketBatchSampler(lengths, 8, seed=0))
    s = BucketBatchSampler(lengths, 8, seed=0)
    s.start_batch = 10
    assert list(s) == full[10:]
    assert list(s) == full  # only the resumed epoch is shortened


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler([1, 2], 0)
