"""Positional encodings: registry, fast paths against the slow references, invariances, special tokens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import get_args

import pytest
import torch
import yaml

from gridlm.modules.encodings import (
    ENCODINGS,
    EncodingName,
    EncodingStack,
    Positions,
    apply_rotary,
    apply_rotary_signed,
    parse_encoding_names,
    signed_sin,
)
from gridlm.modules.encodings import reference as ref
from gridlm.modules.encodings.additive import quadtree_code
from gridlm.modules.encodings.bias import alibi_slopes
from gridlm.modules.transformer import Transformer, TransformerConfig

D_MODEL, N_HEADS, MAX_LEN = 16, 2, 96  # head_dim 8: divisible by 4 for rope_2d
NAMES = sorted(ENCODINGS)
CELL_NAMES_2D = ["onehot_2d", "edges_2d", "quadtree_2d", "sinusoidal_2d", "rope_2d", "alibi_2d"]
SLOT = {
    "none": "additive",
    "learned_1d": "additive",
    "sinusoidal_1d": "additive",
    "rope_1d": "rotary",
    "onehot_2d": "additive",
    "edges_2d": "additive",
    "quadtree_2d": "additive",
    "sinusoidal_2d": "additive",
    "rope_2d": "rotary",
    "rope_3d": "rotary",
    "alibi_2d": "bias",
}


def make(name: str, **kw):
    args = dict(d_model=D_MODEL, n_heads=N_HEADS, max_seq_len=MAX_LEN) | kw
    m = ENCODINGS[name](**args)
    for p in m.parameters():  # non-trivial learned weights
        torch.nn.init.normal_(p)
    return m


def sequence(shapes, offset=(0, 0)):
    """Token metadata ``(row, col, grid, height, width)`` of a serialized task in the layout of
    ``gridlm.datamodules.tokens``: BOS, then per grid ``marker, H, W, cells (row-major), GRID_END``.
    Cells are shifted by ``offset`` (their grid grows by it, so a cell stays inside its grid)."""
    row, col, grid, height, width = [-1], [-1], [-1], [-1], [-1]  # BOS
    for g, (h, w) in enumerate(shapes):
        row += [-1, -1, -1]
        col += [-1, -1, -1]
        grid += [g, g, g]
        height += [-1, -1, -1]
        width += [-1, -1, -1]
        for r in range(h):
            for c in range(w):
                row.append(r + offset[0])
                col.append(c + offset[1])
                grid.append(g)
                height.append(h + offset[0])
                width.append(w + offset[1])
        row.append(-1)
        col.append(-1)
        grid.append(g)  # GRID_END
        height.append(-1)
        width.append(-1)
    return row, col, grid, height, width


def batch(*seqs, pos_offset=0) -> Positions:
    """Right-pad sequences (PAD: -1 coordinates), as ``gridlm.datamodules.batching.collate`` does."""
    T = max(len(s[0]) for s in seqs)
    pad = lambda xs: xs + [-1] * (T - len(xs))  # noqa: E731
    row, col, grid, height, width = (torch.tensor([pad(s[i]) for s in seqs]) for i in range(5))
    pos = torch.arange(pos_offset, pos_offset + T).expand(len(seqs), T).contiguous()
    return Positions(pos, row, col, grid, height, width)


def small_batch() -> Positions:
    return batch(sequence([(2, 3), (3, 2)]), sequence([(1, 1), (2, 2), (4, 3)]))


def run(m, p: Positions, k: Positions | None = None):
    return m(p, p if k is None else k) if m.slot == "bias" else m(p)


# ---------------------------------------------------------------- registry and stack


def test_encoding_name_literal_equals_registry_keys():
    assert sorted(get_args(EncodingName)) == sorted(ENCODINGS)
    assert len(get_args(EncodingName)) == len(set(get_args(EncodingName)))


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_slot(name):
    assert ENCODINGS[name].slot == SLOT[name]


@pytest.mark.parametrize(
    "names, message",
    [
        (["rope_1d", "rope_2d"], "'rope_1d' and 'rope_2d' are both rotary"),
        (["onehot_2d", "rope_1d", "onehot_2d"], "'onehot_2d' is listed twice"),
        (["rope_1d", "sinusodal_2d"], "unknown encoding 'sinusodal_2d'; valid names: alibi_2d, "),
        ([], "model.encoding is empty"),
        (["none", "rope_1d"], "'none' cannot be combined"),
    ],
    ids=["two_rotary", "listed_twice", "unknown", "empty", "none_combined"],
)
def test_parse_encoding_names_rejects(names, message):
    with pytest.raises(ValueError, match=message):
        parse_encoding_names(names)


def test_parse_encoding_names_rejects_non_strings():
    with pytest.raises(TypeError, match="expected encoding names"):
        parse_encoding_names(["rope_1d", {"name": "onehot_2d"}])


def test_parse_encoding_names_accepts_a_name_or_a_list():
    assert parse_encoding_names("rope_2d") == ["rope_2d"]
    assert parse_encoding_names(("rope_1d", "onehot_2d", "alibi_2d")) == ["rope_1d", "onehot_2d", "alibi_2d"]


def test_stack_combines_slots():
    torch.manual_seed(0)
    stack = EncodingStack(["rope_1d", "onehot_2d", "sinusoidal_1d", "alibi_2d"], D_MODEL, N_HEADS, MAX_LEN)
    p = small_batch()
    mods = {type(m).__name__: m for m in stack.modules()}
    torch.testing.assert_close(stack.additive(p), mods["OneHot2D"](p) + mods["Sinusoidal1D"](p))
    for a, b in zip(stack.rotary(p), mods["Rope1D"](p)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(stack.bias(p, p), mods["Alibi2D"](p, p))
    assert [len(stack.additive_encodings), len(stack.rotary_encodings), len(stack.bias_encodings)] == [2, 1, 1]


def test_stack_empty_slots_are_none():
    stack = EncodingStack("onehot_2d", D_MODEL, N_HEADS, MAX_LEN)
    p = small_batch()
    assert stack.rotary(p) is None and stack.bias(p, p) is None


# ---------------------------------------------------------------- every encoding vs its reference


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_fast_path_matches_reference(name):
    m = make(name)
    p = small_batch()
    k = batch(sequence([(3, 3)]), sequence([(2, 4), (1, 2)]), pos_offset=5) if m.slot == "bias" else None
    fast = run(m, p, k)
    slow = ref.REFERENCES[name](m, p) if k is None else ref.REFERENCES[name](m, p, k)
    if m.slot == "rotary":
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(torch.broadcast_to(fast, slow.shape), slow, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_output_contract(name):
    """float32, the slot's shape, finite; only learned parameters in the state dict (tables are
    non-persistent buffers rebuilt at construction, so checkpoints stay small and portable)."""
    m = make(name)
    p = small_batch()
    B, T = p.pos.shape
    out = run(m, p)
    outs = out if isinstance(out, tuple) else (out,)
    expected = {"additive": (B, T, D_MODEL), "rotary": (B, 1, T, D_MODEL // N_HEADS), "bias": (B, N_HEADS, T, T)}
    for o in outs:
        assert o.dtype == torch.float32 and torch.isfinite(o).all()
        if name != "none":
            assert o.shape == expected[m.slot]
    assert set(m.state_dict()) == {n for n, _ in m.named_parameters()}


IN_TRANSFORMER = NAMES + ["rope_1d+onehot_2d", "rope_2d+learned_1d+alibi_2d", "sinusoidal_1d+quadtree_2d+sinusoidal_2d"]


@pytest.mark.parametrize("name", IN_TRANSFORMER)
def test_runs_in_transformer_with_kv_cache(name):
    """Every encoding plugs into the transformer; token-by-token decoding equals the full forward."""
    sizes = dict(vocab_size=20, max_seq_len=MAX_LEN, d_model=D_MODEL, n_layers=1, n_heads=N_HEADS)
    model = Transformer(TransformerConfig(**sizes, encoding=name.split("+"))).eval()
    p = batch(sequence([(2, 3), (2, 2)]))
    T = p.pos.shape[1]
    x = torch.randint(0, 20, (1, T))
    full = model(x, p)
    cache = model.new_cache(1, T)
    steps = [model(x[:, :5], p.slice(0, 5), cache)]  # a prompt, then one token at a time
    steps += [model(x[:, t : t + 1], p.slice(t, t + 1), cache) for t in range(5, T)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["learned_1d", "sinusoidal_1d", "rope_1d"])
def test_position_beyond_table_raises(name):
    m = make(name, max_seq_len=8)
    p = batch(sequence([(2, 2)]))  # 9 tokens: pos 8 is outside a table of 8
    with pytest.raises(ValueError, match=rf"{name}: pos 8 is outside the table of 8 entries; raise model.max_seq_len"):
        m(p)
    with pytest.raises(ValueError, match=rf"{name}: pos -1 is negative"):  # would wrap around silently
        m(p.slice(0, 8)._replace(pos=torch.arange(-1, 7)[None]))


@pytest.mark.parametrize("name", ["onehot_2d", "edges_2d", "sinusoidal_2d", "rope_2d"])
def test_cell_beyond_30_raises(name):
    p = batch(sequence([(2, 2)], offset=(29, 0)))  # rows 29 and 30
    with pytest.raises(ValueError, match=rf"{name}: row 30 is outside the table of 30 entries"):
        make(name)(p)


@pytest.mark.parametrize(
    "name, d_model, n_heads, message",
    [
        ("rope_2d", 24, 4, "divisible by 4"),  # head dim 6
        ("rope_1d", 15, 5, "even head dim"),
        ("sinusoidal_2d", 18, 2, "divisible by 4"),
        ("sinusoidal_1d", 15, 3, "even model.d_model"),
    ],
    ids=["rope_2d_head_dim_6", "rope_1d_head_dim_3", "sinusoidal_2d_d18", "sinusoidal_1d_d15"],
)
def test_incompatible_sizes_raise(name, d_model, n_heads, message):
    with pytest.raises(ValueError, match=message):
        ENCODINGS[name](d_model=d_model, n_heads=n_heads, max_seq_len=8)


# ---------------------------------------------------------------- onehot_2d and quadtree_2d


def test_onehot_2d_is_a_linear_map_of_explicit_onehots():
    m = make("onehot_2d")
    p = small_batch()
    linear = torch.nn.Linear(60, D_MODEL, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.cat((m.row.weight, m.col.weight)).T)  # (d, 60)
    cell = (p.row >= 0).unsqueeze(-1)
    onehot_row = torch.nn.functional.one_hot(p.row.clamp(min=0), 30) * cell  # (B, T, 30), zero for specials
    onehot_col = torch.nn.functional.one_hot(p.col.clamp(min=0), 30) * cell
    expected = linear(torch.cat((onehot_row, onehot_col), dim=-1).float())
    torch.testing.assert_close(m(p), expected)


QUADTREE_CASES = {
    "(0,0)": ((0, 0), [0, 0, 0, 0, 0]),
    "(0,29)": ((0, 29), [1, 1, 1, 0, 1]),  # 29 = 0b11101
    "(29,0)": ((29, 0), [2, 2, 2, 0, 2]),
    "(29,29)": ((29, 29), [3, 3, 3, 0, 3]),
    "(15,15)": ((15, 15), [0, 3, 3, 3, 3]),  # 15 = 0b01111
    "(16,16)": ((16, 16), [3, 0, 0, 0, 0]),  # 16 = 0b10000
    "(31,31)": ((31, 31), [3, 3, 3, 3, 3]),
    "edge_(0,15)": ((0, 15), [0, 1, 1, 1, 1]),
    "edge_(15,0)": ((15, 0), [0, 2, 2, 2, 2]),
    "edge_(29,15)": ((29, 15), [2, 3, 3, 1, 3]),
    "edge_(15,29)": ((15, 29), [1, 3, 3, 2, 3]),
    "edge_(0,16)": ((0, 16), [1, 0, 0, 0, 0]),
}


@pytest.mark.parametrize("cell, code", QUADTREE_CASES.values(), ids=QUADTREE_CASES.keys())
def test_quadtree_code_hand_computed(cell, code):
    assert quadtree_code(torch.tensor(cell[0]), torch.tensor(cell[1])).tolist() == code
    assert ref.quadtree_code(*cell) == code


def test_quadtree_code_whole_frame_matches_reference():
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    codes = quadtree_code(rows, cols)  # (32, 32, 5)
    assert codes.shape == (32, 32, 5)
    for r in range(32):
        for c in range(32):
            assert codes[r, c].tolist() == ref.quadtree_code(r, c)
    assert len({tuple(x) for x in codes.reshape(-1, 5).tolist()}) == 32 * 32  # the path identifies the cell


# ---------------------------------------------------------------- rotary


def _scores(m, p: Positions, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    cos, sin = m(p)
    return apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-1, -2)  # (B, nh, T, T)


def test_rope_1d_tables_match_formula():
    m = make("rope_1d")
    hs = D_MODEL // N_HEADS
    for pos in (0, 1, 7, MAX_LEN - 1):
        for i in range(hs // 2):
            angle = pos / 10000 ** (2 * i / hs)
            for d in (i, i + hs // 2):
                assert m.cos_table[pos, d].item() == pytest.approx(math.cos(angle), abs=1e-6)
                assert m.sin_table[pos, d].item() == pytest.approx(math.sin(angle), abs=1e-6)


@pytest.mark.parametrize("name", ["rope_1d", "rope_2d"])
def test_rotated_qk_match_complex_rotation(name):
    m = make(name)
    p = small_batch()
    B, T = p.pos.shape
    q = torch.randn(B, N_HEADS, T, D_MODEL // N_HEADS)
    cos, sin = m(p)
    hs = D_MODEL // N_HEADS
    if name == "rope_1d":
        angles = [ref.rope_angles_1d(int(t), hs) for t in p.pos.reshape(-1)]
    else:
        angles = [ref.rope_angles_2d(int(r), int(c), hs) for r, c in zip(p.row.reshape(-1), p.col.reshape(-1))]
    torch.testing.assert_close(apply_rotary(q, cos, sin), ref.rotate(q, angles), atol=1e-5, rtol=1e-5)
    # the transformer's fast path (sign folded into sin once per forward) is the same rotation
    torch.testing.assert_close(apply_rotary_signed(q, cos, signed_sin(sin)), apply_rotary(q, cos, sin), atol=1e-6, rtol=1e-6)


def test_rope_2d_pairs_depend_only_on_row_or_only_on_col():
    m = make("rope_2d")
    hs = D_MODEL // N_HEADS
    n = hs // 4
    cells = [(r, c) for r in range(0, 30, 7) for c in range(0, 30, 5)]
    row, col = torch.tensor([cells]).unbind(-1)  # (1, T) each
    p = Positions(torch.zeros_like(row), row, col, torch.zeros_like(row))
    cos, sin = (x[0, 0] for x in m(p))  # (T, hs)
    angle = torch.atan2(sin, cos)  # (T, hs)
    torch.testing.assert_close(angle[:, : hs // 2], angle[:, hs // 2 :])  # dims i and i + hs/2 form one pair
    for t, (r, c) in enumerate(cells):
        for u, (r2, c2) in enumerate(cells):
            if r == r2:  # same row: the row pairs (0..n-1) rotate identically
                torch.testing.assert_close(angle[t, :n], angle[u, :n])
            if c == c2:  # same column: the column pairs (n..2n-1) rotate identically
                torch.testing.assert_close(angle[t, n : 2 * n], angle[u, n : 2 * n])
    assert not torch.allclose(angle[0, :n], angle[len(cells) - 1, :n])  # and rows do move the row pairs


def test_rope_2d_special_tokens_are_not_rotated():
    m = make("rope_2d")
    p = small_batch()
    cos, sin = m(p)
    special = (p.row < 0)[:, None, :, None].expand_as(cos)
    assert (cos[special] == 1).all() and (sin[special] == 0).all()


# ---------------------------------------------------------------- invariances


def test_rope_1d_scores_invariant_to_shifting_positions():
    m = make("rope_1d")
    p = small_batch()
    B, T = p.pos.shape
    q, k = torch.randn(B, N_HEADS, T, D_MODEL // N_HEADS), torch.randn(B, N_HEADS, T, D_MODEL // N_HEADS)
    shifted = p._replace(pos=p.pos + 37)
    torch.testing.assert_close(_scores(m, p, q, k), _scores(m, shifted, q, k), atol=1e-4, rtol=1e-4)


SHIFTS = {"down_right": (5, 7), "down": (26, 0), "right": (0, 25)}


@pytest.mark.parametrize("shift", SHIFTS.values(), ids=SHIFTS.keys())
def test_rope_2d_cell_scores_invariant_to_shifting_cells(shift):
    m = make("rope_2d")
    shapes = [(2, 3), (3, 2), (4, 4)]  # every shift keeps cells within 0..29
    p, shifted = batch(sequence(shapes)), batch(sequence(shapes, offset=shift))
    B, T = p.pos.shape
    q, k = torch.randn(B, N_HEADS, T, D_MODEL // N_HEADS), torch.randn(B, N_HEADS, T, D_MODEL // N_HEADS)
    cell = (p.row[0] >= 0).nonzero().squeeze(1)
    a = _scores(m, p, q, k)[:, :, cell][:, :, :, cell]
    b = _scores(m, shifted, q, k)[:, :, cell][:, :, :, cell]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shift", SHIFTS.values(), ids=SHIFTS.keys())
def test_alibi_2d_bias_invariant_to_shifting_cells(shift):
    m = make("alibi_2d")
    shapes = [(2, 3), (3, 2), (4, 4)]
    p, shifted = batch(sequence(shapes)), batch(sequence(shapes, offset=shift))
    torch.testing.assert_close(m(p, p), m(shifted, shifted))


@pytest.mark.parametrize("name", CELL_NAMES_2D, ids=CELL_NAMES_2D)
def test_2d_encoding_of_a_cell_ignores_its_sequence_position(name):
    """Permute the tokens (any serialization order): each cell keeps its vector / rotation / bias."""
    m = make(name)
    p = batch(sequence([(3, 4), (2, 5)]))
    T = p.pos.shape[1]
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(1))
    permuted = Positions(p.pos, *(f[:, perm] for f in p[1:]))  # token t now holds cell perm[t]
    a, b = run(m, p), run(m, permuted)
    if m.slot == "additive":
        torch.testing.assert_close(b, a[:, perm])
    elif m.slot == "rotary":
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x[:, :, perm])
    else:
        torch.testing.assert_close(b, a[:, :, perm][:, :, :, perm])


# ---------------------------------------------------------------- special tokens and alibi


@pytest.mark.parametrize("name", ["onehot_2d", "edges_2d", "quadtree_2d", "sinusoidal_2d"])
def test_2d_additive_special_tokens_get_zero(name):
    m = make(name)
    p = small_batch()
    out = m(p)
    special = p.row < 0
    assert (out[special] == 0).all()
    assert (out[~special].abs().sum(-1) > 0).all()


def test_alibi_2d_bias_is_zero_across_grids_and_for_special_tokens():
    m = make("alibi_2d")
    p = small_batch()
    bias = m(p, p)  # (B, nh, T, T)
    cell = (p.row >= 0) & (p.grid >= 0)
    same = (p.grid[:, :, None] == p.grid[:, None, :]) & cell[:, :, None] & cell[:, None, :]
    assert (bias.masked_select(~same[:, None].expand_as(bias)) == 0).all()
    # within a grid: -slope * Manhattan distance, e.g. the corners (0,0) and (1,2) of the 2x3 grid
    t00, t12 = 4, 9  # BOS, INPUT, H, W, then cells in row-major order
    assert (p.row[0, t12].item(), p.col[0, t12].item()) == (1, 2)
    torch.testing.assert_close(bias[0, :, t00, t12], -torch.tensor(alibi_slopes(N_HEADS)) * 3)


SLOPES = {
    "4_heads": (4, [2**-2, 2**-4, 2**-6, 2**-8]),
    "8_heads": (8, [2**-i for i in range(1, 9)]),
    "6_heads": (6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]),  # 4 + every other of 8
}


@pytest.mark.parametrize("n_heads, slopes", SLOPES.values(), ids=SLOPES.keys())
def test_alibi_slopes_of_press_et_al(n_heads, slopes):
    assert alibi_slopes(n_heads) == pytest.approx(slopes)


# ---------------------------------------------------------------- config fragments

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "encodings"


def test_every_encoding_has_a_config_fragment_and_every_fragment_is_valid():
    fragments = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(CONFIG_DIR.glob("*.yaml"))}
    assert set(NAMES) <= set(fragments)
    for stem, cfg in fragments.items():
        assert list(cfg) == ["model"] and list(cfg["model"]) == ["encoding"], stem
        names = parse_encoding_names(cfg["model"]["encoding"])
        assert "+".join(names) == stem, f"{stem}.yaml names {names}"


# ---------------------------------------------------------------- against x-transformers (dev dependency)


def test_rope_1d_matches_x_transformers_up_to_pair_layout():
    """x-transformers pairs adjacent dims (2i, 2i+1); gridlm pairs (i, i + hs/2) (rotate-half). The same
    rotation after reordering the dims: gridlm dim i <- 2i, dim i + hs/2 <- 2i + 1."""
    xt = pytest.importorskip("x_transformers.x_transformers")
    hs = D_MODEL // N_HEADS
    perm = torch.cat((torch.arange(0, hs, 2), torch.arange(1, hs, 2)))
    p = small_batch()
    B, T = p.pos.shape
    q = torch.randn(B, N_HEADS, T, hs)
    freqs, _ = xt.RotaryEmbedding(hs)(p.pos)  # (B, T, hs), interleaved
    theirs = xt.apply_rotary_pos_emb(q, freqs)
    cos, sin = make("rope_1d")(p)
    torch.testing.assert_close(apply_rotary(q[..., perm], cos, sin), theirs[..., perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_heads", [1, 2, 3, 4, 6, 8, 12])
def test_alibi_slopes_match_x_transformers(n_heads):
    xt = pytest.importorskip("x_transformers.x_transformers")
    assert alibi_slopes(n_heads) == pytest.approx(xt.AlibiPositionalBias._get_slopes(n_heads))


def test_edges_2d_mirror_cells_swap_their_edge_vectors():
    """Flipping a grid left-right maps cell (r, c) to (r, w-1-c): the two cells' encodings differ
    exactly by swapping the left and right tables' vectors (and equal ones at the vertical axis)."""
    m = make("edges_2d")
    p = batch(sequence([(3, 5)]))
    e = m(p)[0]  # (T, d)
    cells = {(int(r), int(c)): t for t, (r, c) in enumerate(zip(p.row[0], p.col[0])) if r >= 0}
    top, left, bottom, right = m.table.weight.detach().view(4, 30, -1)
    for (r, c), t in cells.items():
        mirror = cells[(r, 4 - c)]
        torch.testing.assert_close(e[t] - e[mirror], left[c] + right[4 - c] - left[4 - c] - right[c])
    torch.testing.assert_close(e[cells[(1, 2)]], top[1] + left[2] + bottom[1] + right[2])


