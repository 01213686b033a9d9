"""``LearningCurve``: a training-time budget and a learning curve measured on the way.

``make learn`` trains a recipe for a fixed wall-clock budget and plots exact match and loss
against tokens seen. Lightning's ``max_time`` counts validation and callbacks too, so a slower
evaluation would shorten training; this callback counts *training* time only:

- every ``every_s`` seconds of training it evaluates the module (in eval mode, with the averaged
  weights of a schedule-free optimizer) on a small fixed set: nats per token of the query outputs
  and greedy exact match, and records ``(step, tokens_seen, train_s, loss, exact, n)``;
- it stops the fit once ``budget_s`` seconds of training have passed (``None``: no budget);
- the points go to the loggers (``curve/loss``, ``curve/exact_match``) and to
  ``<log_dir>/learning_curve.csv``.

The curve set is ``n_examples`` test pairs of ``source`` (default: the DataModule's validation
source), serialized exactly as the DataModule serializes (order, row_end, max_seq_len, synthetic
knobs), so the same callback works from a YAML config::

    trainer:
      callbacks:
        - class_path: gridlm.callbacks.learning_curve.LearningCurve
          init_args: {every_s: 120, budget_s: 1800, n_examples: 64}
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from gridlm.callbacks.schedule_free import _schedule_free, in_train_mode
from gridlm.datamodules.tokens import ROLE_TEST_OUTPUT

CURVE_FILE = "learning_curve.csv"
FIELDS = ("step", "tokens_seen", "train_s", "loss", "exact_match", "n_exact", "n")


def family_of(task_id: str) -> str:
    """The family of a synthetic task id (``synthetic-val-0-00003-flip_h`` -> ``flip_h``); other ids
    give their source's name (``arc``)."""
    return task_id.rsplit("-", 1)[-1] if task_id.startswith("synthetic") else "arc"


@torch.no_grad()
def evaluate(pl_module: "L.LightningModule", loader) -> list[dict]:
    """One row per example of ``loader``: ``task_id, test_index, family, exact (greedy decoding),
    loss (nats per query-output token, teacher-forced), tokens``, in eval mode."""
    was_training = pl_module.training
    pl_module.eval()
    rows = []
    try:
        for batch in loader:
            batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            losses, roles, _ = pl_module.token_losses(batch)
            query = roles == ROLE_TEST_OUTPUT  # (N,) the held-out query outputs' tokens
            per_row = batch["target_mask"][:, 1:] & (batch["role"][:, 1:] == ROLE_TEST_OUTPUT)  # (B, T-1)
            counts = per_row.sum(1).tolist()
            row_losses = torch.split(losses[query], counts)
            for meta, d, row_loss in zip(batch["meta"], pl_module.decode_batch(batch), row_losses):
                target = meta["target"]
                exact = d.grid is not None and d.grid.shape == target.shape and bool((d.grid == target).all())
                rows.append({
                    "task_id": meta["task_id"], "test_index": meta["query"], "family": family_of(meta["task_id"]),
                    "exact": int(exact), "loss": float(row_loss.mean()) if len(row_loss) else float("nan"), "tokens": len(row_loss),
                })  # fmt: skip
    finally:
        pl_module.train(was_training)
    return rows


def summarize(rows: list[dict]) -> dict:
    """``loss`` (per token, over every example's query-output tokens), ``exact_match``, counts."""
    tokens = sum(r["tokens"] for r in rows)
    loss = sum(r["loss"] * r["tokens"] for r in rows if r["tokens"]) / max(tokens, 1)
    hits = sum(r["exact"] for r in rows)
    return {"loss": loss, "exact_match": hits / max(len(rows), 1), "n_exact": hits, "n": len(rows)}


