"""``ResumableDataLoader``: a training DataLoader that resumes mid-epoch exactly.

Lightning 2.x saves ``state_dict()`` of every training dataloader that has ``state_dict`` /
``load_state_dict`` (its ``_Stateful`` protocol; ``FitLoop.on_save_checkpoint`` ->
``checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]``) and calls
``load_state_dict`` before it creates the first iterator of a resumed fit
(``FitLoop.setup_data`` -> ``_load_combined_loader_states``). Without it Lightning restarts the
epoch from its first batch and warns that the result is unreliable.

The state is the sampler's epoch and the number of batches of that epoch the trainer has
*processed* (``fit_loop.epoch_loop.batch_progress.current.processed``), not the number the
sampler has yielded: the trainer prefetches one batch and worker processes prefetch more, so
the sampler is always ahead of training. Batches are a pure function of ``(seed, epoch)``
(``BucketBatchSampler``) and augmentations of ``(seed, epoch, index)`` (``GridDataset``), so
skipping the processed batches reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

from typing import Callable, Optional

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from gridlm.datamodules.batching import BucketBatchSampler


class ResumableDataLoader(DataLoader):
    """DataLoader over a :class:`BucketBatchSampler` whose position Lightning checkpoints.

    ``progress`` (set by the DataModule) returns how many batches of the current epoch the
    trainer has processed; without it the state records 0 (restart the epoch)."""

    progress: Optional[Callable[[], int]] = None

    def _sampler(self) -> BucketBatchSampler:
        if not isinstance(self.batch_sampler, BucketBatchSampler):
            raise TypeError(f"ResumableDataLoader needs a BucketBatchSampler, got {type(self.batch_sampler).__name__}")
        return self.batch_sampler

    def state_dict(self) -> dict:
        s = self._sampler()
        done = int(self.progress()) if self.progress is not None else 0
        return {
            "epoch": int(s.epoch),
            "batches_done": done,
            "n_batches": len(s),  # per replica; a changed dataset or batch size cannot resume exactly
            "seed": int(s.seed),
            "batch_size": int(s.batch_size),
            "num_replicas": int(s.num_replicas),
        }

    def load_state_dict(self, state: dict) -> None:
        s = self._sampler()
        now = {"n_batches": len(s), "seed": s.seed, "batch_size": s.batch_size, "num_replicas": s.num_replicas}
        changed = [f"{k} {state.get(k)} in the checkpoint vs {v} now" for k, v in now.items() if state.get(k) != v]
        if changed:
            rank_zero_warn(
                "gridlm: the training data changed since the checkpoint (" + "; ".join(changed) + "); "
                f"resuming at the start of epoch {state.get('epoch', 0)}, not exactly where it stopped"
            )
            s.resume_at(int(state.get("epoch", 0)), 0)
            return
        s.resume_at(int(state["epoch"]), int(state["batches_done"]))
