"""``ScheduleFreeMode``: keep schedule-free optimizers in the right mode.

Schedule-free optimizers (Defazio et al. 2024, ``schedulefree``) train on one sequence of
weights ``y`` and evaluate on their average ``x``; the caller must call ``optimizer.train()``
before training steps and ``optimizer.eval()`` before evaluation or saving. This callback does
it for every schedule-free optimizer of the module:

- ``train()`` at the start of every training batch (cheap no-op when already in train mode);
- ``eval()`` before validation (the sanity check included), test and predict;
- every saved checkpoint holds the averaged weights ``x`` and the optimizer state in eval mode,
  whatever mode training was in when the checkpoint was written. On resume the optimizer is
  restored in eval mode and the next training batch switches it back to ``y`` exactly.

Optimizers without ``train``/``eval`` methods are left alone.
"""

from __future__ import annotations

import lightning as L
import torch


def _schedule_free(trainer: "L.Trainer") -> list[torch.optim.Optimizer]:
    return [
        opt
        for opt in trainer.optimizers
        if callable(getattr(opt, "train", None))
        and callable(getattr(opt, "eval", None))
        and all("train_mode" in g for g in opt.param_groups)
    ]


def in_train_mode(opt: torch.optim.Optimizer) -> bool:
    return bool(opt.param_groups[0]["train_mode"])


class ScheduleFreeMode(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for opt in _schedule_free(trainer):
            if not in_train_mode(opt):
                opt.train()

    def _eval(self, trainer) -> None:
        for opt in _schedule_free(trainer):
            if in_train_mode(opt):
                opt.eval()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._eval(trainer)

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval(trainer)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._eval(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._eval(trainer)  # the module handed back after fit holds the averaged weights

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        opts = [o for o in _schedule_free(trainer) if in_train_mode(o)]
        if not opts:
            return
        # The state dict was collected in train mode (weights y): swap to x, re-collect, swap back.
        for opt in opts:
            opt.eval()
        try:
            checkpoint["state_dict"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            if "optimizer_states" in checkpoint:
                checkpoint["optimizer_states"] = [trainer.strategy.optimizer_state(o) for o in trainer.optimizers]
        finally:
            for opt in opts:
                opt.train()