class LearningCurve(L.Callback):
    def __init__(
        self,
        every_s: float = 120.0,
        budget_s: Optional[float] = None,
        n_examples: int = 64,
        source: Optional[str] = None,
        at_start: bool = True,
    ) -> None:
        """
        Args:
            every_s: seconds of training between two curve points.
            budget_s: stop the fit after this many seconds of training (evaluation excluded); None: no budget.
            n_examples: test pairs in the curve set (the first ones of ``source``'s validation set).
            source: the curve set's task source; None: the DataModule's validation source.
            at_start: also measure the untrained model (a point at 0 tokens).
        """
        if every_s <= 0:
            raise ValueError(f"LearningCurve.every_s must be > 0 seconds, got {every_s}")
        if budget_s is not None and budget_s <= 0:
            raise ValueError(f"LearningCurve.budget_s must be > 0 seconds or null, got {budget_s}")
        if n_examples < 1:
            raise ValueError(f"LearningCurve.n_examples must be >= 1, got {n_examples}")
        self.every_s, self.budget_s, self.n_examples, self.source, self.at_start = every_s, budget_s, n_examples, source, at_start
        self.points: list[dict] = []
        self.train_s = 0.0  # training seconds so far (evaluation excluded)
        self.tokens_seen = 0
        self._batch_t0: Optional[float] = None
        self._next = every_s
        self._loader = None

    # ------------------------------------------------------------------ the curve set
    def _build_loader(self, trainer: "L.Trainer"):
        from gridlm.datamodules.datamodule import GridDataModule

        dm = trainer.datamodule
        if not isinstance(dm, GridDataModule):
            raise TypeError(f"LearningCurve needs a GridDataModule, got {type(dm).__name__}")
        source = self.source or dm._source_of("val")
        knobs = {k: v for k, v in dm.hparams.items() if k.startswith("synthetic_") or k in ("n_synthetic", "on_invalid")}
        curve = GridDataModule(
            source=source, val_source=source, order=dm.order, max_seq_len=dm.max_seq_len, batch_size=dm.batch_size,
            seed=dm.seed, target_policy=dm.target_policy, row_end=dm.row_end, max_val_examples=self.n_examples,
            **{**knobs, "n_synthetic": max(self.n_examples, knobs.get("n_synthetic", 0))},
        )  # fmt: skip
        curve.setup("validate")
        return curve.val_dataloader()

    def measure(self, pl_module: "L.LightningModule") -> dict:
        """Loss per query-output token and greedy exact match of the module on the curve set."""
        return summarize(evaluate(pl_module, self._loader))

    def _record(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        opts = [o for o in _schedule_free(trainer) if in_train_mode(o)]
        for opt in opts:  # evaluate the averaged weights, as validation does
            opt.eval()
        try:
            point = {"step": trainer.global_step, "tokens_seen": self.tokens_seen, "train_s": round(self.train_s, 2), **self.measure(pl_module)}
        finally:
            for opt in opts:
                opt.train()
        self.points.append(point)
        for logger in trainer.loggers:
            logger.log_metrics({"curve/loss": point["loss"], "curve/exact_match": point["exact_match"], "curve/tokens_seen": float(self.tokens_seen)}, step=trainer.global_step)
        self._write(trainer)

    @rank_zero_only
    def _write(self, trainer: "L.Trainer") -> None:
        folder = trainer.log_dir or trainer.default_root_dir
        if not folder:
            return
        path = Path(folder) / CURVE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(self.points)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._loader = self._build_loader(trainer)  # points and clocks survive a resume (state_dict)

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.at_start and not self.points:
            self._record(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._batch_t0 is not None:
            self.train_s += time.perf_counter() - self._batch_t0
            self._batch_t0 = None
        lengths = batch["lengths"]
        if trainer.world_size > 1:
            lengths = trainer.strategy.reduce(lengths.sum().float(), reduce_op="sum")
        self.tokens_seen += int(lengths.sum())
        train_s = self.train_s
        if trainer.world_size > 1:  # every rank decides alike: the slowest rank's clock
            train_s = float(trainer.strategy.reduce(torch.tensor(train_s, device=pl_module.device), reduce_op="max"))
        if train_s >= self._next:
            self._record(trainer, pl_module)
            self._next = train_s + self.every_s
        if self.budget_s is not None and train_s >= self.budget_s:
            trainer.should_stop = True

    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self.points or self.points[-1]["step"] != trainer.global_step:
            self._record(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"points": self.points, "train_s": self.train_s, "tokens_seen": self.tokens_seen, "next": self._next}

    def load_state_dict(self, state: dict) -> None:
        self.points = list(state.get("points", []))
        self.train_s, self.tokens_seen = float(state.get("train_s", 0.0)), int(state.get("tokens_seen", 0))
        self._next = float(state.get("next", self.every_s))
