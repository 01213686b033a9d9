"""Training datasets over the fresh-task stream.

``StreamDataset`` serves ``size`` fresh tasks per epoch: key ``(index, epoch)`` -> the task
``Stream.task(epoch, index)`` serialized as one example (every demonstration as context, the
test pair as the query), augmented as ``GridDataset`` augments (a pure function of
``(seed, epoch, index)``). Nothing is stored between epochs, so a resumed run regenerates exactly
the tasks it would have seen. ``lengths_for(epoch)`` comes from the tasks' plans (no grid drawn)
and feeds the length-bucketing sampler; ``lengths`` is epoch 0's.

``MixedDataset`` concatenates datasets (the stream and fixed tasks, e.g. the validation tasks'
demonstrations with ``train_on_val_demos``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from gridlm.datamodules.augment import IDENTITY, random_augmentation
from gridlm.datamodules.serialize import serialize_example
from gridlm.datamodules.synthetic.generate import Stream
from gridlm.datamodules.tokens import TokenSequence


class StreamDataset(Dataset):
    def __init__(
        self,
        stream: Stream,
        size: int,
        order: str,
        target_policy: str,
        row_end: bool = False,
        augment: bool = False,
        augment_colours: bool = True,
        keep_zero: bool = True,
        seed: int = 0,
        exclude: frozenset = frozenset(),
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"data.synthetic_epoch_size={size!r} must be an int >= 1 (tasks per epoch)")
        self.stream, self.size = stream, int(size)
        self.order, self.target_policy, self.row_end = order, target_policy, row_end
        self.augment, self.augment_colours, self.keep_zero, self.seed = augment, augment_colours, keep_zero, seed
        self.exclude = exclude  # pair keys (synthetic.pair_key) that no training pair may equal
        self._lengths: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.size

    def lengths_for(self, epoch: int) -> np.ndarray:
        """Sequence lengths of this epoch's examples (cached for the last two epochs)."""
        if epoch not in self._lengths:
            if len(self._lengths) >= 2:
                self._lengths.pop(min(self._lengths))
            self._lengths[epoch] = self.stream.lengths(epoch, self.size)
        return self._lengths[epoch]

    @property
    def lengths(self) -> np.ndarray:
        return self.lengths_for(0)

    def __getitem__(self, key) -> TokenSequence:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        task = self.stream.task(epoch, index, self.exclude)
        aug = IDENTITY
        if self.augment:
            rng = np.random.default_rng([self.seed, epoch, index])
            aug = random_augmentation(rng, dihedral=True, colours=self.augment_colours, keep_zero=self.keep_zero)
        context = [aug.apply_pair(p) for p in task.train]
        query = aug.apply_pair(task.test[0])
        meta = {
            "index": index,
            "task_id": task.task_id,
            "split": "test",
            "query": 0,
            "n_context": len(context),
            "augmentation": (aug.dihedral, aug.colour_perm),
            "query_input": query.input,
            "target": query.output,
        }
        return serialize_example(context, query, order=self.order, target_policy=self.target_policy, row_end=self.row_end, meta=meta)


class MixedDataset(Dataset):
    """Datasets end to end: index i < len(first) is the first's, and so on. Keys stay
    ``(index, epoch)``; each part sees its own indices."""

    def __init__(self, parts: Sequence[Dataset]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def lengths_for(self, epoch: int) -> np.ndarray:
        return np.concatenate([np.asarray(p.lengths_for(epoch) if hasattr(p, "lengths_for") else p.lengths) for p in self.parts])

    @property
    def lengths(self) -> np.ndarray:
        return self.lengths_for(0)

    def __getitem__(self, key) -> TokenSequence:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[k][(index - int(self.starts[k]), epoch)]
