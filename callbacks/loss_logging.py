"""``LossLogging``: the training diagnostics a study compares, and a run summary JSON.

Every ``every_n_steps`` batches it logs

- ``train/loss_<role>``: mean loss per supervised token of each role (``demo_output``: the
  demonstration outputs, ``test_output``: the query output; other roles when the target policy
  supervises them), over all batches since the previous log, from ``pl_module._last_losses``;
  under DDP over the tokens of every rank (the per-role sums and counts are all-reduced with the
  token count, one collective per interval);
- ``train/loss_smooth``: exponential moving average of the step loss, bias-corrected as in Adam
  (Kingma & Ba 2015, sec. 3) so the first values are not pulled towards 0; under DDP the step
  loss of the logging rank (rank 0), like ``train/loss``;
- ``train/tokens_per_s``: real (non-pad) tokens per second of training, validation time excluded;
  ``train/tokens_seen``: real tokens since the start of training;
- ``train/grad_norm``: global L2 norm of the gradient after the step's last backward, before
  clipping (the module clips inside ``training_step``);
- ``train/lr``: the learning rate the step used; for schedule-free optimizers the warmed-up rate
  ``lr * min(1, (k+1)/warmup_steps)`` of ``schedulefree.AdamWScheduleFree.step``.

``train/pad_fraction`` is logged by the module itself. Per-step work stays on the device
(running sums); values are read to the host only at the logging interval.

At the end of fit it writes ``run_summary.json`` into ``trainer.log_dir``: final and best validation
metrics, every validation with the tokens seen at that point, wall time, tokens seen,
the resolved config and its hash, package versions and the git commit. A run that raises
writes the file too, with ``status`` ``failed``. ``gridlm-compare`` reads these files.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from gridlm.datamodules.tokens import ROLE_NAMES
from gridlm.modules.provenance import run_metadata

SUMMARY_FILE = "run_summary.json"
# best = min or max; a run records those its module logs (the refiner: loss and the exact matches)
VAL_METRICS = {
    "val/loss": "min",
    "val/cell_acc": "max",
    "val/exact_match": "max",
    "val/exact_match_draft": "max",
    "val/exact_match_refined": "max",
}


def effective_lr(group: dict) -> float:
    """Learning rate of the next optimizer step of a param group. Schedule-free groups (keys
    ``k`` and ``warmup_steps``) warm up linearly as ``AdamWScheduleFree.step`` does:
    ``lr * (k+1)/warmup_steps`` while ``k < warmup_steps``, then ``lr`` (``k`` = steps taken)."""
    lr = float(group["lr"])
    if "warmup_steps" in group and "k" in group:
        k, warmup = int(group["k"]), int(group["warmup_steps"])
        if k < warmup:
            return lr * (k + 1) / warmup
    return lr


def grad_norm(module: torch.nn.Module) -> Optional[torch.Tensor]:
    """Global L2 norm of the gradients of ``module`` (a 0-d tensor on their device), or None."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


