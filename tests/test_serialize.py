"""Serializer: exact round trips for every order, metadata, target masks, and a parser that never raises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridlm.datamodules.augment import all_dihedral
from gridlm.datamodules.orders import ORDERS, ROW_WISE_ORDERS, cell_order
from gridlm.datamodules.serialize import (
    cell_positions,
    deserialize,
    example_length,
    grid_token_count,
    max_augmented_length,
    parse_grid,
    serialize_example,
)
from gridlm.datamodules.tasks import Pair
from gridlm.datamodules.tokens import (
    BOS,
    GRID_END,
    INPUT,
    OUTPUT,
    ROLE_DEMO_INPUT,
    ROLE_DEMO_OUTPUT,
    ROLE_SPECIAL,
    ROLE_TEST_INPUT,
    ROLE_TEST_OUTPUT,
    ROW_END,
    TARGET_POLICIES,
    height_token,
    width_token,
)

SETTINGS = [(o, False) for o in ORDERS] + [(o, True) for o in ROW_WISE_ORDERS]
SETTING_IDS = [f"{o}{'-row_end' if r else ''}" for o, r in SETTINGS]


def _grid(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 10, size=(h, w))


@st.composite
def examples(draw, max_context: int = 3):
    """(context, query) with random shapes 1..30 x 1..30 and random colours."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    side = st.integers(1, 30)

    def pair() -> Pair:
        return Pair(_grid(rng, draw(side), draw(side)), _grid(rng, draw(side), draw(side)))

    context = [pair() for _ in range(draw(st.integers(0, max_context)))]
    return context, pair()


def _all_grids(context, query) -> list[np.ndarray]:
    return [g for p in [*context, query] for g in (p.input, p.output)]


@pytest.mark.parametrize(("order", "row_end"), SETTINGS, ids=SETTING_IDS)
@settings(max_examples=25, deadline=None)
@given(example=examples())
def test_round_trip_metadata_and_parse(order, row_end, example):
    context, query = example
    grids = _all_grids(context, query)
    seq = serialize_example(context, query, order=order, row_end=row_end)
    assert len(seq) == example_length(context, query, row_end=row_end)
    assert all(getattr(seq, f).dtype == np.int64 for f in ("tokens", "row", "col", "grid", "role", "height", "width"))

    # deserialize inverts serialize exactly
    out = deserialize(seq, order, row_end)
    assert [k for k, _ in out] == ["input", "output"] * (len(context) + 1)
    for (_, got), want in zip(out, grids):
        np.testing.assert_array_equal(got, want)

    # metadata alone rebuilds every grid from (row, col, token) triples
    for g, want in enumerate(grids):
        block = seq.grid == g
        cells = block & (seq.row >= 0)
        assert cells.sum() == want.size and (seq.col[cells] >= 0).all()
        rebuilt = np.full(want.shape, -1)
        rebuilt[seq.row[cells], seq.col[cells]] = seq.tokens[cells]
        np.testing.assert_array_equal(rebuilt, want)
        first = int(np.argmax(block))
        assert block.sum() == grid_token_count(*want.shape, row_end)
        assert seq.tokens[first] == (INPUT if g % 2 == 0 else OUTPUT)
        is_query = g >= 2 * len(context)
        role = [[ROLE_DEMO_INPUT, ROLE_DEMO_OUTPUT], [ROLE_TEST_INPUT, ROLE_TEST_OUTPUT]][is_query][g % 2]
        assert (seq.role[block] == role).all()
        # every cell carries its grid's shape; no other token does
        assert (seq.height[cells] == want.shape[0]).all() and (seq.width[cells] == want.shape[1]).all()
        assert (seq.height[block & ~cells] == -1).all() and (seq.width[block & ~cells] == -1).all()
        # the cells appear in the order's visiting order, with the decoder's coordinates
        rows, cols = cell_positions(*want.shape, order)
        np.testing.assert_array_equal(seq.row[cells], rows)
        np.testing.assert_array_equal(seq.col[cells], cols)
        if g % 2 == 1:  # a generated output stream starts after OUTPUT; the rest is trailing junk
            grid, reason = parse_grid(seq.tokens[first + 1 :].tolist(), order, row_end)
            assert reason is None
            np.testing.assert_array_equal(grid, want)
    assert seq.tokens[0] == BOS and seq.grid[0] == -1 and seq.role[0] == ROLE_SPECIAL
    assert ((seq.row >= 0) == (seq.tokens < 10)).all() and ((seq.row >= 0) == (seq.col >= 0)).all()
    assert ((seq.tokens == ROW_END).sum() > 0) == row_end


