"""``ValExamples``: per-example validation results as a CSV beside ``metrics.csv``.

After every validation (the sanity check excluded) it appends one row per validation example to
``<log_dir>/val_examples.csv`` (``test_examples.csv`` for ``gridlm test``):

| column        | meaning                                                               |
|---------------|-----------------------------------------------------------------------|
| `step`        | optimizer steps at this validation                                    |
| `tokens_seen` | training tokens seen (``LossLogging``'s count; empty outside fit)     |
| `task_id`, `test_index` | the example: a task and one of its test pairs               |
| `exact_match` | 1 / 0 for the greedy decode; **empty** when not decoded (``n_generate``) |
| `loss`        | nats per token of the example's query output                          |
| `tokens`      | supervised query-output tokens (``val/loss`` is their token-weighted mean) |
| `encoding`, `order`, `seed` | the run's positional encoding, serialization order, seed    |

The rows come from the module's ``eval_examples`` (``gridlm.modules.eval_examples``; a module
without them writes nothing). Under DDP every rank's rows are gathered and rank 0 writes them,
sorted by task and test index, so the file does not depend on the number of devices.
``gridlm-compare`` pairs the last validation's rows of two variants
(``gridlm.experiments.stats``) without re-running anything. The log folder is read on every rank
(``trainer.log_dir`` broadcasts under DDP), as ``LossLogging`` does.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from gridlm.callbacks.loss_logging import LossLogging
from gridlm.callbacks.wandb_tracking import describe_run

EXAMPLES_FILE = "val_examples.csv"
TEST_EXAMPLES_FILE = "test_examples.csv"
FIELDS = ("step", "tokens_seen", "task_id", "test_index", "exact_match", "loss", "tokens", "encoding", "order", "seed")


def gather_rows(trainer: "L.Trainer", rows: list[dict]) -> list[dict]:
    """Every rank's rows on every rank (``all_gather_object``); the rows themselves on one device."""
    if trainer.world_size <= 1:
        return rows
    import torch.distributed as dist

    gathered: list = [None] * trainer.world_size
    dist.all_gather_object(gathered, rows)
    return [r for part in gathered for r in part]


class ValExamples(L.Callback):
    def __init__(self, filename: str = EXAMPLES_FILE, test_filename: str = TEST_EXAMPLES_FILE) -> None:
        """
        Args:
            filename: CSV of validation examples, written into ``trainer.log_dir``.
            test_filename: CSV of ``gridlm test`` examples.
        """
        self.filename, self.test_filename = filename, test_filename
        self._started: set[Path] = set()  # files this fit/validate/test has written (later writes append)
        self.last_path: Optional[Path] = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._started = set()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._save(trainer, pl_module, self.filename)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, self.test_filename)

    def _save(self, trainer, pl_module, filename: str) -> None:
        rows = getattr(pl_module, "eval_examples", None)
        if rows is None:
            return
        rows = gather_rows(trainer, list(rows))  # every rank takes part in each collective below
        tokens: Optional[int] = None
        if trainer.state.fn == "fit":
            counter = next((c for c in trainer.callbacks if isinstance(c, LossLogging)), None)
            tokens = counter.tokens_now(trainer) if counter is not None else None
        log_dir = trainer.log_dir
        if log_dir is None:
            return
        info = describe_run(pl_module, getattr(pl_module, "resolved_config", None), None)
        seed = info["seed"] if info["seed"] is not None else os.environ.get("PL_GLOBAL_SEED", "")
        run = {"step": trainer.global_step, "tokens_seen": tokens, "encoding": info["encoding"], "order": info["order"], "seed": seed}
        rows = sorted(rows, key=lambda r: (str(r["task_id"]), r["test_index"]))
        self._write(Path(log_dir) / filename, [{**r, **run} for r in rows])

    @rank_zero_only
    def _write(self, path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        first = path not in self._started
        with open(path, "w" if first else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            if first:
                writer.writeheader()
            for r in rows:
                writer.writerow({k: "" if r.get(k) is None else r[k] for k in FIELDS})
        self._started.add(path)
        self.last_path = path


def read_examples(path: str | Path, last_only: bool = True) -> list[dict]:
    """Rows of a ``val_examples.csv`` with typed values (``exact_match`` and ``loss`` None when
    empty); ``last_only``: only the last validation's rows (the largest ``step``)."""
    with open(path, newline="") as f:
        raw = list(csv.DictReader(f))
    rows = []
    for r in raw:
        rows.append(
            {
                "step": int(r["step"]),
                "tokens_seen": int(r["tokens_seen"]) if r["tokens_seen"] else None,
                "task_id": r["task_id"],
                "test_index": int(r["test_index"]),
                "exact_match": float(r["exact_match"]) if r["exact_match"] != "" else None,
                "loss": float(r["loss"]) if r["loss"] != "" else None,
                "tokens": int(r["tokens"]),
                "encoding": r["encoding"],
                "order": r["order"],
                "seed": r["seed"],
            }
        )
    if last_only and rows:
        last = max(r["step"] for r in rows)
        rows = [r for r in rows if r["step"] == last]
    return rows
