"""Serialization orders: permutations, fast path == reference, invertibility, Hilbert locality."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from gridlm.datamodules.orders import ORDERS, ROW_WISE_ORDERS, OrderName, cell_order, cell_rank, reference_cell_order

SIDES = range(1, 31)
SHAPES = [(h, w) for h in SIDES for w in SIDES]  # all 900 ARC shapes


def test_registry_matches_literal():
    assert tuple(ORDERS) == get_args(OrderName)
    assert set(ROW_WISE_ORDERS) <= set(ORDERS)


@pytest.mark.parametrize("order", list(ORDERS))
def test_every_shape_is_a_permutation_equal_to_the_reference_and_invertible(order):
    for h, w in SHAPES:
        cells = cell_order(order, h, w)  # (h*w, 2)
        assert cells.shape == (h * w, 2) and cells.dtype == np.int64
        # a permutation of all cells: every flat index exactly once
        flat = np.sort(cells[:, 0] * w + cells[:, 1])
        np.testing.assert_array_equal(flat, np.arange(h * w), err_msg=f"{order} {h}x{w}")
        assert cells.tolist() == [list(rc) for rc in reference_cell_order(order, h, w)], f"{order} {h}x{w}"
        rank = cell_rank(order, h, w)  # (h, w)
        np.testing.assert_array_equal(rank[cells[:, 0], cells[:, 1]], np.arange(h * w))
        grid = np.arange(h * w).reshape(h, w)
        restored = np.empty_like(grid)
        restored[cells[:, 0], cells[:, 1]] = grid[cells[:, 0], cells[:, 1]]
        np.testing.assert_array_equal(restored, grid)


def test_small_orders_by_hand():
    assert cell_order("row_major", 2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    assert cell_order("col_major", 2, 3).tolist() == [[0, 0], [1, 0], [0, 1], [1, 1], [0, 2], [1, 2]]
    assert cell_order("snake", 2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 2], [1, 1], [1, 0]]
    assert cell_order("hilbert", 2, 2).tolist() == [[0, 0], [1, 0], [1, 1], [0, 1]]


@pytest.mark.parametrize("order", ROW_WISE_ORDERS)
def test_row_wise_orders_visit_whole_rows_consecutively(order):
    for h, w in [(1, 1), (3, 7), (30, 30), (5, 2)]:
        rows = cell_order(order, h, w)[:, 0].reshape(h, w)
        np.testing.assert_array_equal(rows, np.repeat(np.arange(h)[:, None], w, axis=1))


def _classic_hilbert(n: int) -> list[list[int]]:
    """The classic Hilbert curve on an n x n grid (n a power of two), by the textbook d -> (x, y)
    bit-twiddling map, independent of the gilbert recursion. Returns ``[row, col]`` = ``[y, x]``."""
    cells = []
    for d in range(n * n):
        x = y = 0
        t, s = d, 1
        while s < n:
            rx = 1 & (t // 2)
            ry = 1 & (t ^ rx)
            if ry == 0:
                if rx == 1:
                    x, y = s - 1 - x, s - 1 - y
                x, y = y, x
            x, y = x + s * rx, y + s * ry
            t //= 4
            s *= 2
        cells.append([y, x])
    return cells


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_hilbert_is_the_classic_curve_on_power_of_two_squares(n):
    assert cell_order("hilbert", n, n).tolist() == _classic_hilbert(n)


def test_hilbert_locality_and_diagonal_steps_over_all_shapes():
    """Consecutive cells are 4-neighbours except one diagonal step, exactly for the 182 shapes
    whose longer side is odd and shorter side even and >= 4 (the rectangle forces it there)."""
    diagonal_shapes = set()
    for h, w in SHAPES:
        cells = cell_order("hilbert", h, w)
        assert cells[0].tolist() == [0, 0]
        # it ends at the far corner of the longer side, or next to it where parity forbids the
        # corner (2 x odd: both corners have the same chessboard colour and h*w is even)
        back = int(min(h, w) == 2 and max(h, w) % 2 == 1)
        end = [0, w - 1 - back] if w >= h else [h - 1 - back, 0]
        assert cells[-1].tolist() == end, f"{h}x{w}"
        steps = np.abs(np.diff(cells, axis=0))  # (h*w-1, 2)
        if len(steps) == 0:
            continue
        assert steps.max() == 1, f"{h}x{w} jumps"
        n_diagonal = int((steps.sum(axis=1) == 2).sum())
        assert n_diagonal <= 1, f"{h}x{w} has {n_diagonal} diagonal steps"
        if n_diagonal:
            diagonal_shapes.add((h, w))
    forced = {(h, w) for h, w in SHAPES if max(h, w) % 2 == 1 and min(h, w) % 2 == 0 and min(h, w) >= 4}
    assert diagonal_shapes == forced
    assert len(diagonal_shapes) == 182  # of 900 shapes; 182 diagonal steps in total


def test_cached_arrays_are_read_only():
    cells = cell_order("hilbert", 5, 7)
    assert cells is cell_order("hilbert", 5, 7)
    with pytest.raises(ValueError):
        cells[0, 0] = 3
    with pytest.raises(ValueError):
        cell_rank("snake", 3, 3)[0, 0] = 1


def test_unknown_order_and_bad_shape_are_one_line_errors():
    with pytest.raises(ValueError, match=r"order='zigzag'.*row_major, col_major, snake, hilbert") as e:
        cell_order("zigzag", 3, 3)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="order="):
        reference_cell_order("zigzag", 3, 3)
    with pytest.raises(ValueError, match="positive ints"):
        cell_order("row_major", 0, 3)