def test_small_example_exact_tokens():
    context = [Pair(np.array([[1, 2]]), np.array([[3], [4]]))]
    query = Pair(np.array([[5]]), np.array([[6, 7]]))
    seq = serialize_example(context, query, order="col_major", target_policy="test_output")
    h, w = height_token, width_token
    assert seq.tokens.tolist() == [
        BOS,
        INPUT, h(1), w(2), 1, 2, GRID_END,
        OUTPUT, h(2), w(1), 3, 4, GRID_END,
        INPUT, h(1), w(1), 5, GRID_END,
        OUTPUT, h(1), w(2), 6, 7, GRID_END,
    ]  # fmt: skip
    assert seq.grid.tolist() == [-1] + [0] * 6 + [1] * 6 + [2] * 5 + [3] * 6
    assert seq.target_mask.tolist() == [False] * 19 + [True] * 5


@pytest.mark.parametrize("policy", TARGET_POLICIES)
def test_target_masks_per_policy(policy):
    rng = np.random.default_rng(0)
    context = [Pair(_grid(rng, 3, 4), _grid(rng, 2, 5)) for _ in range(2)]
    query = Pair(_grid(rng, 4, 4), _grid(rng, 1, 3))
    seq = serialize_example(context, query, order="snake", target_policy=policy, row_end=True)
    marker = np.isin(seq.tokens, [INPUT, OUTPUT])  # colours are 0..9, so only markers match
    if policy == "test_output":
        want = (seq.role == ROLE_TEST_OUTPUT) & ~marker
    elif policy == "all_outputs":
        want = np.isin(seq.role, [ROLE_DEMO_OUTPUT, ROLE_TEST_OUTPUT]) & ~marker
    else:
        want = np.arange(len(seq)) > 0
    np.testing.assert_array_equal(seq.target_mask, want)
    assert seq.target_mask.dtype == bool and not seq.target_mask[0]
    assert seq.target_mask[-1]  # the query's GRID_END is always predicted


@pytest.mark.parametrize(("order", "row_end"), SETTINGS, ids=SETTING_IDS)
def test_prompt_only_is_the_prefix_up_to_the_query_output_marker(order, row_end):
    rng = np.random.default_rng(1)
    context = [Pair(_grid(rng, 3, 7), _grid(rng, 7, 3))]
    query = Pair(_grid(rng, 5, 5), _grid(rng, 2, 9))
    meta = {"task_id": "t"}
    kwargs = dict(order=order, row_end=row_end, target_policy="all", meta=meta)
    full = serialize_example(context, query, **kwargs)
    hidden = Pair(query.input, None)
    prompt = serialize_example(context, hidden, prompt_only=True, **kwargs)
    n = example_length(context, hidden, row_end=row_end, prompt_only=True)
    assert len(prompt) == n and prompt.tokens[-1] == OUTPUT and prompt.role[-1] == ROLE_TEST_OUTPUT
    for f in ("tokens", "row", "col", "grid", "role", "target_mask"):
        np.testing.assert_array_equal(getattr(prompt, f), getattr(full, f)[:n], err_msg=f)
    assert prompt.meta == meta and prompt.meta is not meta
    assert [k for k, _ in deserialize(prompt, order, row_end)] == ["input", "output", "input"]


def test_configuration_errors_are_one_line_and_name_the_options():
    p = Pair(np.zeros((2, 2), dtype=np.int64), np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="target_policy='some'.*test_output, all_outputs, all"):
        serialize_example([], p, target_policy="some")
    for order in ("col_major", "hilbert"):
        with pytest.raises(ValueError, match=f"row_end=True.*row_major, snake.*order='{order}'") as e:
            serialize_example([], p, order=order, row_end=True)
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match="row_end=True"):
            parse_grid([17, 47, 0, 0, 0, 0, 15], order=order, row_end=True)
    with pytest.raises(ValueError, match="order='spiral'"):
        serialize_example([], p, order="spiral")
    with pytest.raises(ValueError, match="prompt_only=True"):
        serialize_example([], Pair(p.input, None))
    with pytest.raises(ValueError, match="prompt_only=True"):
        example_length([], Pair(p.input, None))
    with pytest.raises(ValueError, match="context pair 0 has no output"):
        serialize_example([Pair(p.input, None)], p)
    with pytest.raises(ValueError, match=r"outside 0..9"):
        serialize_example([], Pair(p.input, np.full((2, 2), 10)))
    with pytest.raises(ValueError, match="shape"):
        serialize_example([], Pair(np.zeros((31, 2), dtype=np.int64), p.output))


def test_deserialize_rejects_malformed_sequences():
    p = Pair(np.arange(6).reshape(2, 3), np.arange(4).reshape(2, 2))
    toks = serialize_example([], p).tokens
    with pytest.raises(ValueError, match="starts with BOS"):
        deserialize(toks[1:], "row_major")
    with pytest.raises(ValueError, match="grid 1 .*truncated"):
        deserialize(toks[:-2], "row_major")
    with pytest.raises(ValueError, match="without its output"):
        deserialize(toks[:11], "row_major")  # BOS + the 11-token input block
    swapped = toks.copy()
    swapped[1] = OUTPUT
    with pytest.raises(ValueError, match="expected INPUT at 1"):
        deserialize(swapped, "row_major")
    with pytest.raises(ValueError, match="grid 0"):
        deserialize(toks, "row_major", row_end=True)  # no ROW_END where one is expected


