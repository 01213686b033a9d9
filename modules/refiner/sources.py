"""Where the refiner's drafts come from: the frozen base model, corrupted targets, or nothing.

Three sources, mixed per training example by configuration (``draft_ratio`` base drafts,
``empty_ratio`` empty canvases, the rest corrupted targets), a pure function of
``(seed, epoch, index)``:

- ``base``: the frozen ``AutoregressiveGridModel``'s constrained greedy draft, through its public
  ``decode_batch(batch, rows)``. Drafts of the wrong shape are kept (the canvas can repair them);
  an unfinished draft (``None``) becomes the empty canvas.
- ``corrupt``: the target with one synthetic error (``datamodules/drafts.py: corrupt``), cell errors
  or a wrong shape (``crop``/``extend``): a denoising objective.
- ``empty``: no draft at all (every canvas cell *outside*): the refiner solves the task on its
  own, non-autoregressively.

Base drafts are cached per example: key ``(stage, dataset index, task id, augmentation)``, which
determines the base model's input exactly (the task id because a synthetic stream serves a new
task at the same index every epoch), so each is decoded at most once per epoch (validation drafts
once per run: the base model is frozen). Augmented training entries are dropped at the start of
every training epoch; un-augmented ones can recur and are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from gridlm.datamodules.augment import IDENTITY
from gridlm.datamodules.drafts import corrupt
from gridlm.modules.base_model import AutoregressiveGridModel
from gridlm.modules.checkpoints import model_from_checkpoint, read_checkpoint, resolve_checkpoint

Grid = Optional[np.ndarray]
DraftSource = Literal["base", "corrupt", "empty"]
DRAFT_SOURCES: tuple[str, ...] = ("base", "corrupt", "empty")


def load_base_model(path: str, order: str, row_end: bool) -> AutoregressiveGridModel:
    """A frozen base model (eval mode, no gradients) from a Lightning checkpoint of
    ``AutoregressiveGridModel`` (a path, or ``pretrained:<name>`` for shipped weights); its
    serialization must match the refiner's data."""
    path = resolve_checkpoint(path, "model.base_checkpoint")
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.base_checkpoint: no such file {path}")
    try:
        checkpoint = read_checkpoint(path, "model.base_checkpoint")  # one-line errors for files that are not checkpoints
    except ValueError as err:
        raise ValueError(f"model.base_checkpoint: {err}") from None
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, dict) and "draft_ratio" in hparams:  # the same tensor names and shapes would load silently
        raise ValueError(
            f"model.base_checkpoint: {path} is a RefinementNetwork checkpoint (bidirectional); "
            "pass the AutoregressiveGridModel checkpoint that writes the drafts"
        )
    base = model_from_checkpoint(checkpoint, AutoregressiveGridModel, path, "model.base_checkpoint")
    if (base.order, base.row_end) != (order, row_end):
        raise ValueError(
            f"model.base_checkpoint {path} was trained with order={base.order!r}, row_end={base.row_end}; "
            f"the data here has order={order!r}, row_end={row_end}; use the base model's data block"
        )
    base.eval()
    base.requires_grad_(False)
    return base


def same_grid(a: Grid, b: Grid) -> bool:
    return a is not None and b is not None and np.shape(a) == np.shape(b) and bool((np.asarray(a) == np.asarray(b)).all())


def choose_sources(seed: int, epoch: int, metas: Sequence[dict], draft_ratio: float, empty_ratio: float) -> tuple[list[str], list]:
    """Per example, its draft source and its generator (for the corruption): ``base`` with
    probability ``draft_ratio``, ``empty`` with ``empty_ratio``, else ``corrupt``."""
    rngs = [np.random.default_rng([seed, epoch, int(m["index"])]) for m in metas]
    sources = []
    for rng in rngs:
        u = rng.random()
        sources.append("base" if u < draft_ratio else "empty" if u < draft_ratio + empty_ratio else "corrupt")
    return sources, rngs


