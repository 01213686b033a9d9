"""Greedy decoding of an output grid, constrained to the grid grammar.

After the query's OUTPUT marker the decoder must emit ``HEIGHT_h, WIDTH_w``, then exactly
``h*w`` colours (with ``row_end``: a ROW_END closing each row), then GRID_END. Each step masks
every token the grammar forbids, so the result always parses into an h x w grid. Each
generated token gets its true metadata (sequence index, cell row/column in the serialization
order, grid index), exactly as the serializer would have written it, so every encoding sees
the same positions at training and at decoding time.

``use_cache=True`` decodes incrementally with a KV cache; ``use_cache=False`` re-runs the full
sequence every step (the slow reference; a test checks both give identical tokens).

This is the plain reference decoder: one Python grammar object per row, prompts of equal length.
Training, validation, voting and predict decode with the engine of ``gridlm.modules.inference``
(ragged prompt batches, the grammar as tensors, a static KV cache, a compiled step), which
``tests/test_engine.py`` checks against this decoder token for token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gridlm.datamodules.orders import cell_order
from gridlm.datamodules.tokens import (
    GRID_END,
    HEIGHT_0,
    MAX_SIDE,
    N_COLOURS,
    PAD,
    ROW_END,
    VOCAB_SIZE,
    WIDTH_0,
)
from gridlm.modules.encodings import Positions
from gridlm.modules.transformer import Transformer


@dataclass
class Decoded:
    grid: np.ndarray | None  # the decoded grid (always valid with constrained decoding), or None
    reason: str | None  # why no grid was produced (e.g. the sequence limit was reached)
    logprob: float  # sum of the model's log-probabilities of the emitted tokens
    n_tokens: int  # tokens emitted (shape tokens, cells, row ends, GRID_END)
    tokens: list[int]

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(1, self.n_tokens)


class _Grammar:
    """State of one sequence: which tokens may come next and the metadata of each emitted one."""

    def __init__(self, order: str, row_end: bool, max_side: int, room: int | None = None) -> None:
        """``room``: how many tokens the sequence limit leaves for the grid (None: no limit). Only
        shapes whose ``h*w`` cells, row ends and the three markers fit are allowed, so a grid is
        always finished when a 1x1 grid fits."""
        self.order, self.row_end, self.max_side = order, row_end, max_side
        self.room = room
        self.h = self.w = 0
        self.cells: np.ndarray | None = None
        self.plan: list[tuple[int, int, int]] = []  # (forced token or -1 for a colour, row, col) after the shape
        self.step = 0
        self.done = False
        self.out: list[int] = []

    def allowed(self) -> tuple[int, int] | int:
        """A token range [lo, hi) of allowed tokens, or one forced token."""
        if self.step == 0:
            return (HEIGHT_0 + 1, HEIGHT_0 + self._fits(1, per_row=True) + 1)
        if self.step == 1:
            return (WIDTH_0 + 1, WIDTH_0 + self._fits(self.h, per_row=False) + 1)
        if self.done:
            return PAD
        tok, _, _ = self.plan[self.step - 2]
        return (0, N_COLOURS) if tok < 0 else tok

    def _fits(self, n: int, per_row: bool) -> int:
        """The largest height (``per_row``: with width 1) or width (for height ``n``) whose grid of
        ``2 + h*w + [h row ends] + 1`` tokens fits ``room``; at least 1 (then the limit is reported)."""
        if self.room is None:
            return self.max_side
        free = self.room - 3  # HEIGHT, WIDTH, GRID_END
        best = free // (1 + self.row_end) if per_row else (free - self.row_end * n) // n
        return max(1, min(self.max_side, best))

    def emit(self, token: int) -> tuple[int, int]:
        """Record ``token``; return the (row, col) metadata it carries (a cell's grid shape is
        ``(self.h, self.w)``, known from the shape tokens before the first cell)."""
        self.out.append(token)
        rc = (-1, -1)
        if self.step == 0:
            self.h = token - HEIGHT_0
        elif self.step == 1:
            self.w = token - WIDTH_0
            self.cells = cell_order(self.order, self.h, self.w)
            for i, (r, c) in enumerate(self.cells):
                self.plan.append((-1, int(r), int(c)))
                if self.row_end and (i + 1) % self.w == 0:
                    self.plan.append((ROW_END, -1, -1))
            self.plan.append((GRID_END, -1, -1))
        else:
            tok, r, c = self.plan[self.step - 2]
            rc = (r, c)
            if tok == GRID_END:
                self.done = True
        self.step += 1
        return rc

    def grid(self) -> np.ndarray:
        g = np.zeros((self.h, self.w), dtype=np.int64)
        colours = [t for t, (f, _, _) in zip(self.out[2:], self.plan) if f < 0]
        g[self.cells[:, 0], self.cells[:, 1]] = colours
        return g


@torch.no_grad()
def generate_grids(
    model: Transformer,
    tokens: Tensor,
    positions: Positions,
    order: str,
    row_end: bool = False,
    use_cache: bool = True,
    max_side: int = MAX_SIDE,
    max_len: int | None = None,
) -> list[Decoded]:
    """Decode one output grid per prompt. ``tokens``/``positions`` are ``(B, P)`` prompts of equal
    length, each ending with the query's OUTPUT marker; ``max_len`` caps the whole sequence
    (default: the model's ``max_seq_len``)."""
    B, P = tokens.shape
    device = tokens.device
    max_len = max_len or model.cfg.max_seq_len
    budget = 2 + max_side * max_side + (max_side if row_end else 0) + 1
    states = [_Grammar(order, row_end, max_side, room=max_len - P) for _ in range(B)]
    logp = torch.zeros(B, dtype=torch.float64)
    grid_idx = positions.grid[:, -1]  # the OUTPUT marker's grid index, (B,)
    seq_tok, seq_pos = tokens, positions
    cache = model.new_cache(B, min(max_len, P + budget)) if use_cache else None
    logits = model(tokens, positions, cache)[:, -1].float()  # (B, V)
    for step in range(budget):
        if P + step >= max_len:
            break  # the next token would not fit; unfinished grids are reported by _finish
        mask = torch.ones(B, VOCAB_SIZE, dtype=torch.bool)
        for b, s in enumerate(states):
            a = s.allowed()
            if isinstance(a, tuple):
                mask[b, a[0] : a[1]] = False
            else:
                mask[b, a] = False
        lp = torch.log_softmax(logits, dim=-1).cpu()
        nxt = lp.masked_fill(mask, float("-inf")).argmax(dim=-1)  # (B,)
        rows = torch.full((B,), -1, dtype=torch.long)
        cols = torch.full((B,), -1, dtype=torch.long)
        heights = torch.full((B,), -1, dtype=torch.long)
        widths = torch.full((B,), -1, dtype=torch.long)
        grids = grid_idx.cpu().clone()
        for b, s in enumerate(states):
            if s.done:
                grids[b] = -1
                continue
            logp[b] += float(lp[b, nxt[b]])
            rows[b], cols[b] = s.emit(int(nxt[b]))
            if rows[b] >= 0:  # a cell: its grid's shape, as the serializer writes it
                heights[b], widths[b] = s.h, s.w
        if all(s.done for s in states):
            break
        pos = P + step
        new_pos = Positions(
            torch.full((B, 1), pos, dtype=torch.long, device=device),
            rows[:, None].to(device),
            cols[:, None].to(device),
            grids[:, None].to(device),
            heights[:, None].to(device) if positions.height is not None else None,
            widths[:, None].to(device) if positions.width is not None else None,
        )
        new_tok = nxt[:, None].to(device)
        if use_cache:
            logits = model(new_tok, new_pos, cache)[:, -1].float()
        else:
            seq_tok = torch.cat([seq_tok, new_tok], dim=1)
            seq_pos = Positions.cat(seq_pos, new_pos)
            logits = model(seq_tok, seq_pos)[:, -1].float()
    return [_finish(s, logp[b]) for b, s in enumerate(states)]


def _finish(s: _Grammar, logp: Tensor) -> Decoded:
    if not s.done:
        reason = f"reached the sequence limit after {s.step} of the grid's tokens (no GRID_END)"
        return Decoded(None, reason, float(logp), s.step, s.out)
    return Decoded(s.grid(), None, float(logp), s.step, s.out)
