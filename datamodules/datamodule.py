"""``GridDataModule``: task sources -> examples -> augmented, serialized, bucketed batches.

One example per (task, query pair):

- training: every demonstration pair of a training task is a query once, with the task's
  *other* demonstrations as context (leave-one-out). Test pairs are never serialized into a
  training sequence. A ``synthetic`` source trains on a stream instead: ``synthetic_epoch_size``
  fresh tasks per epoch (``datamodules/synthetic/stream.py``), none of whose pairs equals a
  validation test pair.
- validation / test: every test pair of the validation tasks, with all demonstrations as
  context. By default the validation tasks are the training tasks (their held-out test pairs);
  ``val_source`` names a second source instead (e.g. ``arc1:eval``), and
  ``train_on_val_demos`` adds that source's demonstrations to training (off by default). For a
  ``synthetic`` source the validation tasks are ``n_synthetic`` fresh tasks from a seed space
  disjoint from training's (``val_source: synthetic:<families>`` validates on other families).
- predict: the test inputs of ``predict_source`` (default: the validation tasks), prompt only.

An example longer than ``max_seq_len`` loses its longest demonstrations first (at least one
is kept); only then is it dropped. Both counts are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from gridlm.datamodules.augment import IDENTITY, random_augmentation
from gridlm.datamodules.batching import BucketBatchSampler, collate, per_device_batch
from gridlm.datamodules.resumable import ResumableDataLoader
from gridlm.datamodules.orders import OrderName
from gridlm.datamodules.serialize import check_row_end, max_augmented_length, serialize_example
from gridlm.datamodules.synthetic.core import Difficulty
from gridlm.datamodules.synthetic.stream import MixedDataset, StreamDataset
from gridlm.datamodules.tasks import Task, load_tasks, synthetic_kind
from gridlm.datamodules.tokens import TARGET_POLICIES, VOCAB_SIZE


@dataclass(frozen=True)
class ExampleSpec:
    task: int  # index into the dataset's task list
    split: str  # "train" (a demonstration is the query) or "test"
    query: int  # index of the query pair in task.train or task.test
    context: tuple[int, ...]  # indices of the demonstrations used as context


def build_specs(
    tasks: list[Task], split: str, max_seq_len: int, row_end: bool = False, prompt_only: bool = False
) -> tuple[list[ExampleSpec], list[int], dict]:
    """Examples of ``split`` for every task, shortened or dropped to fit ``max_seq_len``.

    Lengths are the longest under any dihedral augmentation (with ``row_end`` a transpose
    changes the count of ROW_END tokens). Returns the specs, their lengths and counts
    ``{"examples", "shortened", "dropped"}``."""
    specs, lengths = [], []
    stats = {"examples": 0, "shortened": 0, "dropped": 0}
    for ti, task in enumerate(tasks):
        queries = range(len(task.train)) if split == "train" else range(len(task.test))
        for q in queries:
            context = [j for j in range(len(task.train)) if not (split == "train" and j == q)]
            if not context:
                continue  # a task with one demonstration has no leave-one-out training example
            query = task.train[q] if split == "train" else task.test[q]
            if prompt_only or query.output is None:
                # unknown output: budget for an output as large as the input
                query = type(query)(query.input, query.input)
            sizes = {j: max_augmented_length([task.train[j]], task.train[j], row_end) for j in context}
            length = max_augmented_length([task.train[j] for j in context], query, row_end)
            shortened = False
            while length > max_seq_len and len(context) > 1:
                longest = max(context, key=lambda j: (sizes[j], j))
                context.remove(longest)
                length = max_augmented_length([task.train[j] for j in context], query, row_end)
                shortened = True
            if length > max_seq_len:
                stats["dropped"] += 1
                continue
            stats["shortened"] += shortened
            stats["examples"] += 1
            specs.append(ExampleSpec(ti, split, q, tuple(context)))
            lengths.append(length)
    return specs, lengths, stats


def shard_by_task(task_ids: Sequence[str], num_replicas: int, rank: int) -> list[int]:
    """This rank's example indices (in dataset order) when whole tasks are dealt to ranks, each
    task to the rank with the fewest examples so far, so that a task's test inputs (and its
    test-time training) stay on one rank. A rank left without a task gets the first example (its
    row is a duplicate that the submission writer overwrites): every rank must reach the
    end-of-epoch gather."""
    if num_replicas <= 1:
        return list(range(len(task_ids)))
    members: dict[str, list[int]] = {}
    for i, tid in enumerate(task_ids):
        members.setdefault(tid, []).append(i)
    load, mine = [0] * num_replicas, []
    for rows in members.values():
        r = min(range(num_replicas), key=lambda k: load[k])
        load[r] += len(rows)
        if r == rank:
            mine += rows
    return sorted(mine) or ([0] if task_ids else [])


class GridDataset(Dataset):
    """Serializes examples on the fly; keys are ``(index, epoch)`` so that augmentations are a
    pure function of ``(seed, epoch, index)`` (reproducible, resumable, worker-safe)."""

    def __init__(
        self,
        tasks: list[Task],
        specs: list[ExampleSpec],
        lengths: list[int],
        order: str,
        target_policy: str,
        row_end: bool = False,
        augment: bool = False,
        augment_colours: bool = True,
        keep_zero: bool = True,
        seed: int = 0,
        prompt_only: bool = False,
    ) -> None:
        self.tasks, self.specs, self.lengths = tasks, specs, lengths
        self.order, self.target_policy, self.row_end = order, target_policy, row_end
        self.augment, self.augment_colours, self.keep_zero = augment, augment_colours, keep_zero
        self.seed, self.prompt_only = seed, prompt_only

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        spec = self.specs[index]
        task = self.tasks[spec.task]
        aug = IDENTITY
        if self.augment:
            rng = np.random.default_rng([self.seed, epoch, index])
            aug = random_augmentation(rng, dihedral=True, colours=self.augment_colours, keep_zero=self.keep_zero)
        pairs = task.train if spec.split == "train" else task.test
        context = [aug.apply_pair(task.train[j]) for j in spec.context]
        query = aug.apply_pair(pairs[spec.query])
        meta = {
            "index": index,
            "task_id": task.task_id,
            "split": spec.split,
            "query": spec.query,
            "n_context": len(context),
            "augmentation": (aug.dihedral, aug.colour_perm),  # plain data: batches are walked by Lightning
            "query_input": query.input,
            "target": query.output,
        }
        return serialize_example(
            context,
            query,
            order=self.order,
            target_policy=self.target_policy,
            row_end=self.row_end,
            meta=meta,
            prompt_only=self.prompt_only or query.output is None,
        )


class GridDataModule(L.LightningDataModule):
    """Serialized ARC-style grid tasks for the base model and the refiner (one DataModule)."""

    def __init__(
        self,
        source: Union[list[str], str] = "arc1",
        val_source: Optional[str] = None,
        predict_source: Optional[str] = None,
        order: OrderName = "row_major",
        max_seq_len: int = 2048,
        batch_size: int = 8,
        global_batch_size: Optional[int] = None,
        seed: int = 0,
        augment: bool = True,
        augment_colours: bool = True,
        keep_zero: bool = True,
        target_policy: Literal["test_output", "all_outputs", "all"] = "all_outputs",
        row_end: bool = False,
        train_on_val_demos: bool = False,
        on_invalid: Literal["raise", "skip"] = "raise",
        max_tasks: Optional[int] = None,
        max_val_examples: Optional[int] = None,
        n_synthetic: int = 64,
        synthetic_max_side: int = 10,
        synthetic_min_side: int = 2,
        synthetic_min_objects: int = 1,
        synthetic_max_objects: int = 4,
        synthetic_min_demos: int = 3,
        synthetic_max_demos: int = 4,
        synthetic_epoch_size: int = 1024,
        bucket_factor: int = 64,
        num_workers: int = 0,
    ) -> None:
        """
        Args:
            source: training tasks: ``arc1``, ``arc1:eval``, ``arc2``, ``arc2:eval``, ``synthetic`` (a
                stream of fresh tasks), ``synthetic:<family>,...`` (only those families or groups),
                ``synthetic:-<family>,...`` (all but those), ``synthetic_fixed[:...]`` (a fixed set),
                or a path to ARC-format JSON files (searched recursively); a list of these trains on
                all of them (e.g. ``[synthetic, arc1]``: the stream's ``synthetic_epoch_size`` fresh tasks
                and ARC-AGI-1's leave-one-out examples every epoch), and validates on all of their test pairs.
            val_source: validation tasks; ``None`` validates on the test pairs of the training tasks.
            predict_source: tasks whose test inputs ``gridlm predict`` solves; ``None``: the validation tasks.
            order: serialization order of the cells of each grid.
            max_seq_len: longest sequence; longer examples lose demonstrations, then are dropped.
            batch_size: examples per batch on each device (one optimizer step; ``model.micro_batch_size``
                splits it further). With D devices on N nodes a step sees N x D x batch_size examples.
            global_batch_size: examples per optimizer step over all devices; when set, the per-device
                batch is ``global_batch_size / (num_nodes x devices)`` (it must divide) and
                ``batch_size`` is ignored, so a run keeps its optimization on any device count.
            seed: shuffling and augmentation seed.
            augment: random dihedral transform and colour permutation per training example and epoch.
            augment_colours: permute colours when augmenting.
            keep_zero: keep colour 0 (background) fixed when permuting colours.
            target_policy: which tokens are next-token targets (see ``gridlm.datamodules.tokens``).
            row_end: emit a ROW_END token after each row (row-wise orders only).
            train_on_val_demos: also train on the validation tasks' demonstrations (as TRM/HRM do).
            on_invalid: ``raise`` on the first bad task, or ``skip`` bad tasks with a warning each.
            max_tasks: use only the first N tasks of each source (quick runs).
            max_val_examples: validate on at most N examples (the first ones, deterministic).
            n_synthetic: tasks of a synthetic validation set, or of a ``synthetic_fixed`` source.
            synthetic_max_side: largest grid side of synthetic tasks (outputs included).
            synthetic_min_side: smallest grid side a synthetic sampler draws.
            synthetic_min_objects: fewest objects per grid, in families that place objects.
            synthetic_max_objects: most objects per grid (fewer when they do not fit).
            synthetic_min_demos: fewest demonstrations of a stream task.
            synthetic_max_demos: most demonstrations of a stream task.
            synthetic_epoch_size: fresh tasks per epoch of a ``synthetic`` training stream.
            bucket_factor: mega-batch size in batches for length bucketing (1 = no bucketing).
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        if target_policy not in TARGET_POLICIES:
            raise ValueError(f"data.target_policy: {target_policy!r} is not one of {TARGET_POLICIES}")
        if max_seq_len < 16:
            raise ValueError(f"data.max_seq_len must be >= 16, got {max_seq_len}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if global_batch_size is not None and global_batch_size < 1:
            raise ValueError(f"data.global_batch_size must be >= 1 or null, got {global_batch_size}")
        check_row_end(order, row_end)  # at construction, not at the first batch (maybe in a worker)
        if not isinstance(source, str) and (not source or not all(isinstance(s, str) for s in source)):
            raise ValueError(f"data.source: a source name or a non-empty list of them, got {source!r}")
        if isinstance(synthetic_epoch_size, bool) or not isinstance(synthetic_epoch_size, int) or synthetic_epoch_size < 1:
            raise ValueError(f"data.synthetic_epoch_size must be an int >= 1 (tasks per epoch), got {synthetic_epoch_size!r}")
        self.difficulty = _difficulty(
            min_side=synthetic_min_side, max_side=synthetic_max_side, min_objects=synthetic_min_objects,
            max_objects=synthetic_max_objects, min_demos=synthetic_min_demos, max_demos=synthetic_max_demos,
        )  # fmt: skip
        self.save_hyperparameters()
        self.source, self.val_source, self.predict_source = source, val_source, predict_source
        self.order, self.max_seq_len, self.batch_size, self.seed = order, max_seq_len, batch_size, seed
        self.row_end, self.target_policy = row_end, target_policy
        self._tasks: dict[str, list[Task]] = {}
        self.datasets: dict[str, GridDataset] = {}
        self.stats: dict[str, dict] = {}

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def load(self, source: Union[str, Sequence[str]]) -> list[Task]:
        """The tasks of ``source`` (a list: every source's tasks, in order)."""
        if not isinstance(source, str):
            return [t for s in source for t in self.load(s)]
        if source not in self._tasks:
            hp = self.hparams
            tasks = load_tasks(
                source,
                on_invalid=hp.on_invalid,
                seed=hp.seed,
                n_synthetic=hp.n_synthetic,
                synthetic_difficulty=self.difficulty,
            )
            self._tasks[source] = tasks[: hp.max_tasks] if hp.max_tasks else tasks
        return self._tasks[source]

    def _dataset(self, name: str, tasks: list[Task], split: str, augment: bool, prompt_only: bool = False) -> GridDataset:
        specs, lengths, stats = build_specs(tasks, split, self.max_seq_len, self.row_end, prompt_only)
        limit = self.hparams.max_val_examples if name in ("val", "test") else None
        if limit is not None:
            specs, lengths = specs[:limit], lengths[:limit]
            stats["examples"] = len(specs)
        self.stats[name] = stats
        rank_zero_info(
            f"gridlm data: {name}: {stats['examples']} examples ({stats['shortened']} shortened, "
            f"{stats['dropped']} dropped as longer than max_seq_len={self.max_seq_len})"
        )
        if not specs:
            raise ValueError(
                f"data: the {name} set is empty (source {self._source_of(name)!r}, "
                f"max_seq_len={self.max_seq_len}); raise data.max_seq_len or choose another source"
            )
        hp = self.hparams
        return GridDataset(
            tasks,
            specs,
            lengths,
            self.order,
            self.target_policy,
            self.row_end,
            augment=augment,
            augment_colours=hp.augment_colours,
            keep_zero=hp.keep_zero,
            seed=self.seed,
            prompt_only=prompt_only,
        )

    def _source_of(self, name: str) -> str:
        if name == "train":
            return self.source
        if name == "predict":
            return self.predict_source or self.val_source or self.source
        return self.val_source or self.source

    def _stream(self, spec: str) -> StreamDataset:
        """The training stream of a ``synthetic`` source; no pair equals a validation test pair."""
        from gridlm.datamodules import synthetic

        hp = self.hparams
        families = tuple(synthetic.select(synthetic.parse_spec(spec), self.difficulty.max_side))
        stream = synthetic.Stream(families, self.difficulty, self.seed, "train", self.max_seq_len, self.row_end)
        val = self.load(self._source_of("val"))
        exclude = frozenset(synthetic.pair_key(p.input, p.output) for t in val for p in t.test if p.output is not None)
        left_out = [n for n in synthetic.FAMILIES if n not in families]
        which = (f"all {len(families)} families" if not left_out else f"{len(families)} families but {', '.join(left_out)}"
                 if len(left_out) < len(families) else f"families {', '.join(families)}")  # fmt: skip
        d = self.difficulty
        rank_zero_info(
            f"gridlm data: train: a stream of {hp.synthetic_epoch_size} fresh synthetic tasks per epoch from {which} "
            f"(sides {d.min_side}..{d.max_side}, {d.min_demos}-{d.max_demos} demonstrations)"
        )
        return StreamDataset(
            stream, hp.synthetic_epoch_size, self.order, self.target_policy, self.row_end, augment=hp.augment,
            augment_colours=hp.augment_colours, keep_zero=hp.keep_zero, seed=self.seed, exclude=exclude,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        trainer = getattr(self, "trainer", None)
        if self.hparams.global_batch_size is not None:
            world = trainer.world_size if trainer is not None else 1
            self.batch_size = per_device_batch(self.hparams.global_batch_size, world, "data.global_batch_size")
        if stage in ("fit", None) and "train" not in self.datasets:
            sources = [self.source] if isinstance(self.source, str) else list(self.source)
            streams = [self._stream(s) for s in sources if synthetic_kind(s) == "synthetic"]
            tasks = [t for s in sources if synthetic_kind(s) != "synthetic" for t in self.load(s)]
            if self.hparams.train_on_val_demos and self.val_source:
                tasks += self.load(self.val_source)
            parts = streams + ([self._dataset("train", tasks, "train", augment=self.hparams.augment)] if tasks else [])
            self.datasets["train"] = parts[0] if len(parts) == 1 else MixedDataset(parts)
        if stage in ("fit", "validate", None) and "val" not in self.datasets:
            self.datasets["val"] = self._dataset("val", self.load(self._source_of("val")), "test", augment=False)
        if stage in ("test", None) and "test" not in self.datasets:
            self.datasets["test"] = self._dataset("test", self.load(self._source_of("test")), "test", augment=False)
        if stage in ("predict", None) and "predict" not in self.datasets:
            tasks = self.load(self._source_of("predict"))
            self.datasets["predict"] = self._dataset("predict", tasks, "test", augment=False, prompt_only=True)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        ds = self.datasets[name]
        trainer = getattr(self, "trainer", None)
        replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        sampler = BucketBatchSampler(
            ds.lengths,
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            bucket_factor=self.hparams.bucket_factor,
            num_replicas=replicas,
            rank=rank,
            # training repeats batches to even out ranks (as DistributedSampler does); evaluation
            # splits batches instead, so that synced metrics count every example once
            fill="repeat" if shuffle else "split",
            lengths_for=getattr(ds, "lengths_for", None),  # the synthetic stream: new tasks every epoch
        )
        # the training loader is checkpointed by Lightning so that a resumed fit continues mid-epoch
        loader_class = ResumableDataLoader if name == "train" else DataLoader
        loader = loader_class(
            ds,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )
        if name == "train" and trainer is not None:
            loader.progress = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed
            loader.set_progress = lambda n: _move_progress(trainer.fit_loop.epoch_loop.batch_progress.current, n)
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        # a plain sequential loader (Lightning re-instantiates batch samplers when predicting) over
        # this rank's share of the tasks: under DDP each task is predicted, and test-time trained, once
        ds = self.datasets["predict"]
        trainer = getattr(self, "trainer", None)
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        task_ids = [ds.tasks[spec.task].task_id for spec in ds.specs]
        sampler = shard_by_task(task_ids, replicas, rank)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, collate_fn=collate, num_workers=self.hparams.num_workers)


def _difficulty(**knobs: int) -> Difficulty:
    """The synthetic knobs as a ``Difficulty``; a bad value names its ``data.synthetic_*`` option."""
    try:
        return Difficulty(**knobs)
    except (TypeError, ValueError) as e:
        raise type(e)(f"data: {str(e).replace('synthetic ', 'synthetic_')} (data.synthetic_* options)") from e


def _move_progress(current, n: int) -> None:
    """Shift Lightning's batch counters of the current epoch (ready, started, processed,
    completed) so that ``processed`` becomes ``n``."""
    delta = n - current.processed
    for name in ("ready", "started", "processed", "completed"):
        setattr(current, name, getattr(current, name) + delta)