class DraftSources:
    """The draft methods of ``RefinementNetwork`` (a mixin: it reads ``self._base``, ``seed``,
    ``draft_ratio``, ``empty_ratio``, ``eval_draft``, ``corruptions``, ``corrupt_cell_prob``, ``corrupt_errors``)."""

    draft_cache: dict
    n_decoded: int

    @property
    def base(self) -> Optional[AutoregressiveGridModel]:
        """The frozen base model, on the refiner's device."""
        if self._base is not None and self._base.device != self.device:
            self._base.to(self.device)
        return self._base

    def base_drafts(self, batch: dict, stage: str, rows: Optional[Sequence[int]] = None) -> list[tuple[Grid, Optional[str]]]:
        """``(grid, reason)`` base-model drafts of the chosen rows, decoded on a cache miss only."""
        if self.base is None:
            raise ValueError("model.base_checkpoint is not set; it is required to draft with the base model")
        rows = list(range(len(batch["meta"]))) if rows is None else list(rows)
        keys = {r: _cache_key(stage, batch["meta"][r]) for r in rows}
        missing = [r for r in rows if keys[r] not in self.draft_cache]
        if missing:
            for r, d in zip(missing, self.base.decode_batch(batch, missing)):
                self.draft_cache[keys[r]] = (d.grid, d.reason)
            self.n_decoded += len(missing)
        return [self.draft_cache[keys[r]] for r in rows]

    def training_drafts(self, batch: dict) -> tuple[list[Grid], dict[str, int]]:
        """One draft per row from the configured mix (``None`` is the empty canvas) and counts:
        ``base``, ``corrupt``, ``empty`` drafts and ``wrong_shape`` base drafts (kept: the canvas
        refines them) of this batch."""
        metas = batch["meta"]
        sources, rngs = choose_sources(self.seed, self.current_epoch, metas, self.draft_ratio, self.empty_ratio)
        chosen = [i for i, s in enumerate(sources) if s == "base"]
        from_base = dict(zip(chosen, self.base_drafts(batch, "train", chosen))) if chosen else {}
        drafts: list[Grid] = []
        counts = {"base": 0, "corrupt": 0, "empty": 0, "wrong_shape": 0}
        for i, (m, rng, source) in enumerate(zip(metas, rngs, sources)):
            target = np.asarray(m["target"])
            if source == "base":
                grid = from_base[i][0]
                counts["wrong_shape"] += int(grid is None or grid.shape != target.shape)
                drafts.append(grid)
            elif source == "empty":
                drafts.append(None)
            else:
                drafts.append(self.corrupted(target, rng))
            counts[source] += 1
        return drafts, counts

    def corrupted(self, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``target`` with ``corrupt_errors`` errors, each of a kind drawn from ``corruptions``
        (applied one after the other: several errors, possibly of different kinds)."""
        draft = target
        for _ in range(self.corrupt_errors):
            draft = corrupt(draft, rng, self.corruptions, self.corrupt_cell_prob)
        return draft

    def eval_source(self) -> str:
        """The draft source of validation, test and predict: ``eval_draft``, by default the base
        model when there is one, else corrupted targets."""
        if self.eval_draft is not None:
            return self.eval_draft
        return "base" if self._base is not None else "corrupt"

    def eval_drafts(self, batch: dict, stage: str) -> list[Grid]:
        """Drafts of ``eval_source()``; corrupted targets are fixed per example."""
        source = self.eval_source()
        if source == "base":
            return [g for g, _ in self.base_drafts(batch, stage)]
        if source == "empty":
            return [None] * len(batch["meta"])
        return [
            self.corrupted(np.asarray(m["target"]), np.random.default_rng([self.seed, int(m["index"]), 1])) for m in batch["meta"]
        ]

    def on_train_epoch_start(self) -> None:
        # augmented inputs do not recur in the next epoch; un-augmented ones do, keep those
        self.draft_cache = {k: v for k, v in self.draft_cache.items() if k[0] != "train" or k[-1] == _IDENTITY_KEY}


_IDENTITY_KEY = (IDENTITY.dihedral, tuple(IDENTITY.colour_perm))


def _cache_key(stage: str, meta: dict) -> tuple:
    dihedral, perm = meta.get("augmentation", (IDENTITY.dihedral, IDENTITY.colour_perm))
    return (stage, int(meta["index"]), meta.get("task_id"), (int(dihedral), tuple(int(c) for c in perm)))


def select_rows(batch: dict, rows: Sequence[int]) -> dict:
    """The chosen rows of a collated batch (tensors indexed, ``meta`` picked)."""
    idx = torch.tensor(list(rows), device=batch["tokens"].device)
    out = {k: v[idx] for k, v in batch.items() if isinstance(v, Tensor)}
    out["meta"] = [batch["meta"][r] for r in rows]
    return out