class LossLogging(L.Callback):
    def __init__(self, every_n_steps: Optional[int] = None, ema_beta: float = 0.9, summary_file: str = SUMMARY_FILE) -> None:
        """
        Args:
            every_n_steps: log every this many training batches; None: ``trainer.log_every_n_steps``.
                Must be a multiple of ``trainer.log_every_n_steps`` (Lightning writes step
                metrics to the loggers only then).
            ema_beta: decay of the smoothed training loss (0.9: about the last 10 steps).
            summary_file: name of the run summary written into ``trainer.log_dir``.
        """
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"LossLogging.every_n_steps must be a positive integer or None, got {every_n_steps!r}")
        if not 0.0 <= ema_beta < 1.0:
            raise ValueError(f"LossLogging.ema_beta must be in [0, 1), got {ema_beta}")
        self.every_n_steps, self.ema_beta, self.summary_file = every_n_steps, ema_beta, summary_file
        # persistent across resume (state_dict)
        self.tokens_seen = 0  # real tokens of every training batch, all ranks
        self.validations: list[dict] = []  # one entry per validation (sanity check excluded)
        self.train_time = 0.0  # seconds of training (validation excluded)
        self._log_dir: Optional[str] = None  # trainer.log_dir, read on every rank at fit start
        self._reset_device_state()

    def _reset_device_state(self) -> None:
        self._role_sums: Optional[torch.Tensor] = None  # (n_roles,) loss sums since the last log
        self._role_counts: Optional[torch.Tensor] = None  # (n_roles,) token counts since the last log
        self._tokens: Optional[torch.Tensor] = None  # real tokens since the last log (this rank)
        self._ema: Optional[torch.Tensor] = None  # biased EMA of the step loss
        self._ema_steps = 0
        self._seen_losses: Any = None  # the _last_losses tuple already consumed
        self._pending_norm: Optional[torch.Tensor] = None
        self._step_stats: dict[str, Any] = {}  # grad norm / lr of the logging step

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        n, base = self.every_n_steps, trainer.log_every_n_steps
        self._every = n or base or 1
        if n is not None and base and n % base != 0:
            raise ValueError(
                f"LossLogging.every_n_steps={n} must be a multiple of trainer.log_every_n_steps={base}; "
                "other steps' metrics would never reach the loggers"
            )

    def on_fit_start(self, trainer, pl_module) -> None:
        # ``trainer.log_dir`` is a collective (a broadcast from rank 0) under DDP: read it here, on
        # every rank, never inside the rank-zero-only write (rank 0 alone would wait forever)
        self._log_dir = trainer.log_dir
        self._fit_start = time.perf_counter()
        self._mark = time.perf_counter()  # start of the current logging window
        self._window_val_time = 0.0  # validation seconds inside the window
        self._window_time = 0.0  # training seconds of the window, set at each log

    def _is_log_step(self, trainer) -> bool:
        # the batch being processed is number total_batch_idx + 1 (Lightning's logging step + 1)
        return (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % self._every == 0

    # ------------------------------------------------------------------ gradients and lr
    def on_after_backward(self, trainer, pl_module) -> None:
        if self._is_log_step(trainer):  # the last backward of the step sees the full gradient
            self._pending_norm = grad_norm(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self._is_log_step(trainer):
            return
        norm = self._pending_norm if self._pending_norm is not None else grad_norm(pl_module)
        self._step_stats = {"train/lr": effective_lr(optimizer.param_groups[0])}
        if norm is not None:
            self._step_stats["train/grad_norm"] = norm
        self._pending_norm = None

    # ------------------------------------------------------------------ per batch
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        lengths = batch["lengths"].sum()
        self._tokens = lengths if self._tokens is None else self._tokens + lengths
        last = getattr(pl_module, "_last_losses", None)
        if last is not None and last is not self._seen_losses:  # a skipped (non-finite) step leaves it stale
            self._seen_losses = last
            losses, roles = last  # (N,), (N,)
            if self._role_sums is None:
                self._role_sums = torch.zeros(len(ROLE_NAMES), device=losses.device)
                self._role_counts = torch.zeros(len(ROLE_NAMES), device=losses.device)
            self._role_sums.index_add_(0, roles.long(), losses.float())
            self._role_counts.index_add_(0, roles.long(), torch.ones_like(losses, dtype=torch.float))
            step_loss = losses.float().mean() if losses.numel() else losses.new_zeros(())
            b = self.ema_beta
            self._ema = (1 - b) * step_loss if self._ema is None else b * self._ema + (1 - b) * step_loss
            self._ema_steps += 1
        if self._is_log_step(trainer):
            self._log(trainer, pl_module, batch["tokens"].shape[0])

    def _log(self, trainer, pl_module, batch_size: int) -> None:
        now = time.perf_counter()
        window = max(now - self._mark - self._window_val_time, 1e-9)
        self._mark, self._window_val_time = now, 0.0
        n = len(ROLE_NAMES)
        zeros = torch.zeros(n, device=pl_module.device)
        tokens = self._tokens if self._tokens is not None else torch.zeros((), device=pl_module.device)
        sums = self._role_sums if self._role_sums is not None else zeros
        counts = self._role_counts if self._role_counts is not None else zeros
        # one collective per interval, the same shape on every rank (a rank without supervised
        # tokens sends zeros): the real tokens and the per-role loss sums and counts of all ranks
        local = torch.cat([tokens.float().reshape(1), sums.to(zeros.device), counts.to(zeros.device)])  # (1 + 2 * n_roles,)
        total = trainer.strategy.reduce(local, reduce_op="sum").tolist()  # host sync: once per interval
        tokens, sums, counts = int(total[0]), total[1 : 1 + n], total[1 + n :]
        self.tokens_seen += tokens
        self.train_time += window
        metrics: dict[str, float] = {"train/tokens_per_s": tokens / window, "train/tokens_seen": float(self.tokens_seen)}
        for name, s, c in zip(ROLE_NAMES, sums, counts):
            if c > 0:
                metrics[f"train/loss_{name}"] = s / c
        if self._role_sums is not None:
            self._role_sums.zero_()
            self._role_counts.zero_()
        if self._ema is not None:
            metrics["train/loss_smooth"] = float(self._ema) / (1 - self.ema_beta**self._ema_steps)
        for k, v in self._step_stats.items():
            metrics[k] = float(v)
        self._tokens, self._step_stats = None, {}
        for k, v in metrics.items():
            pl_module.log(k, v, on_step=True, on_epoch=False, batch_size=batch_size)
        self.last_logged = metrics

    def tokens_now(self, trainer) -> int:
        """Training tokens seen so far, every rank's, including those since the last log (without
        resetting the logging window). A collective under DDP: call it on every rank."""
        if self._tokens is None:
            return self.tokens_seen
        return self.tokens_seen + int(trainer.strategy.reduce(self._tokens.float(), reduce_op="sum").item())

    # ------------------------------------------------------------------ validation
    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if hasattr(self, "_val_start") and hasattr(self, "_mark"):
            self._window_val_time += time.perf_counter() - self._val_start
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        entry = {"step": trainer.global_step, "tokens_seen": self.tokens_now(trainer)}
        for key in VAL_METRICS:
            if key in trainer.callback_metrics:
                entry[key] = float(trainer.callback_metrics[key])
        self.validations.append(entry)

    # ------------------------------------------------------------------ summary
    def summary(self, trainer, pl_module, status: str = "finished", error: Optional[str] = None, log_dir: Optional[str] = None) -> dict:
        """The run summary as a dict (what ``run_summary.json`` holds)."""
        pending = int(self._tokens.sum().item()) if self._tokens is not None else 0
        tokens_seen = self.tokens_seen + pending
        wall = time.perf_counter() - self._fit_start if hasattr(self, "_fit_start") else 0.0
        best: dict[str, dict] = {}
        for key, mode in VAL_METRICS.items():
            seen = [v for v in self.validations if key in v and math.isfinite(v[key])]
            if seen:
                pick = (min if mode == "min" else max)(seen, key=lambda v: v[key])
                best[key] = {"value": pick[key], "step": pick["step"], "tokens_seen": pick["tokens_seen"]}
        final = {k: v for k, v in (self.validations[-1].items() if self.validations else []) if k in VAL_METRICS}
        if self._ema is not None and self._ema_steps:
            final["train/loss_smooth"] = float(self._ema) / (1 - self.ema_beta**self._ema_steps)
        train_time = self.train_time or wall
        out = {
            "status": status,
            "error": error,
            "steps": trainer.global_step,
            "tokens_seen": tokens_seen,
            "wall_time_s": round(wall, 3),
            "train_time_s": round(train_time, 3),
            "tokens_per_s": tokens_seen / train_time if train_time > 0 else None,
            "final": final,
            "best": best,
            "validations": self.validations,
            "log_dir": log_dir,
        }
        out.update(run_metadata(getattr(pl_module, "resolved_config", None)))
        return out

    def _write(self, trainer, pl_module, status: str, error: Optional[str] = None) -> None:
        # every rank gets here; the folder read at fit start needs no collective (trainer.log_dir
        # broadcasts under DDP, so it is read here only when fit failed before it started)
        log_dir = self._log_dir if self._log_dir is not None else trainer.log_dir
        if log_dir is not None:
            self._write_file(Path(log_dir), trainer, pl_module, status, error)

    @rank_zero_only
    def _write_file(self, log_dir: Path, trainer, pl_module, status: str, error: Optional[str]) -> None:
        path = log_dir / self.summary_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.summary(trainer, pl_module, status, error, str(log_dir)), indent=2, default=str))
        tmp.replace(path)
        self.summary_path = path

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, "finished")
        self._log_dir = None  # a later fit of the same callback resolves its own folder

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.state.fn == "fit":
            self._write(trainer, pl_module, "failed", " ".join(f"{type(exception).__name__}: {exception}".split()))
            self._log_dir = None

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"tokens_seen": self.tokens_seen, "validations": self.validations, "train_time": self.train_time}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens_seen = int(state_dict.get("tokens_seen", 0))
        self.validations = list(state_dict.get("validations", []))
        self.train_time = float(state_dict.get("train_time", 0.0))
