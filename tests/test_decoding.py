"""Constrained greedy decoding: always a valid grid, KV cache equals full forward, every encoding;
the decoded grid, its log-probability and the metadata fed back for every generated token equal
what the serializer writes for that grid, cell by cell, under every order (through the public
``generate_grids`` only, so these tests hold for any decoding engine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridlm.datamodules.batching import collate
from gridlm.datamodules.orders import ORDERS
from gridlm.datamodules.serialize import parse_grid, serialize_example
from gridlm.datamodules.tasks import Pair
from gridlm.datamodules.tokens import OUTPUT
from gridlm.modules.base_model import positions_of
from gridlm.modules.decoding import generate_grids
from gridlm.modules.encodings import ENCODINGS
from gridlm.modules.transformer import Transformer, TransformerConfig
from stub_models import Teacher, TeacherTransformer, colourful


def prompt(order: str, side: int = 4):
    rng = np.random.default_rng(0)
    ctx = [Pair(rng.integers(0, 10, (side, side + 1)), rng.integers(0, 10, (side + 1, side))) for _ in range(2)]
    query = Pair(rng.integers(0, 10, (side, side)), None)
    seq = serialize_example(ctx, query, order=order, prompt_only=True)
    batch = collate([seq, seq])
    return batch["tokens"], positions_of(batch)


def model(encoding, max_seq_len=1200, seed=0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(max_seq_len=max_seq_len, d_model=16, n_layers=2, n_heads=2, encoding=encoding)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_kv_cache_decoding_equals_full_forward(encoding):
    m = model(encoding)
    tokens, pos = prompt("row_major")
    fast = generate_grids(m, tokens, pos, "row_major", use_cache=True, max_side=6)
    slow = generate_grids(m, tokens, pos, "row_major", use_cache=False, max_side=6)
    for f, s in zip(fast, slow):
        assert f.tokens == s.tokens
        assert f.logprob == pytest.approx(s.logprob, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_decoded_grid_always_parses_and_matches_its_tokens(order):
    m = model("rope_1d")
    tokens, pos = prompt(order)
    for d in generate_grids(m, tokens, pos, order, max_side=8):
        assert d.reason is None and d.grid is not None
        h, w = d.grid.shape
        assert 1 <= h <= 8 and 1 <= w <= 8
        assert d.n_tokens == 2 + h * w + 1
        assert d.logprob <= 0
        parsed, reason = parse_grid(d.tokens, order)
        assert reason is None and np.array_equal(parsed, d.grid)


class PreferBig(torch.nn.Module):
    """A stand-in model whose logits always prefer height 30, width 30, colour 3 and then PAD."""

    def __init__(self, max_seq_len):
        super().__init__()
        self.cfg = TransformerConfig(max_seq_len=max_seq_len, d_model=16, n_heads=2, encoding="none")

    def forward(self, tokens, positions, cache=None):
        from gridlm.datamodules.tokens import HEIGHT_0, PAD, VOCAB_SIZE, WIDTH_0

        logits = torch.zeros(*tokens.shape, VOCAB_SIZE)
        logits[..., [HEIGHT_0 + 30, WIDTH_0 + 30]] = 5.0
        logits[..., 3] = 4.0
        logits[..., PAD] = 9.0  # the grammar must never let PAD through
        return logits


def test_grammar_forces_shape_cells_and_end_and_reports_the_sequence_limit():
    tokens, pos = prompt("snake", side=3)
    P = tokens.shape[1]
    full = generate_grids(PreferBig(P + 1000), tokens, pos, "snake", use_cache=False)
    assert all(d.grid is not None and d.grid.shape == (30, 30) and (d.grid == 3).all() for d in full)
    # 100 tokens of room: only shapes that fit are allowed (height 30 leaves widths 1..3, 1..2 with
    # row ends); the model's favourite 30 is not among them, so the grid is narrow but finished
    for kw, widths in ((dict(order="snake"), (1, 2, 3)), (dict(order="row_major", row_end=True), (1, 2))):
        for d in generate_grids(PreferBig(P + 100), tokens, pos, use_cache=False, **kw):
            h, w = d.grid.shape
            assert d.reason is None and h == 30 and w in widths, (kw, d.grid.shape)
            assert d.n_tokens == 2 + h * w + (h if kw.get("row_end") else 0) + 1 <= 100
    # not even a 1x1 grid fits (4 tokens): the limit is reported, nothing raises
    tiny = generate_grids(PreferBig(P + 3), tokens, pos, "snake", use_cache=False)
    assert all(d.grid is None and "sequence limit" in d.reason and d.n_tokens == 3 for d in tiny)


# ---------------------------------------------------------------- cell by cell, against the serializer
ORDER_CASES = [(o, False) for o in sorted(ORDERS)] + [("row_major", True), ("snake", True)]
ORDER_IDS = [f"{o}{'+row_end' if r else ''}" for o, r in ORDER_CASES]


def teacher_prompts(order: str, row_end: bool, n: int = 3):
    """``n`` prompts of equal length (different query inputs) and the answer the teacher gives
    each: grids of different shapes whose cells run through the colours (see ``colourful``)."""
    rng = np.random.default_rng(1)
    ctx = [Pair(rng.integers(0, 10, (3, 4)), rng.integers(0, 10, (2, 3))) for _ in range(2)]
    queries = [np.full((3, 3), q) for q in range(n)]
    answers = [colourful(*shape, shift=q) for q, shape in zip(range(n), [(2, 5), (3, 3), (4, 2), (1, 7)])]
    lookup = {q.tobytes(): a for q, a in zip(queries, answers)}
    return ctx, queries, answers, lambda query: lookup.get(np.ascontiguousarray(query).tobytes())


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
@pytest.mark.parametrize("order,row_end", ORDER_CASES, ids=ORDER_IDS)
def test_decoded_grid_and_metadata_equal_the_serializers_cell_by_cell(order, row_end, use_cache):
    """A teacher whose answer has a different colour in every cell: the decoded grid equals it cell
    by cell under every order, and every generated token fed back carries exactly the metadata
    (sequence index, row, col, grid, height, width) that serialize_example writes for that grid."""
    ctx, queries, answers, rule = teacher_prompts(order, row_end)
    teacher = Teacher(rule, order, row_end)
    seqs = [serialize_example(ctx, Pair(q, None), order=order, row_end=row_end, prompt_only=True) for q in queries]
    batch = collate(seqs)
    P = batch["tokens"].shape[1]
    out = generate_grids(TeacherTransformer(teacher), batch["tokens"], positions_of(batch), order, row_end, use_cache=use_cache)
    for b, (d, query, answer) in enumerate(zip(out, queries, answers)):
        assert d.reason is None
        np.testing.assert_array_equal(d.grid, answer)
        full = serialize_example(ctx, Pair(query, answer), order=order, row_end=row_end)
        assert d.tokens == full.tokens[P:].tolist() and d.n_tokens == len(full) - P
        # every generated token but the last (GRID_END, never fed back) was fed with its metadata
        fed = teacher.fed[b]
        for i in range(P, len(full) - 1):
            want = tuple(int(getattr(full, f)[i]) for f in ("tokens", "row", "col", "grid", "height", "width"))
            assert fed[i] == want, f"row {b}, sequence index {i}: fed {fed[i]}, the serializer writes {want}"


def teacher_forced_logprob(m: Transformer, seq) -> float:
    """Sum of the model's log-probabilities of the query output's tokens after its OUTPUT marker,
    from one forward over the whole serialized example."""
    batch = collate([seq])
    with torch.no_grad():
        lp = torch.log_softmax(m(batch["tokens"], positions_of(batch)).double(), dim=-1)[0]  # (T, V)
    start = int(np.flatnonzero(seq.tokens == OUTPUT)[-1]) + 1
    toks = torch.as_tensor(seq.tokens)
    return float(lp[start - 1 : len(seq) - 1].gather(1, toks[start:, None]).sum())


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("order,row_end", ORDER_CASES, ids=ORDER_IDS)
def test_decode_logprob_equals_a_teacher_forced_forward_of_its_grid(order, row_end, encoding):
    """Whatever the decoder feeds the model (positions, coordinates, grid indices, shapes) must be
    what training sees: the summed log-probability of a decode equals that of one forward over
    serialize_example of the decoded grid (a swapped (row, col) differs by ~0.1 with onehot_2d)."""
    rng = np.random.default_rng(2)
    ctx = [Pair(rng.integers(0, 10, (3, 4)), rng.integers(0, 10, (4, 3))) for _ in range(2)]
    queries = [rng.integers(0, 10, (3, 3)) for _ in range(2)]
    seqs = [serialize_example(ctx, Pair(q, None), order=order, row_end=row_end, prompt_only=True) for q in queries]
    batch = collate(seqs)
    m = model(encoding, max_seq_len=512, seed=1)
    out = generate_grids(m, batch["tokens"], positions_of(batch), order, row_end, max_side=5)
    for d, q in zip(out, queries):
        assert d.grid is not None and d.grid.size >= 2, "precondition: cells whose row and column differ"
        full = serialize_example(ctx, Pair(q, d.grid), order=order, row_end=row_end)
        assert d.logprob == pytest.approx(teacher_forced_logprob(m, full), abs=1e-4)
