"""Attention-bias positional encodings: an additive bias ``(B, n_heads, Tq, Tk)`` on attention logits.

``alibi_2d`` carries ALiBi (Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases
Enables Input Length Extrapolation") from sequence distance to grid distance: a query cell attends
less to the cells of its own grid the farther away they are, by a per-head slope.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gridlm.modules.encodings.base import BiasEncoding, Positions


def alibi_slopes(n_heads: int) -> list[float]:
    """The head slopes of Press et al. (2022): the geometric sequence ``2^(-8h/n)``, h = 1..n, for ``n``
    a power of two; otherwise those of the closest smaller power of two followed by every other slope
    of the next power of two (their reference code). 4 heads: 1/4, 1/16, 1/64, 1/256."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (h + 1) for h in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


class Alibi2D(BiasEncoding):
    """``alibi_2d``: ``bias[h, i, j] = -m_h * (|row_i - row_j| + |col_i - col_j|)`` when tokens ``i`` and ``j``
    are cells of the same grid (same ``grid >= 0``), else 0.

    ``m_h`` are the ALiBi slopes (:func:`alibi_slopes`). The distance is Manhattan (L1): the number of
    4-neighbour steps between cells, integer-valued and cheap. Pairs that are not two cells of one grid
    (a special token on either side, or cells of different grids) get bias 0: the bias only shapes
    attention *within* a grid and leaves cross-grid and special-token attention to the content; combine
    with a 1D encoding for sequence order. Translation-invariant within the grid and independent of the
    serialization order. No parameters; the slopes are a non-persistent buffer. Memory is
    ``B * n_heads * Tq * Tk`` floats, like any dense attention bias."""

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads), dtype=torch.float32), persistent=False)

    def forward(self, q: Positions, k: Positions) -> Tensor:
        # the grid of a cell, -1 (queries) / -2 (keys) otherwise, so that "two cells of one grid" is
        # one (B, Tq, Tk) comparison
        gq = torch.where((q.row >= 0) & (q.col >= 0), q.grid, -1)  # (B, Tq)
        gk = torch.where((k.row >= 0) & (k.col >= 0), k.grid, -2)  # (B, Tk)
        other = gq[:, :, None] != gk[:, None, :]  # (B, Tq, Tk)
        # float32 from the start and in place: one (B, Tq, Tk) buffer instead of five int64 temporaries
        qr, qc, kr, kc = (t.to(torch.float32) for t in (q.row, q.col, k.row, k.col))
        dist = (qr[:, :, None] - kr[:, None, :]).abs_()  # (B, Tq, Tk)
        dist += (qc[:, :, None] - kc[:, None, :]).abs_()
        dist.masked_fill_(other, 0.0)
        return dist[:, None] * (-self.slopes)[None, :, None, None]  # (B, nh, Tq, Tk), a fresh tensor


__all__ = ["Alibi2D", "alibi_slopes"]