def _stream(grid: np.ndarray, order: str = "row_major") -> list[int]:
    """The generated-output stream of ``grid``: HEIGHT, WIDTH, cells, GRID_END."""
    p = Pair(np.zeros((1, 1), dtype=np.int64), grid)
    seq = serialize_example([], p, order=order)
    return seq.tokens[7:].tolist()  # after BOS, the 5-token 1x1 input block and OUTPUT


G = np.arange(20).reshape(4, 5) % 10  # 4 x 5, stream = H4 W5 + 20 cells + GRID_END


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        ([], "empty stream, expected a height token"),
        ([3, 4], "expected a height token at 0, got 3"),
        ([OUTPUT], "expected a height token at 0, got OUTPUT"),
        ([height_token(4)], "truncated after the height token"),
        ([height_token(4), height_token(5)], "expected a width token at 1, got H5"),
        (_stream(G)[:14], "truncated after 12 of 20 cells"),
        (_stream(G)[:22], "truncated after all 20 cells, before GRID_END"),
        (_stream(G)[:6] + [width_token(5)] + _stream(G)[7:], "non-colour token W5 at cell 4"),
        (_stream(G)[:6] + [-7], "non-colour token <unk -7> at cell 4"),
        (_stream(G)[:9] + [GRID_END], "grid ended after 7 of 20 cells"),
        (_stream(G)[:22] + [3, GRID_END], "expected GRID_END after 20 cells at 22, got 3"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_parse_grid_reasons(stream, reason):
    assert parse_grid(stream) == (None, reason)


def test_parse_grid_row_end_reasons_and_trailing_junk():
    stream = [height_token(2), width_token(2), 1, 2, ROW_END, 3, 4, ROW_END, GRID_END]
    grid, reason = parse_grid(stream + [99, -1, 2**70], order="snake", row_end=True)
    assert reason is None and grid.tolist() == [[1, 2], [4, 3]]
    assert parse_grid(stream[:4] + [5], order="snake", row_end=True) == (
        None,
        "expected ROW_END after row 0 at 4, got 5",
    )
    assert parse_grid(stream[:3] + [ROW_END], order="row_major", row_end=True) == (
        None,
        "non-colour token ROW_END at cell 1",
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(), max_size=40) | st.lists(st.integers(-3, 80), max_size=40))
def test_parse_grid_never_raises_on_arbitrary_ints(tokens):
    for order, row_end in SETTINGS:
        grid, reason = parse_grid(tokens, order, row_end)
        assert (grid is None) != (reason is None)
        assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)


@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    cut=st.integers(0, 60),
    junk=st.lists(st.integers(-(2**70), 2**70), min_size=1, max_size=3),
    at=st.integers(0, 60),
    order=st.sampled_from(list(ORDERS)),
)
def test_parse_grid_never_raises_on_corrupted_streams(h, w, seed, cut, junk, at, order):
    grid = _grid(np.random.default_rng(seed), h, w)
    stream = _stream(grid, order)
    for bad in (stream[:cut], stream[:at] + junk + stream[at:], stream[:at] + junk + stream[at + 1 :]):
        out, reason = parse_grid(bad, order)
        if out is not None:  # only possible when the corruption kept a complete grid intact
            assert reason is None and out.shape == (h, w) and ((out >= 0) & (out <= 9)).all()
        else:
            assert isinstance(reason, str) and reason


def test_parse_grid_accepts_numpy_input_and_rejects_non_integers():
    stream = np.array(_stream(G))
    grid, reason = parse_grid(stream)
    assert reason is None and (grid == G).all()
    assert parse_grid([17.5, float("nan")])[0] is None  # never raises on odd values either


def test_cell_positions_match_the_order():
    for order in ORDERS:
        rows, cols = cell_positions(7, 3, order)
        np.testing.assert_array_equal(np.stack([rows, cols], axis=1), cell_order(order, 7, 3))


@pytest.mark.parametrize("row_end", [False, True])
def test_max_augmented_length_bounds_every_dihedral_augmentation(row_end):
    rng = np.random.default_rng(2)
    context = [Pair(_grid(rng, 2, 9), _grid(rng, 9, 2)), Pair(_grid(rng, 3, 8), _grid(rng, 1, 5))]
    query = Pair(_grid(rng, 4, 7), _grid(rng, 6, 3))
    lengths = [
        len(serialize_example([a.apply_pair(p) for p in context], a.apply_pair(query), row_end=row_end))
        for a in all_dihedral()
    ]
    assert max_augmented_length(context, query, row_end=row_end) == max(lengths)
    assert (len(set(lengths)) > 1) == row_end  # ROW_ENDs follow the rows, which transposes change


def test_grid_token_count():
    assert grid_token_count(1, 1) == 5
    assert grid_token_count(30, 30) == 904
    assert grid_token_count(30, 30, row_end=True) == 934