def test_edges_2d_needs_grid_shapes_and_cells_inside_them():
    m = make("edges_2d")
    p = batch(sequence([(2, 2)]))
    with pytest.raises(ValueError, match="edges_2d needs each cell's grid shape"):
        m(Positions(p.pos, p.row, p.col, p.grid))
    with pytest.raises(ValueError, match="height-1-row"):
        m(p._replace(height=torch.where(p.height > 0, 1, p.height)))  # row 1 of a height-1 grid


@pytest.mark.parametrize("shift", SHIFTS.values(), ids=SHIFTS.keys())
def test_rope_3d_scores_depend_only_on_grid_and_cell_offsets(shift):
    """Shifting every cell and every grid index (BOS stays unrotated) leaves the scores between all
    tokens of the grids unchanged; changing one grid's index changes its scores with the others."""
    m = make("rope_3d")
    shapes = [(2, 3), (3, 2), (4, 4)]
    p, shifted = batch(sequence(shapes)), batch(sequence(shapes, offset=shift))
    shifted = shifted._replace(grid=torch.where(shifted.grid >= 0, shifted.grid + 3, -1))
    B, T = p.pos.shape
    q, k = torch.randn(B, N_HEADS, T, D_MODEL // N_HEADS), torch.randn(B, N_HEADS, T, D_MODEL // N_HEADS)
    cells = (p.row[0] >= 0).nonzero().squeeze(1)
    a = _scores(m, p, q, k)[:, :, cells][:, :, :, cells]
    torch.testing.assert_close(a, _scores(m, shifted, q, k)[:, :, cells][:, :, :, cells], atol=1e-5, rtol=1e-5)
    moved = p._replace(grid=torch.where(p.grid == 2, 5, p.grid))  # grid 2 two places further
    c = _scores(m, moved, q, k)[:, :, cells][:, :, :, cells]
    in2 = (p.grid[0, cells] == 2)
    torch.testing.assert_close(c[..., ~in2, :][..., ~in2], a[..., ~in2, :][..., ~in2])
    assert not torch.allclose(c[..., in2, :][..., ~in2], a[..., in2, :][..., ~in2])


def test_rope_3d_head_dim_must_divide_by_8():
    with pytest.raises(ValueError, match="rope_3d needs a head dim"):
        make("rope_3d", d_model=24, n_heads=2)  # head dim 12
