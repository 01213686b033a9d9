"""The grid grammar as tensors: one decoding step of every row of a batch, no per-row Python.

The eager reference (``gridlm.modules.decoding._Grammar``) walks one Python object per row; here
the same rules are table lookups and ``torch.where`` over the batch, so a step is a fixed graph
that ``torch.compile`` can fuse with the model's forward:

- token 0 of the output grid is ``HEIGHT_h``, token 1 ``WIDTH_w``, with only the shapes whose
  ``2 + h*w + [h row ends] + 1`` tokens fit the room the sequence limit leaves (at least 1x1);
- then the grid's body: a plan per shape (:func:`plan_table`), ``(S, N, 3)`` with ``S = max_side**2``
  shapes and ``N`` body tokens at most: ``(forced token or -1 for a colour, cell row, cell col)``;
  ``ROW_END`` and ``GRID_END`` are forced, a cell allows colours ``0..9``;
- a row that emitted ``GRID_END``, or reached the sequence limit, is fed ``PAD`` (grid -1).

Each chosen token gets the metadata the serializer writes for it (``pos`` = prompt length +
index in the grid, cell row/col in the order, the grid index, and the grid's height/width on
cells), so every encoding sees at decoding time what it saw in training.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from gridlm.datamodules.orders import cell_order
from gridlm.datamodules.tokens import GRID_END, HEIGHT_0, N_COLOURS, PAD, ROW_END, WIDTH_0


def body_length(max_side: int, row_end: bool) -> int:
    """Tokens after the shape tokens of the largest grid: cells, row ends, GRID_END."""
    return max_side * max_side + (max_side if row_end else 0) + 1


@lru_cache(maxsize=16)
def _plan(order: str, row_end: bool, max_side: int) -> np.ndarray:
    n = body_length(max_side, row_end)
    plan = np.full((max_side * max_side, n, 3), -1, dtype=np.int32)
    plan[:, :, 0] = PAD  # past a shape's GRID_END (never read for a live row)
    for h in range(1, max_side + 1):
        for w in range(1, max_side + 1):
            cells = cell_order(order, h, w)  # (h*w, 2) visiting order
            i = np.arange(h * w)
            slots = i + (i // w if row_end else 0)  # each completed row adds one ROW_END before
            p = plan[(h - 1) * max_side + (w - 1)]
            p[slots, 0] = -1
            p[slots, 1], p[slots, 2] = cells[:, 0], cells[:, 1]
            if row_end:
                p[np.arange(1, h + 1) * (w + 1) - 1, 0] = ROW_END
            p[h * w + (h if row_end else 0), 0] = GRID_END
    plan.setflags(write=False)
    return plan


def plan_table(order: str, row_end: bool, max_side: int, device) -> Tensor:
    """``(max_side**2, body_length, 3)`` int32: for shape ``(h-1)*max_side + (w-1)`` and body token
    ``j``, ``(forced token or -1 for a colour, cell row or -1, cell col or -1)``."""
    return torch.tensor(_plan(order, bool(row_end), int(max_side)), device=device)


class Rows(NamedTuple):
    """Per-row constants of one decode, each ``(B,)`` int64."""

    length: Tensor  # prompt length P (the first generated token sits at sequence index P)
    grid: Tensor  # grid index of the query's OUTPUT marker (carried by every token of the grid)
    room: Tensor  # tokens the sequence limit leaves: max_len - P


class State(NamedTuple):
    """The decoding state after the token of step ``t`` was chosen; ``tok`` and its metadata are
    what the next step feeds the model."""

    t: Tensor  # () int64: index in the grid of the token chosen last (the same for every row)
    tok: Tensor  # (B,) the token chosen last (PAD for finished rows)
    pos: Tensor  # (B,) its sequence index (clamped below max_len for finished rows)
    row: Tensor  # (B,) its cell row, or -1
    col: Tensor  # (B,) its cell column, or -1
    grid: Tensor  # (B,) its grid index, or -1 (PAD)
    height: Tensor  # (B,) its grid's height if it is a cell, or -1
    width: Tensor  # (B,) its grid's width if it is a cell, or -1
    h: Tensor  # (B,) the chosen height (0 before HEIGHT)
    w: Tensor  # (B,) the chosen width (0 before WIDTH)
    ended: Tensor  # (B,) bool: GRID_END emitted
    n_tok: Tensor  # (B,) tokens emitted
    logp: Tensor  # (B,) float64: summed log-probabilities of the emitted tokens
    out: Tensor  # (B, 2 + body_length) the emitted tokens (PAD after the last one)


def initial_state(rows: Rows, n_out: int) -> State:
    B, device = rows.length.shape[0], rows.length.device
    zero = torch.zeros(B, dtype=torch.long, device=device)
    return State(
        torch.tensor(-1, device=device), zero, zero, zero, zero, zero, zero, zero, zero, zero,
        torch.zeros(B, dtype=torch.bool, device=device), zero, torch.zeros(B, dtype=torch.float64, device=device),
        torch.full((B, n_out), PAD, dtype=torch.long, device=device),
    )


def _floordiv(a: Tensor, b: Tensor | int) -> Tensor:
    return torch.div(a, b, rounding_mode="floor")


def choose(logits: Tensor, s: State, rows: Rows, plan: Tensor, row_end: bool, max_side: int, max_len: int) -> State:
    """Choose the next token of every row from ``logits`` ``(B, V)`` under the grammar, greedily
    (the first of equal maxima, as ``argmax``), and return the new state. ``s.out`` is written in
    place; everything else is new."""
    t = s.t + 1
    live = ~s.ended & (t < rows.room)  # (B,) rows that emit a token now
    re = int(row_end)
    # the shapes that fit the room (the reference's _Grammar._fits), at least 1
    free = rows.room - 3
    max_h = _floordiv(free, 1 + re).clamp(min=1, max=max_side)
    max_w = _floordiv(free - re * s.h, s.h.clamp(min=1)).clamp(min=1, max=max_side)
    j = (t - 2).clamp(min=0, max=plan.size(1) - 1).expand_as(s.h)  # (B,) body token index (a tensor index, never a Python int)
    shape = (s.h - 1).clamp(min=0) * max_side + (s.w - 1).clamp(min=0)  # (B,) plan row
    forced = plan[shape, j, 0].long()  # (B,) forced token, -1 for a colour
    lo = torch.where(forced < 0, 0, forced)
    hi = torch.where(forced < 0, N_COLOURS, forced + 1)
    lo = torch.where(t == 0, HEIGHT_0 + 1, torch.where(t == 1, WIDTH_0 + 1, lo))
    hi = torch.where(t == 0, HEIGHT_0 + 1 + max_h, torch.where(t == 1, WIDTH_0 + 1 + max_w, hi))
    lo = torch.where(live, lo, PAD)
    hi = torch.where(live, hi, PAD + 1)
    vocab = torch.arange(logits.size(-1), device=logits.device)
    allowed = (vocab >= lo[:, None]) & (vocab < hi[:, None])  # (B, V)
    lp = torch.log_softmax(logits.float(), dim=-1)
    nxt = lp.masked_fill(~allowed, float("-inf")).argmax(dim=-1)  # (B,)
    logp = s.logp + torch.where(live, lp.gather(1, nxt[:, None])[:, 0].double(), 0.0)
    h = torch.where(live & (t == 0), nxt - HEIGHT_0, s.h)
    w = torch.where(live & (t == 1), nxt - WIDTH_0, s.w)
    body = live & (t >= 2)
    cell = plan[(h - 1).clamp(min=0) * max_side + (w - 1).clamp(min=0), j].long()  # (B, 3)
    row = torch.where(body, cell[:, 1], -1)
    col = torch.where(body, cell[:, 2], -1)
    is_cell = row >= 0
    s.out.index_copy_(1, t.view(1), nxt[:, None])
    return State(
        t,
        nxt,
        (rows.length + t).clamp(max=max_len - 1),
        row,
        col,
        torch.where(live, rows.grid, -1),
        torch.where(is_cell, h, -1),
        torch.where(is_cell, w, -1),
        h,
        w,
        s.ended | (body & (forced == GRID_END)),
        s.n_tok + live.long(),
        logp,
        s.out,
    )


def tokens_total(h: Tensor, w: Tensor, row_end: bool) -> Tensor:
    """Tokens of a grid after its OUTPUT marker: shape tokens, cells, row ends, GRID_END."""
    return 2 + h * w + (h if row_end else 0) + 1
