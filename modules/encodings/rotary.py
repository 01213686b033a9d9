"""Rotary positional encodings: q and k rotated by position-dependent angles inside attention.

RoPE (Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding") rotates each
pair of head dimensions ``(x_i, x_{i+hs/2})`` (the rotate-half pairing of :func:`apply_rotary`,
GPT-NeoX/litgpt) by an angle ``theta_i * position``. Since rotations compose, the score
``<R(a) q, R(b) k> = <q, R(b - a) k>`` depends only on the offset ``b - a``: a relative encoding.

- ``rope_1d``: the angle of pair ``i`` is ``pos * base^(-2i/hs)``, base 10000, on the sequence index.
- ``rope_2d``: axial 2D RoPE (Heo et al. 2024, "Rotary Position Embedding for Vision Transformer",
  RoPE-Axial): the first half of the pairs rotate by the cell row, the second half by the column,
  each half with the 1D frequencies at width ``hs/2``; base 100 (as RoPE-ViT), because rows and
  columns span only 0..29 and base 10000 would leave most pairs nearly unrotated.

- ``rope_3d``: axial RoPE over ``(grid, row, col)``: a quarter of the pairs rotate by the token's
  grid index (base 100), the rest split between row and column as in ``rope_2d``. Scores then
  depend on the offsets ``(grid_k - grid_q, row_k - row_q, col_k - col_q)``: "the same cell of the
  grid just before mine" (a demonstration output reading its input, the query output reading the
  query input) is one fixed offset, whatever the grids' sizes and sequence positions.

All return ``cos, sin`` of shape ``(B, 1, T, hs)`` (full size, each angle repeated for both dims of
its pair), float32, gathered from tables precomputed at construction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gridlm.datamodules.tokens import MAX_SIDE
from gridlm.modules.encodings.base import Positions, RotaryEncoding, check_below


def rope_inv_freq(n_pairs: int, base: float) -> Tensor:
    """``(n_pairs,)`` float64 frequencies ``theta_i = base^(-2i / (2 * n_pairs))``, i = 0..n_pairs-1."""
    return base ** (-torch.arange(n_pairs, dtype=torch.float64) / n_pairs)


class Rope1D(RotaryEncoding):
    """``rope_1d``: pair ``(i, i + hs/2)`` of every head rotates by ``pos * 10000^(-2i/hs)``.

    cos/sin tables ``(max_seq_len, hs)`` are non-persistent float32 buffers; a position
    ``>= max_seq_len`` raises a ``ValueError``. No parameters. Special tokens rotate by their
    sequence index like any token."""

    base = 10000.0

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        if self.head_dim % 2:
            raise ValueError(f"rope_1d needs an even head dim (model.d_model / model.n_heads), got {self.head_dim}")
        angles = torch.arange(max_seq_len, dtype=torch.float64)[:, None] * rope_inv_freq(self.head_dim // 2, self.base)
        angles = torch.cat((angles, angles), dim=-1)  # (max_seq_len, hs): dim i and i + hs/2 share an angle
        self.register_buffer("cos_table", angles.cos().float(), persistent=False)
        self.register_buffer("sin_table", angles.sin().float(), persistent=False)

    def forward(self, p: Positions) -> tuple[Tensor, Tensor]:
        fix = "raise model.max_seq_len (data.max_seq_len) or shorten the sequences"
        check_below(p.pos, self.max_seq_len, "pos", "rope_1d", fix, low=0)
        return self.cos_table[p.pos].unsqueeze(1), self.sin_table[p.pos].unsqueeze(1)  # (B, 1, T, hs) each


class Rope2D(RotaryEncoding):
    """``rope_2d``: axial RoPE over the cell's ``(row, col)``.

    With ``hs`` the head dim and ``n = hs/4``, pair ``(i, i + hs/2)`` rotates by::

        row * 100^(-i/n)        for i in 0..n-1     (dims 0..n-1 with 2n..3n-1)
        col * 100^(-(i-n)/n)    for i in n..2n-1    (dims n..2n-1 with 3n..4n-1)

    so ``q . k`` after rotation depends only on ``(row_k - row_q, col_k - col_q)``. The same cell gets
    the same rotation whatever its sequence index (serialization order) and whatever its grid.
    Special tokens (``row == -1``) are not rotated (angle 0, as the CLS token of RoPE-ViT): relative to
    cells they sit at ``(0, 0)``; their token embeddings tell them apart. No parameters; ``hs`` must be
    divisible by 4. Sequence order is not encoded: combine with an additive 1D encoding if wanted."""

    base = 100.0

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        if self.head_dim % 4:
            raise ValueError(
                f"rope_2d needs a head dim (model.d_model / model.n_heads) divisible by 4 "
                f"(half the pairs for rows, half for columns), got {self.head_dim}"
            )
        n = self.head_dim // 4
        # row 0 of the table is "not a cell" (angle 0); row r + 1 is coordinate r
        coord = torch.cat((torch.zeros(1), torch.arange(MAX_SIDE)), dim=0).to(torch.float64)  # (31,)
        angles = coord[:, None] * rope_inv_freq(n, self.base)  # (31, n)
        self.register_buffer("cos_axis", angles.cos().float(), persistent=False)  # (31, n)
        self.register_buffer("sin_axis", angles.sin().float(), persistent=False)  # (31, n)

    def forward(self, p: Positions) -> tuple[Tensor, Tensor]:
        fix = f"grid cells have rows and columns 0..{MAX_SIDE - 1}"
        check_below(p.row, MAX_SIDE, "row", "rope_2d", fix)
        check_below(p.col, MAX_SIDE, "col", "rope_2d", fix)
        cell = (p.row >= 0) & (p.col >= 0)  # (B, T)
        r = torch.where(cell, p.row + 1, 0)  # (B, T) table index, 0 = not a cell
        c = torch.where(cell, p.col + 1, 0)
        cr, cc, sr, sc = self.cos_axis[r], self.cos_axis[c], self.sin_axis[r], self.sin_axis[c]  # (B, T, n)
        cos = torch.cat((cr, cc, cr, cc), dim=-1)  # (B, T, hs): [row pairs | col pairs] twice (rotate-half)
        sin = torch.cat((sr, sc, sr, sc), dim=-1)
        return cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hs) each


class Rope3D(RotaryEncoding):
    """``rope_3d``: axial RoPE over the token's ``(grid, row, col)``.

    With ``n = hs/2`` pairs (``hs`` divisible by 8), ``a = (n - n//4) // 2`` pairs rotate by the row, ``a``
    by the column, and the first ``n - 2a`` (about a quarter) by the grid index, each group ``i``-th pair
    at ``100^(-i/size)`` (head dim 32: 4 grid, 6 row, 6 column pairs). A token that is
    not a cell (markers, shape tokens, GRID_END) rotates by its grid index only; BOS and PAD (grid -1)
    are not rotated. Sequence order inside a grid is carried by (row, col), across grids by the grid
    index; no 1D position is needed. No parameters."""

    base = 100.0

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__(d_model, n_heads, max_seq_len)
        if self.head_dim % 8:
            raise ValueError(
                f"rope_3d needs a head dim (model.d_model / model.n_heads) divisible by 8 "
                f"(a quarter of the pairs for the grid index, the rest for rows and columns), got {self.head_dim}"
            )
        n = self.head_dim // 2
        self.n_axis = (n - n // 4) // 2
        self.n_grid = n - 2 * self.n_axis
        self.register_buffer("inv_grid", rope_inv_freq(self.n_grid, self.base).float(), persistent=False)
        self.register_buffer("inv_axis", rope_inv_freq(self.n_axis, self.base).float(), persistent=False)

    def forward(self, p: Positions) -> tuple[Tensor, Tensor]:
        fix = f"grid cells have rows and columns 0..{MAX_SIDE - 1}"
        check_below(p.row, MAX_SIDE, "row", "rope_3d", fix)
        check_below(p.col, MAX_SIDE, "col", "rope_3d", fix)
        cell = (p.row >= 0) & (p.col >= 0)  # (B, T)
        g = p.grid.clamp(min=0).float()[..., None] * self.inv_grid  # (B, T, n_grid); BOS/PAD: grid -1 -> 0
        r = torch.where(cell, p.row, 0).float()[..., None] * self.inv_axis  # (B, T, n_axis)
        c = torch.where(cell, p.col, 0).float()[..., None] * self.inv_axis
        angles = torch.cat((g, r, c), dim=-1)  # (B, T, n)
        angles = torch.cat((angles, angles), dim=-1)  # (B, T, hs): dims i and i + hs/2 share an angle
        return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)  # (B, 1, T, hs) each


__all__ = ["Rope1D", "Rope2D", "Rope3D", "rope_inv_freq"]
