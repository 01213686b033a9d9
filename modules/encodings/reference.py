"""Slow, plain references for every positional encoding, written from the papers' formulas.

One function per encoding name, looping over tokens in Python with the ``math`` module (no table,
no broadcasting, no gather), so a reader can check each line against the paper. Learned encodings
read the weights of the module under test. ``tests/test_encodings.py`` checks that every fast
path in ``additive.py``, ``rotary.py`` and ``bias.py`` agrees with its reference here.

``REFERENCES[name](module, positions)`` returns what ``module(positions)`` returns (for the bias
slot: ``REFERENCES[name](module, q_positions, k_positions)``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from gridlm.modules.encodings.base import PositionalEncoding, Positions

N_SIDE = 30  # ARC grids are at most 30x30
N_LEVELS = 5  # quadtree levels in a 32x32 frame


def _tokens(p: Positions):
    """Yield ``(b, t, pos, row, col, grid)`` as Python ints, one token at a time."""
    B, T = p.pos.shape
    for b in range(B):
        for t in range(T):
            yield b, t, int(p.pos[b, t]), int(p.row[b, t]), int(p.col[b, t]), int(p.grid[b, t])


def _is_cell(row: int, col: int) -> bool:
    return row >= 0 and col >= 0


def none(m: PositionalEncoding, p: Positions) -> Tensor:
    return torch.zeros(*p.pos.shape, m.d_model)


def learned_1d(m: PositionalEncoding, p: Positions) -> Tensor:
    out = torch.zeros(*p.pos.shape, m.d_model)
    for b, t, pos, *_ in _tokens(p):
        out[b, t] = m.table.weight[pos].detach()
    return out


def sinusoid(pos: int, dim: int, base: float = 10000.0) -> list[float]:
    """Vaswani et al. (2017), section 3.5: PE(pos, 2i) = sin(pos / base^(2i/dim)), PE(pos, 2i+1) = cos(...)."""
    out = []
    for j in range(dim):
        i = j // 2
        angle = pos / base ** (2 * i / dim)
        out.append(math.sin(angle) if j % 2 == 0 else math.cos(angle))
    return out


def sinusoidal_1d(m: PositionalEncoding, p: Positions) -> Tensor:
    out = torch.zeros(*p.pos.shape, m.d_model)
    for b, t, pos, *_ in _tokens(p):
        out[b, t] = torch.tensor(sinusoid(pos, m.d_model))
    return out


def sinusoidal_2d(m: PositionalEncoding, p: Positions) -> Tensor:
    out = torch.zeros(*p.pos.shape, m.d_model)
    half = m.d_model // 2
    for b, t, _, row, col, _ in _tokens(p):
        if _is_cell(row, col):
            out[b, t] = torch.tensor(sinusoid(row, half) + sinusoid(col, half))
    return out


def onehot_2d(m: PositionalEncoding, p: Positions) -> Tensor:
    """An explicit bias-free ``nn.Linear(60, d_model)`` on ``concat(onehot(row, 30), onehot(col, 30))``,
    its weight copied from the module's row and column tables; a special token's one-hots are zero."""
    linear = nn.Linear(2 * N_SIDE, m.d_model, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.cat((m.row.weight, m.col.weight), dim=0).T)  # (d_model, 60)
    onehots = torch.zeros(*p.pos.shape, 2 * N_SIDE)
    for b, t, _, row, col, _ in _tokens(p):
        if _is_cell(row, col):
            onehots[b, t, row] = 1.0
            onehots[b, t, N_SIDE + col] = 1.0
    with torch.no_grad():
        return linear(onehots)


def edges_2d(m: PositionalEncoding, p: Positions) -> Tensor:
    """``onehot_2d`` over four one-hots: row, col, height-1-row, width-1-col (each 30 wide), one
    explicit bias-free ``nn.Linear(120, d_model)`` whose weight is the module's table."""
    linear = nn.Linear(4 * N_SIDE, m.d_model, bias=False)
    with torch.no_grad():
        linear.weight.copy_(m.table.weight.T)  # (d_model, 120)
    onehots = torch.zeros(*p.pos.shape, 4 * N_SIDE)
    for b, t, _, row, col, _ in _tokens(p):
        if _is_cell(row, col):
            h, w = int(p.height[b, t]), int(p.width[b, t])
            for k, distance in enumerate((row, col, h - 1 - row, w - 1 - col)):
                onehots[b, t, k * N_SIDE + distance] = 1.0
    with torch.no_grad():
        return linear(onehots)


def quadtree_code(row: int, col: int) -> list[int]:
    """Quadrant at each of 5 levels (coarsest first): 2 * bit_{4-l}(row) + bit_{4-l}(col)."""
    bits = [N_LEVELS - 1 - level for level in range(N_LEVELS)]  # 4, 3, 2, 1, 0
    return [2 * ((row >> b) & 1) + ((col >> b) & 1) for b in bits]


def quadtree_2d(m: PositionalEncoding, p: Positions) -> Tensor:
    out = torch.zeros(*p.pos.shape, m.d_model)
    for b, t, _, row, col, _ in _tokens(p):
        if _is_cell(row, col):
            for level, q in enumerate(quadtree_code(row, col)):
                out[b, t] += m.table.weight[4 * level + q].detach()
    return out


