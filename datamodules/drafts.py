"""Draft output grids for the refiner: corrupted targets, and batches whose query output is a draft.

The refinement network (``modules/refiner.py``) reads a serialized example whose query output
block holds a *draft* instead of the true output. :func:`draft_batch` builds that input from a
collated :class:`~gridlm.datamodules.datamodule.GridDataModule` batch (full sequences or prompts): it
keeps each row up to and including the query's OUTPUT marker and appends the draft's block
from the serializer's own :func:`~gridlm.datamodules.serialize.grid_layout`, so the draft carries
exactly the tokens and metadata ``serialize_example`` would give it as the query output (a
test checks this). The draft keeps its own shape, which may differ from the target's.

:func:`corrupt` makes synthetic drafts from a target: random cell flips, a shifted region or a
recoloured region (the error kinds a greedy decoder typically makes: stray cells, an object off
by one, a wrong colour for a whole object), or a wrong shape: a row or column dropped (``crop``)
or repeated (``extend``), for the refiner's output canvas (``datamodules/canvas.py``).
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

from gridlm.datamodules.serialize import grid_layout
from gridlm.datamodules.tokens import MAX_SIDE, N_COLOURS, PAD, ROLE_SPECIAL, ROLE_TEST_OUTPUT

CorruptionName = Literal["flip", "shift", "recolour", "crop", "extend"]
CORRUPTIONS: tuple[str, ...] = ("flip", "shift", "recolour", "crop", "extend")
SAME_SHAPE_CORRUPTIONS: tuple[str, ...] = ("flip", "shift", "recolour")  # the rest change the shape


def query_output_start(batch: dict) -> list[int]:
    """Index of the query's OUTPUT marker in every row of a collated batch (the first token with
    role ``ROLE_TEST_OUTPUT``; a row without one raises ValueError)."""
    is_out = batch["role"] == ROLE_TEST_OUTPUT  # (B, T)
    has = is_out.any(1)
    if not bool(has.all()):
        row = int((~has).nonzero()[0, 0])
        raise ValueError(f"batch row {row} has no query output block (role ROLE_TEST_OUTPUT); not a GridDataModule batch")
    return is_out.float().argmax(1).tolist()


def draft_batch(batch: dict, drafts: Sequence[np.ndarray], order: str, row_end: bool = False) -> dict:
    """The batch with every row's query output replaced by ``drafts[b]`` (any shape 1..30).

    Returns right-padded ``(B, T')`` tensors ``tokens, row, col, grid, height, width, role, pos`` (as
    ``collate`` pads them), ``lengths (B,)``, ``cells (B, T')`` True at the draft's colour
    cells, and ``meta`` (the input batch's list)."""
    starts = query_output_start(batch)
    B = len(starts)
    if len(drafts) != B:
        raise ValueError(f"draft_batch: {len(drafts)} drafts for a batch of {B} rows")
    rows = []
    for b, (s, draft) in enumerate(zip(starts, drafts)):
        draft = np.asarray(draft, dtype=np.int64)
        h, w = draft.shape
        layout = grid_layout(order, h, w, row_end)
        block = layout.tokens.copy()  # (n,): marker slot, HEIGHT, WIDTH, cells, [ROW_END], GRID_END
        block[layout.cell_slots] = draft.reshape(-1)[layout.flat]
        n = len(block) - 1  # the marker slot is the prefix's OUTPUT token
        is_cell = np.zeros(n, dtype=bool)
        is_cell[layout.cell_slots - 1] = True
        g = int(batch["grid"][b, s])
        rows.append(
            {
                "tokens": torch.cat([batch["tokens"][b, : s + 1], torch.from_numpy(block[1:])]),
                "row": torch.cat([batch["row"][b, : s + 1], torch.from_numpy(layout.row[1:].copy())]),
                "col": torch.cat([batch["col"][b, : s + 1], torch.from_numpy(layout.col[1:].copy())]),
                "grid": torch.cat([batch["grid"][b, : s + 1], torch.full((n,), g, dtype=torch.long)]),
                "height": torch.cat([batch["height"][b, : s + 1], torch.from_numpy(np.where(is_cell, h, -1))]),
                "width": torch.cat([batch["width"][b, : s + 1], torch.from_numpy(np.where(is_cell, w, -1))]),
                "role": torch.cat([batch["role"][b, : s + 1], torch.full((n,), ROLE_TEST_OUTPUT, dtype=torch.long)]),
                "cells": torch.cat([torch.zeros(s + 1, dtype=torch.bool), torch.from_numpy(is_cell)]),
            }
        )
    T = max(len(r["tokens"]) for r in rows)
    fill = {"tokens": PAD, "row": -1, "col": -1, "grid": -1, "height": -1, "width": -1, "role": ROLE_SPECIAL, "cells": False}
    device = batch["tokens"].device
    out = {}
    for name, value in fill.items():
        dtype = torch.bool if name == "cells" else torch.long
        t = torch.full((B, T), value, dtype=dtype, device=device)
        for b, r in enumerate(rows):
            t[b, : len(r[name])] = r[name].to(device)
        out[name] = t
    out["lengths"] = torch.tensor([len(r["tokens"]) for r in rows], dtype=torch.long, device=device)
    out["pos"] = torch.arange(T, device=device).expand(B, T).contiguous()
    out["meta"] = batch.get("meta", [{} for _ in range(B)])
    return out


def cells_to_grids(pred: torch.Tensor, batch: dict, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Scatter per-position colours ``pred (B, T')`` at ``batch["cells"]`` back into grids of
    ``shapes`` (the drafts' shapes), using the cells' true ``row``/``col``."""
    pred, cells = pred.cpu(), batch["cells"].cpu()
    row, col = batch["row"].cpu(), batch["col"].cpu()
    grids = []
    for b, (h, w) in enumerate(shapes):
        g = np.zeros((h, w), dtype=np.int64)
        m = cells[b]
        g[row[b, m].numpy(), col[b, m].numpy()] = pred[b, m].numpy()
        grids.append(g)
    return grids


def corrupt(
    grid: np.ndarray,
    rng: np.random.Generator,
    kinds: Sequence[str] = CORRUPTIONS,
    cell_prob: float = 0.1,
) -> np.ndarray:
    """A copy of ``grid`` with one error of a kind drawn uniformly from ``kinds``; it always
    differs from ``grid`` (in at least one cell, or in shape).

    - ``flip``: every cell takes another random colour with probability ``cell_prob`` (at least one);
    - ``shift``: the content of a random rectangle moves one cell up, down, left or right
      (``np.roll`` inside the rectangle);
    - ``recolour``: inside a random rectangle, one colour present there becomes another colour;
    - ``crop``: one random row or column is removed (``extend`` when the grid is 1x1);
    - ``extend``: one random row or column is repeated next to itself (``crop`` at 30x30).

    A kind that leaves the grid unchanged (a uniform region) falls back to ``flip``."""
    for k in kinds:
        if k not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {k!r}; valid: {', '.join(CORRUPTIONS)}")
    if not kinds:
        raise ValueError(f"corruption kinds are empty; choose from {', '.join(CORRUPTIONS)}")
    grid = np.asarray(grid, dtype=np.int64)
    h, w = grid.shape
    out = grid.copy()
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind in ("crop", "extend"):
        return _reshape(grid, rng, kind)
    r0, c0 = int(rng.integers(h)), int(rng.integers(w))
    r1, c1 = int(rng.integers(r0 + 1, h + 1)), int(rng.integers(c0 + 1, w + 1))  # a non-empty rectangle
    region = out[r0:r1, c0:c1]  # a view: editing it edits out
    if kind == "shift":
        axis = int(rng.integers(2))
        region[...] = np.roll(region, int(rng.choice([-1, 1])), axis=axis)
    elif kind == "recolour":
        old = int(rng.choice(np.unique(region)))
        new = (old + int(rng.integers(1, N_COLOURS))) % N_COLOURS
        region[region == old] = new
    if kind == "flip" or np.array_equal(out, grid):
        flips = rng.random((h, w)) < cell_prob
        flips.flat[int(rng.integers(h * w))] = True
        out[flips] = (grid[flips] + rng.integers(1, N_COLOURS, size=int(flips.sum()))) % N_COLOURS
    return out


def _reshape(grid: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """``grid`` with one row or column removed (``crop``) or repeated (``extend``): a wrong shape."""
    h, w = grid.shape
    axes = [a for a, n in enumerate((h, w)) if (n > 1 if kind == "crop" else n < MAX_SIDE)]
    if not axes:  # 1x1 cannot shrink, 30x30 cannot grow
        return _reshape(grid, rng, "extend" if kind == "crop" else "crop")
    axis = axes[int(rng.integers(len(axes)))]
    i = int(rng.integers(grid.shape[axis]))
    if kind == "crop":
        return np.delete(grid, i, axis=axis)
    return np.insert(grid, i, np.take(grid, i, axis=axis), axis=axis)
