"""Grids and examples to token sequences with per-token metadata, and back.

An example is ``BOS`` followed by every context pair (input grid, output grid) and then the
query pair. A grid is one block::

    INPUT|OUTPUT, HEIGHT_h, WIDTH_w, <h*w colour cells in the order>, GRID_END

and with ``row_end=True`` a ``ROW_END`` follows the last cell of every row (only for orders that
visit whole rows consecutively: ``row_major`` and ``snake``). Every token carries its grid's
``grid`` index and ``role``; cell tokens carry their true ``row``/``col`` whatever the order.
The blocks come from a cached per-(order, h, w, row_end) layout and are concatenated with numpy,
so serializing an example costs a few array operations per grid.

``deserialize`` inverts ``serialize_example`` exactly (and raises on malformed sequences);
``parse_grid`` reads a *generated* output-grid stream and never raises for any list of ints:
it returns the grid or the reason the stream is not a grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from gridlm.datamodules.orders import ROW_WISE_ORDERS, cell_order, check_order
from gridlm.datamodules.tasks import Pair
from gridlm.datamodules.tokens import (
    BOS,
    GRID_END,
    HEIGHT_0,
    INPUT,
    MAX_SIDE,
    N_COLOURS,
    OUTPUT,
    ROLE_DEMO_INPUT,
    ROLE_DEMO_OUTPUT,
    ROLE_SPECIAL,
    ROLE_TEST_INPUT,
    ROLE_TEST_OUTPUT,
    ROW_END,
    TARGET_POLICIES,
    WIDTH_0,
    VOCAB_SIZE,
    TokenSequence,
    token_name,
)

_CELL = -1  # placeholder in a layout's token template: a colour cell goes here


def check_row_end(order: str, row_end: bool) -> None:
    """Raise a one-line ValueError if ``row_end`` is requested for an order that is not row-wise."""
    check_order(order)
    if row_end and order not in ROW_WISE_ORDERS:
        raise ValueError(
            f"row_end=True needs an order that visits whole rows ({', '.join(ROW_WISE_ORDERS)}), "
            f"got order={order!r}; set row_end=False or change the order"
        )


def grid_token_count(h: int, w: int, row_end: bool = False) -> int:
    """Tokens of one grid block: marker + HEIGHT + WIDTH + h*w cells (+ h ROW_ENDs) + GRID_END."""
    return 3 + h * w + (h if row_end else 0) + 1


def cell_positions(h: int, w: int, order: str) -> tuple[np.ndarray, np.ndarray]:
    """True ``(row, col)`` of the i-th generated cell of an h x w grid: two read-only ``(h*w,)``
    arrays (the decoder uses them to give each generated cell its coordinates)."""
    cells = cell_order(order, h, w)  # (h*w, 2)
    return cells[:, 0], cells[:, 1]


@dataclass(frozen=True)
class GridLayout:
    """The token template of one grid block (marker slot at 0), all arrays ``(grid_token_count,)``
    and read-only."""

    tokens: np.ndarray  # int64: fixed tokens, _CELL where a colour goes, marker slot 0 = INPUT
    row: np.ndarray  # int64: cell row or -1
    col: np.ndarray  # int64: cell column or -1
    cell_slots: np.ndarray  # (h*w,) int64: block positions of the cells, in visiting order
    flat: np.ndarray  # (h*w,) int64: flat index ``row * w + col`` of each cell, in visiting order


@lru_cache(maxsize=8192)
def grid_layout(order: str, h: int, w: int, row_end: bool = False) -> GridLayout:
    """The cached block layout of an h x w grid in ``order`` (see :class:`GridLayout`)."""
    check_row_end(order, row_end)
    cells = cell_order(order, h, w)  # (h*w, 2)
    n = grid_token_count(h, w, row_end)
    tokens = np.full(n, _CELL, dtype=np.int64)
    row = np.full(n, -1, dtype=np.int64)
    col = np.full(n, -1, dtype=np.int64)
    i = np.arange(h * w)
    cell_slots = 3 + i + (i // w if row_end else 0)  # each completed row adds one ROW_END before
    tokens[:3] = (INPUT, HEIGHT_0 + h, WIDTH_0 + w)
    if row_end:
        tokens[3 + (np.arange(1, h + 1) * (w + 1)) - 1] = ROW_END  # after the last cell of each row
    tokens[-1] = GRID_END
    row[cell_slots], col[cell_slots] = cells[:, 0], cells[:, 1]
    flat = cells[:, 0] * w + cells[:, 1]
    for a in (tokens, row, col, cell_slots, flat):
        a.setflags(write=False)
    return GridLayout(tokens, row, col, cell_slots, flat)


def _check_grid(grid: np.ndarray, where: str) -> np.ndarray:
    grid = np.asarray(grid)
    if grid.ndim != 2 or not (1 <= grid.shape[0] <= MAX_SIDE and 1 <= grid.shape[1] <= MAX_SIDE):
        raise ValueError(f"{where} must be a 2D grid of 1..{MAX_SIDE} x 1..{MAX_SIDE}, got shape {grid.shape}")
    if grid.min() < 0 or grid.max() >= N_COLOURS:
        raise ValueError(f"{where} has values outside 0..{N_COLOURS - 1} (min {grid.min()}, max {grid.max()})")
    return grid


def _grids(context: Sequence[Pair], query: Pair, prompt_only: bool) -> list[tuple[np.ndarray | None, int, int]]:
    """``(grid, marker, role)`` of every block in sequence order; the query output is ``None``
    (marker only) with ``prompt_only``."""
    blocks = []
    for k, pair in enumerate(context):
        if pair.output is None:
            raise ValueError(f"context pair {k} has no output grid; context pairs must be complete")
        blocks += [(pair.input, INPUT, ROLE_DEMO_INPUT), (pair.output, OUTPUT, ROLE_DEMO_OUTPUT)]
    blocks.append((query.input, INPUT, ROLE_TEST_INPUT))
    if prompt_only:
        blocks.append((None, OUTPUT, ROLE_TEST_OUTPUT))
    elif query.output is None:
        raise ValueError("query.output is None; pass prompt_only=True to serialize the prompt only")
    else:
        blocks.append((query.output, OUTPUT, ROLE_TEST_OUTPUT))
    return blocks


def example_length(
    context: Sequence[Pair], query: Pair, row_end: bool = False, prompt_only: bool = False
) -> int:
    """``len(serialize_example(context, query, ..., row_end=row_end, prompt_only=prompt_only))``,
    from the grid shapes alone (no arrays built). Same errors for a missing output."""
    return _length(context, query, row_end, prompt_only, transpose=False)


def max_augmented_length(
    context: Sequence[Pair], query: Pair, row_end: bool = False, prompt_only: bool = False
) -> int:
    """The longest :func:`example_length` of the example under any dihedral augmentation.

    Transposing transforms swap every grid's height and width, which changes the number of
    ROW_END tokens (one per row); without ``row_end`` this equals :func:`example_length`."""
    length = _length(context, query, row_end, prompt_only, transpose=False)
    return max(length, _length(context, query, row_end, prompt_only, transpose=True)) if row_end else length


def _length(context: Sequence[Pair], query: Pair, row_end: bool, prompt_only: bool, transpose: bool) -> int:
    total = 1  # BOS
    for grid, _, _ in _grids(context, query, prompt_only):
        if grid is None:
            total += 1  # the bare OUTPUT marker
            continue
        h, w = np.shape(grid)
        total += grid_token_count(w, h, row_end) if transpose else grid_token_count(h, w, row_end)
    return total


def serialize_example(
    context: Sequence[Pair],
    query: Pair,
    order: str = "row_major",
    target_policy: str = "all_outputs",
    row_end: bool = False,
    meta: dict | None = None,
    prompt_only: bool = False,
) -> TokenSequence:
    """Serialize context pairs and a query pair into one :class:`TokenSequence`.

    Args:
        context: complete demonstration pairs, in order (grid indices 2k, 2k+1).
        query: the pair to solve (grid indices 2*len(context), +1).
        order: cell order (``gridlm.datamodules.orders.ORDERS``).
        target_policy: which tokens are targets (``tokens.TARGET_POLICIES``):
            ``"test_output"`` the query output block except its OUTPUT marker (the marker is the
            prompt), ``"all_outputs"`` every output block except its marker, ``"all"`` every
            token except BOS.
        row_end: a ROW_END after each row's last cell (row-wise orders only).
        meta: stored (shallow-copied) in ``TokenSequence.meta``.
        prompt_only: stop right after the query's OUTPUT marker (the decoder's prompt; the query
            output may be ``None``). The result equals the first ``example_length(...,
            prompt_only=True)`` positions of the full sequence, field by field.
    """
    if target_policy not in TARGET_POLICIES:
        raise ValueError(f"target_policy={target_policy!r} is not valid; valid: {', '.join(TARGET_POLICIES)}")
    check_row_end(order, row_end)
    blocks = _grids(context, query, prompt_only)
    n_grids = len(blocks)
    parts: dict[str, list[np.ndarray]] = {f: [] for f in ("tokens", "row", "col", "grid", "role", "target_mask", "height", "width")}
    for f, v in zip(parts, (BOS, -1, -1, -1, ROLE_SPECIAL, False, -1, -1)):
        parts[f].append(np.array([v], dtype=bool if f == "target_mask" else np.int64))
    for g, (grid, marker, role) in enumerate(blocks):
        is_output = marker == OUTPUT
        is_query_output = g == n_grids - 1 and is_output
        if grid is None:  # prompt_only: the query OUTPUT marker alone
            toks = np.array([OUTPUT], dtype=np.int64)
            row = col = height = width = np.array([-1], dtype=np.int64)
        else:
            grid = _check_grid(grid, f"grid {g} ({'output' if is_output else 'input'})")
            h, w = grid.shape
            layout = grid_layout(order, h, w, row_end)
            toks = layout.tokens.copy()  # (n,)
            toks[layout.cell_slots] = grid.reshape(-1)[layout.flat]
            toks[0] = marker
            row, col = layout.row, layout.col
            is_cell = row >= 0
            height, width = np.where(is_cell, h, -1), np.where(is_cell, w, -1)
        n = len(toks)
        if target_policy == "all":
            target = np.ones(n, dtype=bool)
        else:
            supervised = is_query_output if target_policy == "test_output" else is_output
            target = np.full(n, supervised, dtype=bool)
            target[0] = False  # the OUTPUT marker is given, the block after it is predicted
        parts["tokens"].append(toks)
        parts["row"].append(row)
        parts["col"].append(col)
        parts["grid"].append(np.full(n, g, dtype=np.int64))
        parts["role"].append(np.full(n, role, dtype=np.int64))
        parts["target_mask"].append(target)
        parts["height"].append(height)
        parts["width"].append(width)
    arrays = {f: np.concatenate(v) for f, v in parts.items()}  # each (L,)
    return TokenSequence(**arrays, meta=dict(meta or {}))


def _parse_block(toks: list[int], order: str, row_end: bool) -> tuple[np.ndarray | None, str | None, int]:
    """Parse one grid from ``toks`` (starting at its HEIGHT token). Returns ``(grid, reason,
    consumed)``; ``consumed`` counts the tokens through GRID_END when the grid is valid."""
    if not toks:
        return None, "empty stream, expected a height token", 0
    if not HEIGHT_0 + 1 <= toks[0] <= HEIGHT_0 + MAX_SIDE:
        return None, f"expected a height token at 0, got {token_name(toks[0])}", 0
    if len(toks) < 2:
        return None, "truncated after the height token", 0
    if not WIDTH_0 + 1 <= toks[1] <= WIDTH_0 + MAX_SIDE:
        return None, f"expected a width token at 1, got {token_name(toks[1])}", 0
    h, w = toks[0] - HEIGHT_0, toks[1] - WIDTH_0
    layout = grid_layout(order, h, w, row_end)
    expected = layout.tokens[3:]  # (n - 3,): cells (_CELL), ROW_ENDs, GRID_END
    body_list = toks[2 : 2 + len(expected)]
    # out-of-vocabulary ints (negative, huge) become -2: never a colour nor a special token
    body = np.array([t if 0 <= t < VOCAB_SIZE else -2 for t in body_list], dtype=np.int64)
    is_cell = expected[: len(body)] == _CELL
    bad = np.where(is_cell, (body < 0) | (body >= N_COLOURS), body != expected[: len(body)])
    n_cells = h * w
    if bad.any():
        i = int(np.argmax(bad))  # first offending body position
        got, pos = body_list[i], i + 2
        done = int(is_cell[:i].sum())  # cells read before it
        if is_cell[i]:
            if got == GRID_END:
                return None, f"grid ended after {done} of {n_cells} cells", 0
            return None, f"non-colour token {token_name(got)} at cell {done}", 0
        want = token_name(int(expected[i]))
        if expected[i] == ROW_END:
            return None, f"expected ROW_END after row {done // w - 1} at {pos}, got {token_name(got)}", 0
        return None, f"expected {want} after {done} cells at {pos}, got {token_name(got)}", 0
    if len(body) < len(expected):
        done = int(is_cell.sum())
        if done < n_cells:
            return None, f"truncated after {done} of {n_cells} cells", 0
        return None, f"truncated after all {n_cells} cells, before GRID_END", 0
    grid = np.empty(n_cells, dtype=np.int64)
    grid[layout.flat] = body[layout.cell_slots - 3]
    return grid.reshape(h, w), None, 2 + len(expected)


def parse_grid(
    tokens: Sequence[int], order: str = "row_major", row_end: bool = False
) -> tuple[np.ndarray | None, str | None]:
    """Read a generated output-grid stream that starts at the HEIGHT token (after OUTPUT).

    Returns ``(grid, None)`` for a well-formed grid (tokens after its GRID_END are ignored) or
    ``(None, reason)``, e.g. ``"expected a height token at 0, got 3"``, ``"truncated after 12 of
    20 cells"``, ``"non-colour token W5 at cell 4"``. Never raises for any sequence of ints;
    only an invalid ``order``/``row_end`` configuration raises ValueError.
    """
    check_row_end(order, row_end)
    try:
        toks = [int(t) for t in tokens]
    except (TypeError, ValueError, OverflowError):
        return None, "the stream contains values that are not integers"
    grid, reason, _ = _parse_block(toks, order, row_end)
    return grid, reason


def deserialize(seq: TokenSequence | np.ndarray, order: str, row_end: bool = False) -> list[tuple[str, np.ndarray]]:
    """The grids of a serialized example: ``[("input", g0), ("output", g1), ...]``, the exact
    inverse of :func:`serialize_example`. A prompt-only sequence (ending with the query's bare
    OUTPUT marker) gives its complete grids. Raises ValueError on a malformed sequence."""
    check_row_end(order, row_end)
    toks = [int(t) for t in (seq.tokens if isinstance(seq, TokenSequence) else np.asarray(seq).reshape(-1))]
    if not toks or toks[0] != BOS:
        raise ValueError(f"a serialized example starts with BOS, got {token_name(toks[0]) if toks else 'nothing'}")
    grids: list[tuple[str, np.ndarray]] = []
    pos = 1
    while pos < len(toks):
        want = INPUT if len(grids) % 2 == 0 else OUTPUT
        if toks[pos] != want:
            raise ValueError(f"expected {token_name(want)} at {pos} (grid {len(grids)}), got {token_name(toks[pos])}")
        if want == OUTPUT and pos == len(toks) - 1:
            return grids  # prompt-only: the query's bare OUTPUT marker
        grid, reason, consumed = _parse_block(toks[pos + 1 :], order, row_end)
        if grid is None:
            raise ValueError(f"grid {len(grids)} at {pos}: {reason}")
        grids.append(("input" if want == INPUT else "output", grid))
        pos += 1 + consumed
    if len(grids) % 2:
        raise ValueError(f"the sequence ends after input grid {len(grids) - 1} without its output")
    return grids