def rope_angles_1d(pos: int, head_dim: int, base: float = 10000.0) -> list[float]:
    """RoFormer (Su et al. 2021), eq. 15: theta_i = base^(-2i/d), pair i rotates by pos * theta_i."""
    return [pos * base ** (-2 * i / head_dim) for i in range(head_dim // 2)]


def rope_angles_2d(row: int, col: int, head_dim: int, base: float = 100.0) -> list[float]:
    """Axial RoPE: the first hs/4 pairs rotate by the row, the next hs/4 by the column, each with the
    1D frequencies of width hs/2. A special token (row -1) is not rotated."""
    if not _is_cell(row, col):
        return [0.0] * (head_dim // 2)
    return rope_angles_1d(row, head_dim // 2, base) + rope_angles_1d(col, head_dim // 2, base)


def rope_angles_3d(grid: int, row: int, col: int, head_dim: int, base: float = 100.0) -> list[float]:
    """Axial RoPE over (grid, row, col): n = hs/2 pairs, a = (n - n//4) // 2; the first n - 2a rotate
    by the grid index (0 for BOS/PAD, grid -1), then a by the row and a by the column (0 for
    non-cells), each group with frequencies base^(-i/size)."""
    n = head_dim // 2
    n_axis = (n - n // 4) // 2
    n_grid = n - 2 * n_axis
    cell = _is_cell(row, col)
    angles = [max(grid, 0) * base ** (-i / n_grid) for i in range(n_grid)]
    angles += [(row if cell else 0) * base ** (-i / n_axis) for i in range(n_axis)]
    angles += [(col if cell else 0) * base ** (-i / n_axis) for i in range(n_axis)]
    return angles


def _cos_sin(m: PositionalEncoding, p: Positions, angles_of) -> tuple[Tensor, Tensor]:
    hs = m.head_dim
    cos = torch.zeros(p.pos.shape[0], 1, p.pos.shape[1], hs)
    sin = torch.zeros_like(cos)
    for b, t, pos, row, col, grid in _tokens(p):
        for i, a in enumerate(angles_of(pos, row, col, hs, grid)):
            cos[b, 0, t, i] = cos[b, 0, t, i + hs // 2] = math.cos(a)  # dims i and i + hs/2 form pair i
            sin[b, 0, t, i] = sin[b, 0, t, i + hs // 2] = math.sin(a)
    return cos, sin


def rope_1d(m: PositionalEncoding, p: Positions) -> tuple[Tensor, Tensor]:
    return _cos_sin(m, p, lambda pos, row, col, hs, grid: rope_angles_1d(pos, hs))


def rope_2d(m: PositionalEncoding, p: Positions) -> tuple[Tensor, Tensor]:
    return _cos_sin(m, p, lambda pos, row, col, hs, grid: rope_angles_2d(row, col, hs))


def rope_3d(m: PositionalEncoding, p: Positions) -> tuple[Tensor, Tensor]:
    return _cos_sin(m, p, lambda pos, row, col, hs, grid: rope_angles_3d(grid, row, col, hs))


def rotate(x: Tensor, angles: list[list[float]]) -> Tensor:
    """Rotate ``x`` (B, nh, T, hs) as complex numbers: pair i is ``z = x_i + j x_{i + hs/2}``, and token
    ``t`` of batch row ``b`` multiplies it by ``exp(j * angles[b*T + t][i])``."""
    B, H, T, hs = x.shape
    out = torch.empty_like(x)
    for b in range(B):
        for t in range(T):
            for i, a in enumerate(angles[b * T + t]):
                for h in range(H):
                    z = complex(float(x[b, h, t, i]), float(x[b, h, t, i + hs // 2]))
                    z *= complex(math.cos(a), math.sin(a))
                    out[b, h, t, i], out[b, h, t, i + hs // 2] = z.real, z.imag
    return out


def alibi_2d(m: PositionalEncoding, q: Positions, k: Positions) -> Tensor:
    """Press et al. (2022) with grid distance: -slope_h * (|drow| + |dcol|) for two cells of one grid, else 0."""
    B, Tq = q.pos.shape
    Tk = k.pos.shape[1]
    out = torch.zeros(B, m.n_heads, Tq, Tk)
    keys = list(_tokens(k))
    for b, i, _, qr, qc, qg in _tokens(q):
        for kb, j, _, kr, kc, kg in keys:
            if kb != b or not (_is_cell(qr, qc) and _is_cell(kr, kc)) or qg < 0 or qg != kg:
                continue
            for h in range(m.n_heads):
                out[b, h, i, j] = -float(m.slopes[h]) * (abs(qr - kr) + abs(qc - kc))
    return out


REFERENCES: dict[str, Callable] = {
    "none": none,
    "learned_1d": learned_1d,
    "sinusoidal_1d": sinusoidal_1d,
    "rope_1d": rope_1d,
    "onehot_2d": onehot_2d,
    "edges_2d": edges_2d,
    "quadtree_2d": quadtree_2d,
    "sinusoidal_2d": sinusoidal_2d,
    "rope_2d": rope_2d,
    "rope_3d": rope_3d,
    "alibi_2d": alibi_2d,
}
