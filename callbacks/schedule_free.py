"""``ScheduleFreeMode``: keep schedule-free optimizers in the right mode.

Schedule-free optimizers (Defazio et al. 2024, ``schedulefree``) train on one sequence of
weights ``y`` and evaluate on their average ``x``; the caller must call ``optimizer.train()``
before training steps and ``optimizer.eval()`` before evaluation or saving. This callback does
it for every schedule-free optimizer of the module:

- ``train()`` at the start of every training batch (cheap no-op when already in train mode);
- ``eval()`` before validation (the sanity check included), test and predict;
- every saved checkpoint holds the averaged weights ``x`` and the optimizer state in eval mode,
  whatever mode training was in when the checkpoint was written. Writing it in train mode
  switches ``y -> x -> y'`` (``y'`` = ``train(x)``, equal to ``y`` only up to rounding); on resume
  the optimizer is restored in eval mode and the next training batch switches it to the same
  ``y'``, so a resumed run continues bit for bit.
- several checkpoints written at one step (``step=N.ckpt`` and ``last.ckpt`` of one
  ``ModelCheckpoint``, or two callbacks) switch once: while no parameter has changed since the
  last switch (``Tensor._version``), the later ones reuse the first one's ``x`` and optimizer
  state. A second round trip ``y' -> x' -> y''`` would leave the uninterrupted run at ``y''``
  while a run resumed from either file starts at ``y'`` (weights ~1e-9 apart after a few steps).

Optimizers without ``train``/``eval`` methods are left alone.
"""

from __future__ import annotations

from typing import Optional

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


def _versions(pl_module: "L.LightningModule", opts: list[torch.optim.Optimizer]) -> tuple[int, ...]:
    """In-place modification counters of the weights and of every optimizer state tensor."""
    tensors = [*pl_module.parameters(), *(v for o in opts for st in o.state.values() for v in st.values() if torch.is_tensor(v))]
    return tuple(t._version for t in tensors)


class ScheduleFreeMode(L.Callback):
    def __init__(self) -> None:
        # (global step, versions after the round trip, state dict, optimizer states) of the last
        # checkpoint written in train mode: reused while nothing has changed since
        self._last_save: Optional[tuple[int, tuple[int, ...], dict, Optional[list]]] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._last_save = None  # a new step: the weights will change (and the copy is freed)
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
        self._last_save = None
        self._eval(trainer)  # the module handed back after fit holds the averaged weights

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        opts = [o for o in _schedule_free(trainer) if in_train_mode(o)]
        if not opts:
            return
        last = self._last_save
        if last is not None and last[0] == trainer.global_step and last[1] == _versions(pl_module, opts):
            checkpoint["state_dict"] = last[2]  # the same step's x, written a moment ago
            if "optimizer_states" in checkpoint and last[3] is not None:
                checkpoint["optimizer_states"] = last[3]
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
        self._last_save = (trainer.global_step, _versions(pl_module, opts), checkpoint["state_dict"], checkpoint.get("optimizer_states"))
