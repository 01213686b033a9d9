"""Serialization orders: the sequence in which the cells of an h x w grid are visited.

An order only permutes cells; the serializer still gives every cell token its true (row, col),
so every 2D positional encoding works with every order.

    row_major   rows top to bottom, each left to right (reading order)
    col_major   columns left to right, each top to bottom
    snake       rows top to bottom, alternately left-to-right and right-to-left (boustrophedon)
    hilbert     generalized Hilbert curve ("gilbert") for any rectangle, after J. Červený,
                "Generalized Hilbert space-filling curve for rectangular domains" (gilbert, 2018).
                It starts at (0, 0) and keeps consecutive cells 4-neighbours, except for one
                diagonal step exactly when the longer side is odd and the shorter side even
                and >= 4 (182 of the 900 ARC shapes), where parity forces it.

``cell_order`` is the fast, cached path used by the serializer and the decoder;
``reference_cell_order`` is a slow, plainly written reference the tests compare it against.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import numpy as np

OrderName = Literal["row_major", "col_major", "snake", "hilbert"]


def _row_major(h: int, w: int) -> np.ndarray:
    rows = np.repeat(np.arange(h), w)  # (h*w,)
    cols = np.tile(np.arange(w), h)  # (h*w,)
    return np.stack([rows, cols], axis=1)


def _col_major(h: int, w: int) -> np.ndarray:
    rows = np.tile(np.arange(h), w)
    cols = np.repeat(np.arange(w), h)
    return np.stack([rows, cols], axis=1)


def _snake(h: int, w: int) -> np.ndarray:
    rows = np.repeat(np.arange(h), w)
    cols = np.tile(np.arange(w), h)
    odd = rows % 2 == 1
    cols[odd] = w - 1 - cols[odd]  # odd rows run right to left
    return np.stack([rows, cols], axis=1)


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _hilbert(h: int, w: int) -> np.ndarray:
    """Generalized Hilbert curve, iteratively: an explicit stack of sub-rectangles, each emitted
    as whole straight segments once it is one cell thick.

    A sub-rectangle is ``(x, y, ax, ay, bx, by)``: origin cell (x = col, y = row), the vector
    ``a`` spanning its major axis (the direction the curve travels overall) and ``b`` spanning
    the minor one. It is split in two halves along ``a`` when it is long (2|a| > 3|b|), else in
    three parts: up along half of ``b``, across the full ``a``, back down.
    """
    stack = [(0, 0, w, 0, 0, h) if w >= h else (0, 0, 0, h, w, 0)]
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    while stack:
        x, y, ax, ay, bx, by = stack.pop()
        major, minor = abs(ax + ay), abs(bx + by)
        dax, day, dbx, dby = _sign(ax), _sign(ay), _sign(bx), _sign(by)
        if minor == 1 or major == 1:  # one cell thick: a straight segment
            n, dx, dy = (major, dax, day) if minor == 1 else (minor, dbx, dby)
            steps = np.arange(n)
            xs.append(x + dx * steps)
            ys.append(y + dy * steps)
            continue
        ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
        if 2 * major > 3 * minor:
            if abs(ax2 + ay2) % 2 and major > 2:  # keep the first half even-sized
                ax2, ay2 = ax2 + dax, ay2 + day
            parts = [(x, y, ax2, ay2, bx, by), (x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)]
        else:
            if abs(bx2 + by2) % 2 and minor > 2:  # keep the first strip even-thick
                bx2, by2 = bx2 + dbx, by2 + dby
            parts = [
                (x, y, bx2, by2, ax2, ay2),
                (x + bx2, y + by2, ax, ay, bx - bx2, by - by2),
                (x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2)),
            ]
        stack.extend(reversed(parts))  # LIFO: the first part is visited first
    rows, cols = np.concatenate(ys), np.concatenate(xs)
    return np.stack([rows, cols], axis=1)


ORDERS: dict[str, Callable[[int, int], np.ndarray]] = {
    "row_major": _row_major,
    "col_major": _col_major,
    "snake": _snake,
    "hilbert": _hilbert,
}

# Orders that visit each row's cells consecutively, so a ROW_END token can close every row.
ROW_WISE_ORDERS: tuple[str, ...] = ("row_major", "snake")


def check_order(order: str) -> None:
    """Raise a one-line ValueError unless ``order`` is a known order name."""
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is not a serialization order; valid: {', '.join(ORDERS)}")


def _check_shape(h: int, w: int) -> None:
    if not (isinstance(h, (int, np.integer)) and isinstance(w, (int, np.integer)) and h >= 1 and w >= 1):
        raise ValueError(f"grid shape must be two positive ints, got h={h!r}, w={w!r}")


@lru_cache(maxsize=4096)
def _cached(order: str, h: int, w: int) -> np.ndarray:
    cells = ORDERS[order](h, w).astype(np.int64)  # (h*w, 2) [row, col]
    cells.setflags(write=False)
    return cells


def cell_order(order: str, h: int, w: int) -> np.ndarray:
    """The cells of an ``h`` x ``w`` grid in visiting order: ``(h*w, 2)`` int64 ``[row, col]``.

    Cached; the returned array is read-only (copy it before modifying)."""
    check_order(order)
    _check_shape(h, w)
    return _cached(order, int(h), int(w))


@lru_cache(maxsize=4096)
def _cached_rank(order: str, h: int, w: int) -> np.ndarray:
    cells = _cached(order, h, w)
    rank = np.empty((h, w), dtype=np.int64)
    rank[cells[:, 0], cells[:, 1]] = np.arange(h * w)
    rank.setflags(write=False)
    return rank


def cell_rank(order: str, h: int, w: int) -> np.ndarray:
    """The inverse of :func:`cell_order`: ``(h, w)`` int64, the visiting index of every cell.

    ``cell_rank(o, h, w)[cell_order(o, h, w)[i, 0], cell_order(o, h, w)[i, 1]] == i``. Read-only."""
    check_order(order)
    _check_shape(h, w)
    return _cached_rank(order, int(h), int(w))


# ---------------------------------------------------------------------------------------------
# Slow reference: plain loops and a recursive generalized Hilbert curve, one cell at a time.


def _gilbert_reference(x: int, y: int, ax: int, ay: int, bx: int, by: int, out: list[tuple[int, int]]) -> None:
    """Fill the rectangle spanned by ``a`` (major) and ``b`` (minor) from cell (x, y), recursively."""
    width, height = abs(ax + ay), abs(bx + by)
    step_a = (_sign(ax), _sign(ay))
    step_b = (_sign(bx), _sign(by))
    if height == 1:
        for _ in range(width):
            out.append((y, x))
            x, y = x + step_a[0], y + step_a[1]
        return
    if width == 1:
        for _ in range(height):
            out.append((y, x))
            x, y = x + step_b[0], y + step_b[1]
        return
    half_a = (ax // 2, ay // 2)
    half_b = (bx // 2, by // 2)
    if 2 * width > 3 * height:
        if abs(half_a[0] + half_a[1]) % 2 == 1 and width > 2:
            half_a = (half_a[0] + step_a[0], half_a[1] + step_a[1])
        _gilbert_reference(x, y, half_a[0], half_a[1], bx, by, out)
        _gilbert_reference(x + half_a[0], y + half_a[1], ax - half_a[0], ay - half_a[1], bx, by, out)
        return
    if abs(half_b[0] + half_b[1]) % 2 == 1 and height > 2:
        half_b = (half_b[0] + step_b[0], half_b[1] + step_b[1])
    # up along b, with a and b swapped so the strip is traversed along its length
    _gilbert_reference(x, y, half_b[0], half_b[1], half_a[0], half_a[1], out)
    # across the whole width, in the remaining part of b
    _gilbert_reference(x + half_b[0], y + half_b[1], ax, ay, bx - half_b[0], by - half_b[1], out)
    # back down, ending next to where the rectangle's traversal should end
    end_x = x + (ax - step_a[0]) + (half_b[0] - step_b[0])
    end_y = y + (ay - step_a[1]) + (half_b[1] - step_b[1])
    _gilbert_reference(end_x, end_y, -half_b[0], -half_b[1], -(ax - half_a[0]), -(ay - half_a[1]), out)


def reference_cell_order(order: str, h: int, w: int) -> list[tuple[int, int]]:
    """Slow reference for :func:`cell_order`: a list of ``(row, col)`` in visiting order."""
    check_order(order)
    cells: list[tuple[int, int]] = []
    if order == "row_major":
        for r in range(h):
            for c in range(w):
                cells.append((r, c))
    elif order == "col_major":
        for c in range(w):
            for r in range(h):
                cells.append((r, c))
    elif order == "snake":
        for r in range(h):
            columns = range(w) if r % 2 == 0 else range(w - 1, -1, -1)
            for c in columns:
                cells.append((r, c))
    elif order == "hilbert":
        if w >= h:
            _gilbert_reference(0, 0, w, 0, 0, h, cells)
        else:
            _gilbert_reference(0, 0, 0, h, w, 0, cells)
    return cells
