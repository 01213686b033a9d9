"""Length-bucketed batching and padding.

Examples of similar length are batched together so that padding stays a small fraction of the
tokens: each epoch the examples are shuffled, cut into *mega-batches* of
``batch_size * bucket_factor`` examples, each mega-batch is sorted by length and cut into
batches, and the batch order is shuffled (the "sortish" sampler of fairseq / HF Trainer).
Everything is a pure function of ``(seed, epoch)``, so a run and its resume see the same
batches. The sampler yields ``(index, epoch)`` keys so the dataset can draw per-epoch
augmentations deterministically, also inside worker processes. A dataset whose examples change
every epoch (the synthetic stream) passes ``lengths_for(epoch)``; its size stays the same.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from gridlm.datamodules.tokens import FIELDS, PAD, ROLE_SPECIAL, TokenSequence


class BucketBatchSampler(Sampler[list[tuple[int, int]]]):
    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        bucket_factor: int = 64,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        fill: str = "repeat",
        lengths_for: Optional[Callable[[int], Sequence[int]]] = None,
    ) -> None:
        if fill not in ("repeat", "split"):
            raise ValueError(f"fill must be 'repeat' or 'split', got {fill!r}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_factor = max(1, bucket_factor)
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.fill = fill
        self.lengths_for = lengths_for  # epoch -> lengths, for datasets that change every epoch
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed (set when resuming mid-epoch)
        # examples of epoch ``exclude_epoch`` consumed under another layout (batch size or number
        # of replicas) before a resume: that epoch is dealt from the remaining examples only
        self.exclude: np.ndarray | None = None
        self.exclude_epoch = -1

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch (through :attr:`sampler`)."""
        self.epoch = epoch

    @property
    def sampler(self) -> "BucketBatchSampler":
        """Lightning's ``_set_sampler_epoch`` calls ``set_epoch`` on ``loader.sampler`` and
        ``loader.batch_sampler.sampler``, never on the batch sampler itself; without this every
        epoch would repeat epoch 0's batches and augmentations."""
        return self

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """All batches of an epoch for every replica, as arrays of example indices."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.lengths)
        lengths = self.lengths if self.lengths_for is None else np.asarray(self.lengths_for(epoch), dtype=np.int64)
        if len(lengths) != n:
            raise ValueError(f"lengths_for({epoch}) gave {len(lengths)} lengths, the dataset has {n} examples")
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
            if self.exclude is not None and epoch == self.exclude_epoch:
                order = order[~np.isin(order, self.exclude)]  # the rest of the epoch, in its order
            n = len(order)
            chunk = self.batch_size * self.bucket_factor
            parts = []
            for s in range(0, n, chunk):
                idx = order[s : s + chunk]
                parts.append(idx[np.argsort(lengths[idx], kind="stable")])
            order = np.concatenate(parts) if parts else order
        else:
            order = np.argsort(lengths, kind="stable")
        batches = [order[s : s + self.batch_size] for s in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, 1])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.num_replicas > 1:
            # every rank gets the same number of batches (DDP steps in lockstep)
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            if self.fill == "split":
                batches = _split_to(batches, total)
            batches = batches + batches[: total - len(batches)]  # repeats only what splitting could not fill
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        mine = self.batches()[self.rank :: self.num_replicas]
        start, self.start_batch = self.start_batch, 0
        for b in mine[start:]:
            yield [(int(i), self.epoch) for i in b]

    def __len__(self) -> int:
        n = len(self.lengths)
        nb = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return math.ceil(nb / self.num_replicas)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def resume_at(self, epoch: int, batches_done: int, exclude: Sequence[int] | None = None) -> None:
        """Continue ``epoch`` after its first ``batches_done`` batches (per replica); an epoch
        already complete continues with the first batch of the next one. ``exclude``: examples
        of ``epoch`` consumed under another layout; the epoch's batches are then built from the
        other examples (``batches_done`` counts batches of that rest)."""
        if batches_done < 0:
            raise ValueError(f"batches_done must be >= 0, got {batches_done}")
        self.exclude = None if exclude is None else np.unique(np.asarray(exclude, dtype=np.int64))
        self.exclude_epoch = epoch if exclude is not None else -1
        if batches_done >= self.batches_per_replica(epoch):
            epoch, batches_done = epoch + 1, 0
        self.epoch, self.start_batch = epoch, batches_done

    def batches_per_replica(self, epoch: int | None = None) -> int:
        """Batches each replica draws in ``epoch`` (fewer than ``len(self)`` in an epoch resumed
        under another layout, whose consumed examples are excluded)."""
        epoch = self.epoch if epoch is None else epoch
        if self.exclude is None or epoch != self.exclude_epoch:
            return len(self)
        return math.ceil(len(self.batches(epoch)) / self.num_replicas)

    def consumed(self, epoch: int, batches_done: int) -> np.ndarray:
        """Sorted example indices of ``epoch`` consumed when every replica has drawn its first
        ``batches_done`` batches (the examples excluded from that epoch included)."""
        done = self.batches(epoch)[: batches_done * self.num_replicas]
        parts = [np.asarray(b, dtype=np.int64) for b in done]
        if self.exclude is not None and epoch == self.exclude_epoch:
            parts.append(self.exclude)
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def per_device_batch(total: int, world_size: int, option: str, where: str = "") -> int:
    """Examples per device when ``total`` examples per optimizer step are shared by
    ``world_size`` devices; one ``ValueError`` line naming ``option`` when they do not divide."""
    if total < 1:
        raise ValueError(f"{option} must be >= 1, got {total}")
    if total % world_size:
        lower, upper = (total // world_size) * world_size, (total // world_size + 1) * world_size
        near = " or ".join(str(v) for v in (lower, upper) if v > 0)
        raise ValueError(
            f"{option} {total} does not divide over {world_size} devices{where}: the per-device batch would be "
            f"{total / world_size:g}; use a multiple of {world_size} ({near}), or set data.batch_size (per device) instead"
        )
    return total // world_size


def collate(seqs: list[TokenSequence]) -> dict:
    """Right-pad a list of sequences to the longest one: PAD tokens, -1 coordinates and shapes,
    SPECIAL role, no target. Returns (B, T) int64 tensors (bool for ``target_mask``), ``pos``
    (B, T), ``lengths`` (B,), and ``meta`` (a list of the sequences' meta dicts)."""
    B = len(seqs)
    T = max(len(s) for s in seqs)
    out = {
        "tokens": np.full((B, T), PAD, dtype=np.int64),
        "row": np.full((B, T), -1, dtype=np.int64),
        "col": np.full((B, T), -1, dtype=np.int64),
        "grid": np.full((B, T), -1, dtype=np.int64),
        "role": np.full((B, T), ROLE_SPECIAL, dtype=np.int64),
        "target_mask": np.zeros((B, T), dtype=bool),
        "height": np.full((B, T), -1, dtype=np.int64),
        "width": np.full((B, T), -1, dtype=np.int64),
    }
    lengths = np.empty(B, dtype=np.int64)
    for i, s in enumerate(seqs):
        n = len(s)
        lengths[i] = n
        for name in FIELDS:
            out[name][i, :n] = getattr(s, name)
    batch = {k: torch.from_numpy(v) for k, v in out.items()}
    batch["pos"] = torch.arange(T, dtype=torch.int64).expand(B, T).contiguous()
    batch["lengths"] = torch.from_numpy(lengths)
    batch["meta"] = [s.meta for s in seqs]
    return batch


def _split_to(batches: list[np.ndarray], total: int) -> list[np.ndarray]:
    """Halve the largest batches (in place in the order) until there are ``total`` of them, so
    that evaluation fills the last round of ranks without seeing any example twice. A length-sorted
    batch splits into two with no more padding. Stops early when every batch holds one example."""
    batches = list(batches)
    while len(batches) < total:
        i = max(range(len(batches)), key=lambda j: len(batches[j]), default=None)
        if i is None or len(batches[i]) < 2:
            break
        half = len(batches[i]) // 2
        batches[i : i + 1] = [batches[i][:half], batches[i][half:]]
    return batches


def pad_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Fraction of padded positions when ``batches`` (lists of example indices) are padded to
    their longest member."""
    lengths = np.asarray(lengths)
    real = padded = 0
    for b in batches:
        ls = lengths[np.asarray(b)]
        real += int(ls.sum())
        padded += int(ls.max()) * len(ls)
    return 1.0 - real / padded if padded else 0.0


def split_batch(batch: dict, size: int) -> list[dict]:
    """Cut a collated batch into micro-batches of at most ``size`` rows, each trimmed to its own
    longest sequence (so micro-batching never adds padding). ``meta`` is split alongside."""
    B = batch["tokens"].shape[0]
    if size >= B:
        return [batch]
    parts = []
    for s in range(0, B, size):
        lengths = batch["lengths"][s : s + size]
        T = int(lengths.max())
        part = {k: v[s : s + size, :T] for k, v in batch.items() if k not in ("lengths", "meta")}
        part["lengths"] = lengths
        part["meta"] = batch["meta"][s : s + size] if "meta" in batch else []
        parts.append(part)
    return parts
