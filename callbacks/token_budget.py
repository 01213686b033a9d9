"""``TokenBudget``: stop fit once a number of training tokens has been seen (equal compute).

A study compares variants whose steps cost different numbers of tokens (``row_end`` lengthens
every grid; bucketing and packing differ with sequence lengths), so equal steps are not equal
work. ``gridlm fit --max_tokens N`` adds this callback: after every training batch it reads
``LossLogging``'s count (non-pad tokens of every training batch, summed over ranks, kept across
resume) and sets ``trainer.should_stop`` once it reaches ``N``. Every rank reads the same
all-reduced count, so all stop at the same step; Lightning then runs the final validation.
The count is exact per batch: a run stops after the first step that reaches the budget (it
overshoots by less than one global batch). ``trainer.max_steps`` / ``max_time`` still cap the
run (a time cap hit first leaves it short of the budget; ``gridlm-compare`` flags such runs).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from gridlm.callbacks.loss_logging import LossLogging


class TokenBudget(L.Callback):
    def __init__(self, max_tokens: int) -> None:
        """
        Args:
            max_tokens: stop training once this many training tokens (non-pad, all devices) are seen.
        """
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer (training tokens), got {max_tokens!r}")
        self.max_tokens = max_tokens
        self._counter: LossLogging | None = None
        self.stopped_at: int | None = None  # tokens seen when the budget stopped the run

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        callbacks = list(trainer.callbacks)
        counters = [i for i, c in enumerate(callbacks) if isinstance(c, LossLogging)]
        if not counters or counters[0] > callbacks.index(self):
            raise ValueError(
                "TokenBudget reads LossLogging's token count and must come after it in trainer.callbacks; "
                "use `gridlm fit --max_tokens N`, which places it there"
            )
        self._counter = callbacks[counters[0]]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        seen = self._counter.tokens_now(trainer)  # one all-reduce per step under DDP
        if seen >= self.max_tokens and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_at = seen
            rank_zero_info(f"gridlm: token budget reached: {seen} >= max_tokens={self.max_tokens} at step {trainer.global_step}")
