"""``ResumableDataLoader``: a training DataLoader that resumes mid-epoch, also on another number
of devices or with another per-device batch size.

Lightning 2.x saves ``state_dict()`` of every training dataloader that has ``state_dict`` /
``load_state_dict`` (its ``_Stateful`` protocol; ``FitLoop.on_save_checkpoint`` ->
``checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]``) and calls
``load_state_dict`` before it creates the first iterator of a resumed fit
(``FitLoop.setup_data`` -> ``_load_combined_loader_states``). Without it Lightning restarts the
epoch from its first batch and warns that the result is unreliable.

The state is the sampler's epoch, its *layout* (per-device batch size, number of replicas) and
the number of batches of that epoch the trainer has *processed*
(``fit_loop.epoch_loop.batch_progress.current.processed``), not the number the sampler has
yielded: the trainer prefetches one batch and worker processes prefetch more, so the sampler is
always ahead of training. Batches are a pure function of ``(seed, epoch, layout)``
(``BucketBatchSampler``) and augmentations of ``(seed, epoch, index)`` (``GridDataset``), so:

- **same layout**: skipping the processed batches reproduces the uninterrupted run exactly.
- **another layout** (a checkpoint of 2 ranks resumed on 1 process, or the reverse): the
  examples the old layout consumed this epoch are recomputed from the state and excluded; the
  rest of the epoch is dealt to the new layout, so every example is still seen exactly once per
  epoch. Lightning's batch counter for the epoch is moved to ``len(loader) - remaining`` so
  that the epoch ends when the rest is used up. The step count and the optimizer state are
  restored by Lightning as usual. The batches after the resume are not those of an
  uninterrupted run (other groupings of the same examples), so the losses agree only within a
  tolerance (``tests/test_scaling.py`` states it).

A changed dataset (another number of examples, seed or bucketing) cannot continue the epoch: a
warning, and the epoch restarts.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from gridlm.datamodules.batching import BucketBatchSampler


class ResumableDataLoader(DataLoader):
    """DataLoader over a :class:`BucketBatchSampler` whose position Lightning checkpoints.

    ``progress`` (set by the DataModule) returns how many batches of the current epoch the
    trainer has processed; without it the state records 0 (restart the epoch).
    ``set_progress`` (set by the DataModule) moves that count when a resume under another
    layout changes how many batches the epoch has left."""

    progress: Optional[Callable[[], int]] = None
    set_progress: Optional[Callable[[int], None]] = None
    # this epoch began under another layout: its examples consumed before, and the batch count at
    # which this layout took over (batches are counted from there)
    _consumed_before: Optional[np.ndarray] = None
    _layout_start: int = 0

    def _sampler(self) -> BucketBatchSampler:
        if not isinstance(self.batch_sampler, BucketBatchSampler):
            raise TypeError(f"ResumableDataLoader needs a BucketBatchSampler, got {type(self.batch_sampler).__name__}")
        return self.batch_sampler

    def state_dict(self) -> dict:
        s = self._sampler()
        done = int(self.progress()) if self.progress is not None else 0
        resumed_here = self._consumed_before is not None and s.exclude_epoch == s.epoch
        return {
            "epoch": int(s.epoch),
            "batches_done": done,
            "n_batches": len(s),  # per replica
            "n_examples": len(s.lengths),
            "seed": int(s.seed),
            "bucket_factor": int(s.bucket_factor),
            "batch_size": int(s.batch_size),
            "num_replicas": int(s.num_replicas),
            "layout_start": self._layout_start if resumed_here else 0,
            "consumed_before": self._consumed_before.tolist() if resumed_here else None,
        }

    def load_state_dict(self, state: dict) -> None:
        s = self._sampler()
        epoch = int(state.get("epoch", 0))
        n_examples = state.get("n_examples", _examples_from_batches(state, len(s.lengths)))
        now = {"n_examples": len(s.lengths), "seed": s.seed, "bucket_factor": s.bucket_factor}
        saved = {"n_examples": n_examples, "seed": state.get("seed"), "bucket_factor": state.get("bucket_factor", s.bucket_factor)}
        changed = [f"{k} {saved[k]} in the checkpoint vs {v} now" for k, v in now.items() if saved[k] != v]
        if changed:
            rank_zero_warn(
                "gridlm: the training data changed since the checkpoint (" + "; ".join(changed) + "); "
                f"resuming at the start of epoch {epoch}, not exactly where it stopped"
            )
            s.resume_at(epoch, 0)
            return
        before = state.get("consumed_before")
        start = int(state.get("layout_start", 0))
        done = int(state["batches_done"])
        if state.get("batch_size") == s.batch_size and state.get("num_replicas") == s.num_replicas:
            s.resume_at(epoch, done - start, exclude=before)  # the same batches as the uninterrupted run
            self._consumed_before = None if before is None else np.asarray(before, dtype=np.int64)
            self._layout_start = start
            return
        old = BucketBatchSampler(
            s.lengths, int(state["batch_size"]), shuffle=True, seed=s.seed, bucket_factor=s.bucket_factor,
            num_replicas=int(state["num_replicas"]), rank=0, fill=s.fill, lengths_for=s.lengths_for,
        )  # fmt: skip
        if before is not None:
            old.resume_at(epoch, 0, exclude=before)
        consumed = old.consumed(epoch, done - start)
        s.resume_at(epoch, 0, exclude=consumed)
        remaining = s.batches_per_replica(epoch) if s.epoch == epoch else 0
        self._consumed_before, self._layout_start = consumed, len(s) - remaining
        if self.set_progress is not None:
            self.set_progress(len(s) - remaining)
        rank_zero_info(
            f"gridlm data: resuming epoch {epoch} on {s.num_replicas} replica(s) x batch {s.batch_size} from a checkpoint "
            f"of {state['num_replicas']} x {state['batch_size']}: {len(consumed)} of {len(s.lengths)} examples consumed, "
            f"the other {len(s.lengths) - len(consumed)} dealt as {remaining} batch(es) per replica"
        )


def _examples_from_batches(state: dict, n_now: int) -> Optional[int]:
    """Checkpoints written before ``n_examples`` was saved: the current count if it gives the
    saved number of batches per replica under the saved layout, else None (a changed dataset)."""
    try:
        per_replica = math.ceil(math.ceil(n_now / int(state["batch_size"])) / int(state["num_replicas"]))
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return n_now if per_replica == state.get("n_batches") else None
