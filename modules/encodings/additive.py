"""Additive positional encodings: a vector ``(B, T, d_model)`` added to the token embeddings.

1D (sequence index ``pos``):

- ``learned_1d``:    a learned table, one row per position (GPT-2);
- ``sinusoidal_1d``: fixed sines and cosines (Vaswani et al. 2017, "Attention Is All You Need").

2D (cell ``row``/``col`` inside its grid, the same vector whatever the serialization order):

- ``onehot_2d``:     ``e_row[row] + e_col[col]``, a linear map of the row and column one-hots;
- ``edges_2d``:      ``onehot_2d`` measured from all four edges: also ``e_bottom[h-1-row] + e_right[w-1-col]``
                     (the cell's grid shape comes with the positions), so "the last column" or "the
                     mirror cell" is a lookup, whatever the grid's size;
- ``quadtree_2d``:   the sum of learned vectors of the 5-level quadrant path of the cell in a 32x32 frame;
- ``sinusoidal_2d``: half of ``d_model`` sinusoidal in the row, half in the column (2D sin-cos as in
                     MAE, He et al. 2022).

Special tokens (``row == -1``: BOS, INPUT/OUTPUT markers, shape tokens, ROW_END, GRID_END, PAD) get
the zero vector from every 2D encoding: they are not cells, and their token embedding already says
what they are. A 2D encoding therefore says *where in its grid* a cell is and nothing about the
sequence order; combine it with a 1D encoding (``["rope_1d", "onehot_2d"]``) for both.

Tables are float32 buffers (fixed encodings) or parameters (learned ones), built once at
construction and indexed with the positions; the transformer casts the result to its dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gridlm.datamodules.tokens import MAX_SIDE
from gridlm.modules.encodings.base import AdditiveEncoding, Positions, check_below

QUADTREE_LEVELS = 5  # 2**5 = 32 >= MAX_SIDE: the frame the quadrant path lives in
QUADTREE_FRAME = 2**QUADTREE_LEVELS


def sinusoid_table(n_positions: int, dim: int, base: float = 10000.0) -> Tensor:
    """``(n_positions, dim)`` float32 table of Vaswani et al. (2017), interleaved::

        PE[p, 2i]   = sin(p / base^(2i/dim))
        PE[p, 2i+1] = cos(p / base^(2i/dim))
    """
    if dim % 2:
        raise ValueError(f"sinusoidal tables need an even width, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * inv_freq  # (n, dim/2)
    table = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (n, dim/2, 2)
    return table.reshape(n_positions, dim).float()  # (n, dim): sin, cos, sin, cos, ...


def is_cell(p: Positions) -> Tensor:
    """``(B, T)`` bool, True for grid cells (``row`` and ``col`` both >= 0)."""
    return (p.row >= 0) & (p.col >= 0)


def _check_cells(p: Positions, limit: int, encoding: str) -> None:
    check_below(p.row, limit, "row", encoding, f"grid cells have rows and columns 0..{limit - 1}")
    check_below(p.col, limit, "col", encoding, f"grid cells have rows and columns 0..{limit - 1}")


def _check_pos(p: Positions, max_seq_len: int, encoding: str) -> None:
    fix = "raise model.max_seq_len (data.max_seq_len) or shorten the sequences"
    check_below(p.pos, max_seq_len, "pos", encoding, fix, low=0)


class Learned1D(AdditiveEncoding):
    """``learned_1d``: ``E[pos]`` from an ``nn.Embedding(max_seq_len, d_model)`` (GPT-2, Radford et al. 2019).

    ``max_seq_len * d_model`` parameters. A position ``>= max_seq_len`` raises a ``ValueError``
    (never clamped). Special tokens are positioned by their sequence index like any token."""

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        self.table = nn.Embedding(max_seq_len, d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, p: Positions) -> Tensor:
        _check_pos(p, self.max_seq_len, "learned_1d")
        return self.table(p.pos)  # (B, T, d_model)


class Sinusoidal1D(AdditiveEncoding):
    """``sinusoidal_1d``: the fixed encoding of Vaswani et al. (2017), see :func:`sinusoid_table`.

    ``PE[pos, 2i] = sin(pos / 10000^(2i/d))``, ``PE[pos, 2i+1] = cos(pos / 10000^(2i/d))``. No parameters;
    a ``(max_seq_len, d_model)`` non-persistent buffer. Positions ``>= max_seq_len`` raise."""

    base = 10000.0

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        if d_model % 2:
            raise ValueError(f"sinusoidal_1d needs an even model.d_model, got {d_model}")
        self.register_buffer("table", sinusoid_table(max_seq_len, d_model, self.base), persistent=False)

    def forward(self, p: Positions) -> Tensor:
        _check_pos(p, self.max_seq_len, "sinusoidal_1d")
        return self.table[p.pos]  # (B, T, d_model)


class OneHot2D(AdditiveEncoding):
    """``onehot_2d``: ``e_row[row] + e_col[col]`` for cells, 0 for special tokens.

    Mathematically ``W @ concat(onehot(row, 30), onehot(col, 30))`` with ``W = [E_row; E_col]^T``
    (a bias-free ``nn.Linear(60, d_model)``), computed as two ``nn.Embedding`` lookups without
    materializing the one-hots. A special token's one-hot vectors are all zero, so its encoding
    is the zero vector (no learned "not a cell" vector: the token embedding already has one).
    ``2 * 30 * d_model`` parameters."""

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        self.row = nn.Embedding(MAX_SIDE, d_model)
        self.col = nn.Embedding(MAX_SIDE, d_model)
        nn.init.normal_(self.row.weight, std=0.02)
        nn.init.normal_(self.col.weight, std=0.02)

    def forward(self, p: Positions) -> Tensor:
        _check_cells(p, MAX_SIDE, "onehot_2d")
        cell = is_cell(p)  # (B, T)
        # clamp only maps the -1 of special tokens to a valid index; the mask zeroes them
        e = self.row(p.row.clamp(min=0)) + self.col(p.col.clamp(min=0))  # (B, T, d_model)
        return e * cell.unsqueeze(-1).to(e.dtype)


class Edges2D(AdditiveEncoding):
    """``edges_2d``: ``e_top[row] + e_left[col] + e_bottom[h-1-row] + e_right[w-1-col]`` for cells, 0 for
    special tokens (``h, w``: the shape of the cell's grid, ``Positions.height/width``).

    ``onehot_2d`` says how far a cell is from the top and left edges; a flip, a rotation, gravity or a
    border rule is about the bottom and right edges too, which ``onehot_2d`` can only reach by
    comparing with the grid's size. Here every distance to an edge is its own learned vector (a linear
    map of four one-hots, as ``onehot_2d``), so the cell mirrored across a vertical axis, ``(row,
    w-1-col)``, has ``e_left`` and ``e_right`` swapped: a query can find it with one bilinear match.
    ``4 * 30 * d_model`` parameters, gathered from one table."""

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        self.table = nn.Embedding(4 * MAX_SIDE, d_model)  # rows: top 0..29, left, bottom, right
        nn.init.normal_(self.table.weight, std=0.02)
        self.register_buffer("offset", MAX_SIDE * torch.arange(4), persistent=False)

    def forward(self, p: Positions) -> Tensor:
        if p.height is None or p.width is None:
            raise ValueError(
                "edges_2d needs each cell's grid shape (Positions.height/width); build positions with "
                "Positions.from_batch(batch) from a gridlm batch"
            )
        _check_cells(p, MAX_SIDE, "edges_2d")
        cell = is_cell(p)  # (B, T)
        bottom, right = p.height - 1 - p.row, p.width - 1 - p.col  # (B, T), negative only off cells
        fix = "a cell's row/col must be inside its grid's height/width"
        check_below(torch.where(cell, bottom, 0), MAX_SIDE, "height-1-row", "edges_2d", fix, low=0)
        check_below(torch.where(cell, right, 0), MAX_SIDE, "width-1-col", "edges_2d", fix, low=0)
        idx = torch.stack((p.row, p.col, bottom, right), dim=-1).clamp(min=0) + self.offset  # (B, T, 4)
        e = self.table(idx).sum(dim=-2)  # (B, T, 4, d) -> (B, T, d)
        return e * cell.unsqueeze(-1).to(e.dtype)


def quadtree_code(row: Tensor, col: Tensor) -> Tensor:
    """The quadrant path of ``(row, col)`` in a 32x32 frame: ``(..., 5)`` int64, values 0..3.

    Level ``l`` (0 = coarsest) is the quadrant ``q_l = 2 * bit_{4-l}(row) + bit_{4-l}(col)``
    (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right), so ``(15, 15)`` is ``[0, 3, 3, 3, 3]``
    and ``(16, 16)`` is ``[3, 0, 0, 0, 0]``. Inputs must be 0..31."""
    shifts = torch.arange(QUADTREE_LEVELS - 1, -1, -1, device=row.device)  # (5,): 4, 3, 2, 1, 0
    r = (row.unsqueeze(-1) >> shifts) & 1  # (..., 5)
    c = (col.unsqueeze(-1) >> shifts) & 1  # (..., 5)
    return 2 * r + c


class Quadtree2D(AdditiveEncoding):
    """``quadtree_2d``: ``sum_l Q[l, q_l(row, col)]`` over the 5 levels of :func:`quadtree_code`.

    A learned table ``Q`` of ``5 levels x 4 quadrants`` vectors, i.e. a bias-free linear map of the
    20-dim one-hot quadrant code. Cells that share a coarse quadrant share its vector, so nearby
    cells get similar encodings at every scale (a learned, discrete analogue of multi-scale
    sinusoids). Special tokens get the zero vector. ``20 * d_model`` parameters."""

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        self.table = nn.Embedding(4 * QUADTREE_LEVELS, d_model)  # row 4*l + q: level l, quadrant q
        nn.init.normal_(self.table.weight, std=0.02)
        self.register_buffer("level_offset", 4 * torch.arange(QUADTREE_LEVELS), persistent=False)

    def forward(self, p: Positions) -> Tensor:
        _check_cells(p, QUADTREE_FRAME, "quadtree_2d")
        cell = is_cell(p)  # (B, T)
        code = quadtree_code(p.row.clamp(min=0), p.col.clamp(min=0))  # (B, T, 5)
        e = self.table(code + self.level_offset).sum(dim=-2)  # (B, T, 5, d) -> (B, T, d)
        return e * cell.unsqueeze(-1).to(e.dtype)


class Sinusoidal2D(AdditiveEncoding):
    """``sinusoidal_2d``: ``concat(PE_{d/2}(row), PE_{d/2}(col))`` for cells, 0 for special tokens.

    ``PE_{d/2}`` is the table of Vaswani et al. (2017) at width ``d_model / 2`` (base 10000), as in the
    2D sin-cos embedding of MAE (He et al. 2022): the first half of the dims encodes the row, the second
    half the column. No parameters; ``d_model`` must be divisible by 4."""

    base = 10000.0

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        if d_model % 4:
            raise ValueError(f"sinusoidal_2d needs model.d_model divisible by 4 (two even halves), got {d_model}")
        self.register_buffer("table", sinusoid_table(MAX_SIDE, d_model // 2, self.base), persistent=False)

    def forward(self, p: Positions) -> Tensor:
        _check_cells(p, MAX_SIDE, "sinusoidal_2d")
        cell = is_cell(p)  # (B, T)
        e = torch.cat((self.table[p.row.clamp(min=0)], self.table[p.col.clamp(min=0)]), dim=-1)  # (B, T, d)
        return e * cell.unsqueeze(-1).to(e.dtype)


__all__ = [
    "Edges2D",
    "Learned1D",
    "OneHot2D",
    "Quadtree2D",
    "Sinusoidal1D",
    "Sinusoidal2D",
    "is_cell",
    "quadtree_code",
    "sinusoid_table",
]
