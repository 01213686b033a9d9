"""``ProgressLines``: a progress bar made of whole lines, for logs that are not a terminal.

Lightning's bars (rich, tqdm) redraw one line in place: piped into a file or a CI log, the rich
bar prints nothing until a stage ends. ``ProgressLines`` is a Lightning ``ProgressBar`` (so it
replaces the default bar) that prints one plain line at the first training step, then at least
every ``every_s`` seconds while training, validating, testing or predicting, and one when each
stage ends::

    gridlm fit: step 120/600  loss 1.234  12.3k tok/s  1:02 elapsed  4:08 left
    gridlm fit: validating, batch 3/8  0:40 elapsed  1:10 left
    gridlm fit: done, 600 steps in 5:21  loss 0.815
    gridlm validate: done, 8 batches in 0:31  val/cell_acc 0.710  val/exact_match 0.125  val/loss 0.815

Use it from the command line with ``--trainer.callbacks+=gridlm.callbacks.progress.ProgressLines``
(``--trainer.callbacks.every_s 10`` for another interval); ``make demo`` does.

- loss: ``train/loss_smooth`` (``LossLogging``'s moving average) when logged, else ``train/loss``;
- tokens/s: real (non-pad) tokens of this process's batches over the training time since the
  previous line, validation excluded (``tok/s/rank`` under DDP: ranks are not summed, which
  would need a collective);
- time left: the steps left at the rate so far (validation time included, so it is amortized),
  or what ``trainer.max_time`` leaves, whichever is less.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import ProgressBar, Timer


def fmt_duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    s = max(0, int(round(seconds)))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_rate(per_s: float) -> str:
    return f"{per_s / 1e6:.1f}M" if per_s >= 1e6 else f"{per_s / 1e3:.1f}k" if per_s >= 1e3 else f"{per_s:.0f}"


def _total(n: Any) -> Optional[int]:
    """A finite batch or step count, else None (``inf``, ``-1``, missing)."""
    if isinstance(n, (list, tuple)):
        n = sum(n) if n else None
    if n is None or (isinstance(n, float) and not math.isfinite(n)) or n < 0:
        return None
    return int(n)


class ProgressLines(ProgressBar):
    """Plain progress lines every ``every_s`` seconds (see the module docstring)."""

    _clock = staticmethod(time.monotonic)  # tests replace it with a fake clock

    def __init__(self, every_s: float = 30.0, prefix: str = "gridlm") -> None:
        """
        Args:
            every_s: seconds between two progress lines (0: a line after every batch).
            prefix: first word of every line.
        """
        super().__init__()
        if not isinstance(every_s, (int, float)) or not every_s >= 0:
            raise ValueError(f"ProgressLines.every_s must be a number of seconds >= 0, got {every_s!r}")
        self.every_s, self.prefix = float(every_s), prefix
        self._enabled = True
        self._last: Optional[float] = None  # clock time of the last line
        self._stage_t0: dict[str, float] = {}  # clock time each running loop started
        self._step0 = 0  # global step when training started (a resumed run counts from there)
        self._tokens: Any = 0  # real tokens since the last training line (a device tensor once counted)
        self._window_t0 = 0.0  # clock time of the last training line
        self._window_eval = 0.0  # validation seconds since then

    # ---------------------------------------------------------------- ProgressBar interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _emit(self, text: str) -> None:
        if self._enabled:
            print(f"{self.prefix} {self._stage_name()}: {text}", flush=True)
        self._last = self._clock()

    def _stage_name(self) -> str:
        fn = self.trainer.state.fn
        return str(getattr(fn, "value", fn))  # TrainerFn.FITTING -> "fit"

    def _due(self) -> bool:
        return self._last is None or self._clock() - self._last >= self.every_s

    # ---------------------------------------------------------------- training
    def on_train_start(self, trainer, pl_module) -> None:
        now = self._clock()
        self._stage_t0["train"] = self._window_t0 = now
        self._step0, self._tokens, self._window_eval, self._last = trainer.global_step, 0, 0.0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        lengths = batch.get("lengths") if isinstance(batch, dict) else None
        if torch.is_tensor(lengths):
            self._tokens = self._tokens + lengths.sum()  # stays on the device until a line is printed
        if self._due():
            self._emit(self._train_line(trainer))

    def _train_line(self, trainer) -> str:
        now = self._clock()
        step, total = trainer.global_step, _total(trainer.max_steps) or _total(trainer.estimated_stepping_batches)
        parts = [f"step {step}/{total}" if total else f"step {step}"]
        loss = self._metric(trainer, "train/loss_smooth", "train/loss")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        train_s = now - self._window_t0 - self._window_eval
        if torch.is_tensor(self._tokens) and train_s > 0:
            per_rank = "/rank" if trainer.world_size > 1 else ""
            parts.append(f"{fmt_rate(float(self._tokens) / train_s)} tok/s{per_rank}")
        self._tokens, self._window_t0, self._window_eval = 0, now, 0.0
        elapsed = now - self._stage_t0["train"]
        parts.append(f"{fmt_duration(elapsed)} elapsed")
        left = self._train_left(trainer, step, total, elapsed)
        if left is not None:
            parts.append(f"{fmt_duration(left)} left")
        return "  ".join(parts)

    def _train_left(self, trainer, step: int, total: Optional[int], elapsed: float) -> Optional[float]:
        estimates = []
        done = step - self._step0
        if total and done > 0:
            estimates.append((total - step) * elapsed / done)
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and timer.time_remaining() is not None:
            estimates.append(max(0.0, timer.time_remaining()))
        return min(estimates) if estimates else None

    def on_train_end(self, trainer, pl_module) -> None:
        steps = trainer.global_step - self._step0
        loss = self._metric(trainer, "train/loss_smooth", "train/loss")
        text = f"done, {steps} steps in {fmt_duration(self._clock() - self._stage_t0.pop('train', self._clock()))}"
        self._emit(text + (f"  loss {loss:.4g}" if loss is not None else ""))

    # ---------------------------------------------------------------- validation, test, predict
    def _eval_start(self, key: str) -> None:
        self._stage_t0[key] = self._clock()
        if self._stage_name() != "fit":  # a stage of its own: the first line after every_s
            self._last = self._clock()

    def _eval_batch(self, key: str, batch_idx: int, total: Any) -> None:
        if self.trainer.sanity_checking or not self._due():
            return
        done, total = batch_idx + 1, _total(total)
        elapsed = self._clock() - self._stage_t0[key]
        what = "validating, batch" if self._stage_name() == "fit" else "batch"
        parts = [f"{what} {done}/{total}" if total else f"{what} {done}", f"{fmt_duration(elapsed)} elapsed"]
        if total:
            parts.append(f"{fmt_duration(elapsed / done * (total - done))} left")
        self._emit("  ".join(parts))

    def _eval_end(self, key: str, total: Any, prefix: str) -> None:
        elapsed = self._clock() - self._stage_t0.pop(key, self._clock())
        if self._stage_name() == "fit":  # validation inside fit: its time is not training time
            self._window_eval += elapsed
            return
        metrics = sorted((k, v) for k, v in self.trainer.callback_metrics.items() if prefix and k.startswith(prefix))
        shown = "".join(f"  {k} {float(v):.4g}" for k, v in metrics if torch.is_tensor(v) and v.numel() == 1 or isinstance(v, (int, float)))
        n = _total(total)
        batches = "? batches" if n is None else f"{n} batch" + ("" if n == 1 else "es")
        self._emit(f"done, {batches} in {fmt_duration(elapsed)}{shown}")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._eval_start("validate")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        total = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        self._eval_batch("validate", batch_idx, total)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._eval_end("validate", trainer.num_val_batches, "val/")

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval_start("test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch("test", batch_idx, trainer.num_test_batches)

    def on_test_end(self, trainer, pl_module) -> None:
        self._eval_end("test", trainer.num_test_batches, "test/")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._eval_start("predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch("predict", batch_idx, trainer.num_predict_batches)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._eval_end("predict", trainer.num_predict_batches, "")

    @staticmethod
    def _metric(trainer, *names: str) -> Optional[float]:
        for name in names:
            v = trainer.callback_metrics.get(name)
            if v is not None:
                return float(v)
        return None
