"""The decode engine against the eager one-prompt-at-a-time reference: identical tokens and
log-probabilities for every encoding and order, ragged batches, row_end, prompts near the
sequence limit, compaction and chunking; compiled and eager steps agree; a failing compiler
falls back to the eager step with one warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import gridlm.modules.inference.engine as engine_module
from gridlm.datamodules.batching import collate
from gridlm.datamodules.orders import ORDERS
from gridlm.datamodules.serialize import serialize_example
from gridlm.datamodules.tasks import Pair
from gridlm.datamodules.tokens import HEIGHT_0, OUTPUT, WIDTH_0
from gridlm.modules.base_model import AutoregressiveGridModel, positions_of
from gridlm.modules.decoding import generate_grids
from gridlm.modules.encodings import ENCODINGS
from gridlm.modules.inference import DecodeEngine, EngineConfig, generate
from gridlm.modules.inference.grammar import plan_table
from gridlm.modules.transformer import StaticKVCache, Transformer, TransformerConfig
from gridlm.modules.voting import prompt_pairs

# the strictest engine settings: an 8-slot attention window (it moves many times per grid) and
# one prefill per prompt length (every prefill group boundary crossed)
EAGER = EngineConfig(compile="never", window=8, prefill_waste=0.0)
ORDER_CASES = [(o, False) for o in sorted(ORDERS)] + [("row_major", True), ("snake", True)]
ORDER_IDS = [f"{o}{'+row_end' if r else ''}" for o, r in ORDER_CASES]


def ragged_prompts(order: str, row_end: bool, n: int = 4, seed: int = 0) -> list:
    """``n`` prompts of different lengths: 1 or 2 demonstration pairs of growing grids."""
    rng = np.random.default_rng(seed)
    seqs = []
    for i in range(n):
        side = 2 + i
        ctx = [Pair(rng.integers(0, 10, (side, side + 1)), rng.integers(0, 10, (side + 1, side))) for _ in range(1 + i % 2)]
        seqs.append(serialize_example(ctx, Pair(rng.integers(0, 10, (side, 3)), None), order=order, row_end=row_end, prompt_only=True))
    assert len({len(s) for s in seqs}) == n  # precondition: ragged
    return seqs


def tiny(encoding, max_seq_len: int = 512, seed: int = 0, shape_bias: dict | None = None) -> Transformer:
    """A random 2-layer model; ``shape_bias`` {token: logit} added by the output head (a model
    that announces a chosen shape)."""
    torch.manual_seed(seed)
    m = Transformer(TransformerConfig(max_seq_len=max_seq_len, d_model=16, n_layers=2, n_heads=2, encoding=encoding)).eval()
    if shape_bias:
        head = torch.nn.Linear(16, m.cfg.vocab_size, bias=True)
        head.weight = m.head.weight
        with torch.no_grad():
            head.bias.zero_()
            for tok, v in shape_bias.items():
                head.bias[tok] = v
        m.head = head
    return m


def reference(model, seqs, order, row_end=False, **kw) -> list:
    """The eager decoder, one prompt at a time."""
    out = []
    for seq in seqs:
        b = collate([seq])
        out += generate_grids(model, b["tokens"], positions_of(b), order, row_end, **kw)
    return out


def engine(model, seqs, order, row_end=False, config=EAGER, **kw) -> list:
    b = collate(seqs)
    return generate(model, b["tokens"], positions_of(b), b["lengths"], order, row_end, config=config, **kw)


def assert_same(got, want) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.tokens == w.tokens, f"row {i}: engine {g.tokens} != reference {w.tokens}"
        assert g.n_tokens == w.n_tokens and g.reason == w.reason
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert (g.grid is None) == (w.grid is None) and (g.grid is None or np.array_equal(g.grid, w.grid))


@pytest.mark.parametrize("encoding", sorted(ENCODINGS) + ["rope_2d+alibi_2d+edges_2d"])
def test_ragged_batch_equals_the_reference_for_every_encoding(encoding):
    m = tiny(encoding.split("+"))
    seqs = ragged_prompts("row_major", False)
    assert_same(engine(m, seqs, "row_major", max_side=6), reference(m, seqs, "row_major", max_side=6))


@pytest.mark.parametrize("config", [EngineConfig(compile="never"), EngineConfig(compile="never", window=0, prefill_waste=10.0)], ids=["defaults", "all-slots-one-prefill"])
def test_window_and_prefill_grouping_do_not_change_the_tokens(config):
    m = tiny(["rope_2d", "alibi_2d", "edges_2d"], seed=4)
    seqs = ragged_prompts("row_major", True, n=6, seed=4)
    assert_same(engine(m, seqs, "row_major", True, config=config, max_side=6), reference(m, seqs, "row_major", True, max_side=6))


@pytest.mark.parametrize("unroll", [1, 3, 4])
def test_calls_that_run_past_the_largest_grid_change_nothing(unroll):
    """Every row announces the largest grid (max_side x max_side), so the last call of ``unroll``
    steps runs past the end of every grid and of the token buffer's grid part."""
    m = tiny("rope_1d", seed=5, shape_bias={HEIGHT_0 + 5: 100.0, WIDTH_0 + 5: 100.0})
    seqs = ragged_prompts("row_major", True, n=3, seed=5)
    got = engine(m, seqs, "row_major", True, config=EngineConfig(compile="never", unroll=unroll, window=8), max_side=5)
    assert all(d.grid is not None and d.grid.shape == (5, 5) for d in got)
    assert_same(got, reference(m, seqs, "row_major", True, max_side=5))


def test_prefill_groups_bound_the_padding():
    assert engine_module._prefill_groups([10, 11, 12, 30, 31, 100], 0.25) == [(0, 3), (3, 5), (5, 6)]
    assert engine_module._prefill_groups([5, 5, 6], 0.0) == [(0, 2), (2, 3)]
    assert engine_module._prefill_groups([5, 9], 10.0) == [(0, 2)]
    for lengths in ([3, 8, 8, 20, 21, 22, 90], [1], [4, 4, 4]):
        groups = engine_module._prefill_groups(lengths, 0.25)
        assert [i for a, b in groups for i in range(a, b)] == list(range(len(lengths)))
        assert all((b - a) * lengths[b - 1] <= 1.25 * sum(lengths[a:b]) for a, b in groups)


def test_decode_batches_hold_prompts_of_similar_length():
    """Sorted by length; a prompt joins a batch while at most ``length_spread`` (or 256 tokens)
    longer than its shortest, and ``max_rows`` / ``max_cache_tokens`` still cut."""
    lengths = [1200, 150, 700, 100, 400, 1000, 120, 149]  # indices of 100, 120, 149, 150, 400, 700, 1000, 1200: 3, 6, 7, 1, 4, 2, 5, 0

    def chunks(**kw):
        return engine_module._chunks(lengths, 4096, 30, False, EngineConfig(**kw))

    assert chunks() == [[3, 6, 7, 1], [4], [2, 5], [0]]  # 400 - 100 > 256; 1000 - 700 <= 0.5 * 700; 1200 - 700 > 350
    assert chunks(length_spread=20.0) == [[3, 6, 7, 1, 4, 2, 5, 0]]
    assert chunks(max_rows=3) == [[3, 6, 7], [1, 4], [2, 5], [0]]  # 400 - 150 <= 256
    # a row's cache: its prompt + the largest grid's 903 tokens, times the rows of its batch
    assert chunks(length_spread=20.0, max_cache_tokens=3 * (1000 + 903)) == [[3, 6, 7, 1], [4, 2, 5], [0]]


@pytest.mark.parametrize("order,row_end", ORDER_CASES, ids=ORDER_IDS)
def test_ragged_batch_equals_the_reference_for_every_order(order, row_end):
    m = tiny(["rope_2d", "alibi_2d", "edges_2d"], seed=1)
    seqs = ragged_prompts(order, row_end, seed=1)
    assert_same(engine(m, seqs, order, row_end, max_side=5), reference(m, seqs, order, row_end, max_side=5))


@pytest.mark.parametrize("encoding", [["rope_3d", "edges_2d"], ["rope_2d", "alibi_2d"]], ids=["rope_3d+edges_2d", "rope_2d+alibi_2d"])
def test_every_model_option_decodes_as_the_reference(encoding):
    """Bidirectional input grids (the right-padded prefill opens each row's input grids, never
    its padding), RMSNorm, SwiGLU and q/k norm: the engine gives the reference's tokens, and each
    grid's log-probability equals one forward over the serialized example with that grid."""
    torch.manual_seed(3)
    cfg = TransformerConfig(max_seq_len=512, d_model=16, n_layers=2, n_heads=2, encoding=encoding,
                            input_attention="bidirectional", norm="rmsnorm", mlp="swiglu", qk_norm=True)
    m = Transformer(cfg).eval()
    seqs = ragged_prompts("snake", False, seed=3)
    got = engine(m, seqs, "snake", max_side=5)
    assert_same(got, reference(m, seqs, "snake", max_side=5))
    for seq, d in zip(seqs, got):
        ctx, query = prompt_pairs(seq.tokens, "snake")
        assert d.logprob == pytest.approx(teacher_forced_logprob(m, serialize_example(ctx, Pair(query, d.grid), order="snake")), abs=1e-4)


def teacher_forced_logprob(m: Transformer, seq) -> float:
    """Summed log-probability of the query output's tokens, from one forward over the example."""
    b = collate([seq])
    with torch.no_grad():
        lp = torch.log_softmax(m(b["tokens"], positions_of(b)).double(), dim=-1)[0]  # (T, V)
    start = int(np.flatnonzero(seq.tokens == OUTPUT)[-1]) + 1
    toks = torch.as_tensor(seq.tokens)
    return float(lp[start - 1 : len(seq) - 1].gather(1, toks[start:, None]).sum())


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_every_row_decodes_with_its_own_positions_and_metadata(encoding):
    """The engine's log-probability of each row's grid equals that of one forward over the
    serialized example with that grid: each row's tokens were fed at its own sequence indices,
    coordinates, grid index and shape (a shared offset or a swapped row/col would differ)."""
    order = "snake"
    m = tiny(encoding, seed=2)
    seqs = ragged_prompts(order, False, seed=2)
    for seq, d in zip(seqs, engine(m, seqs, order, max_side=5)):
        assert d.grid is not None
        ctx, query = prompt_pairs(seq.tokens, order)
        full = serialize_example(ctx, Pair(query, d.grid), order=order)
        assert d.logprob == pytest.approx(teacher_forced_logprob(m, full), abs=1e-4)


@pytest.mark.parametrize("window,unroll", [(128, 4), (1, 3)], ids=["defaults", "window-1-unroll-3"])
def test_rows_of_different_grid_sizes_compact_and_keep_their_order(monkeypatch, window, unroll):
    """A model that always wants 2 x 30 gets the widest grid each row's room allows (2 x 13 for
    the longest prompt, one column more per 2 tokens shorter): rows finish at different steps and
    are dropped mid-decode (compaction), the rows are sorted into batches of at most 3, and every
    result equals its own reference, in input order. The longest prompt finishes first, so with a
    1-slot window rounding the window shrinks and finished rows write at its clamped last slot."""
    selects = []
    real = StaticKVCache.select
    monkeypatch.setattr(StaticKVCache, "select", lambda self, rows, n: selects.append((len(rows), n)) or real(self, rows, n))
    rng = np.random.default_rng(0)
    ctx = [Pair(rng.integers(0, 10, (3, 3)), rng.integers(0, 10, (3, 3)))]
    seqs = [serialize_example(ctx, Pair(rng.integers(0, 10, (2, k)), None), prompt_only=True) for k in (3, 1, 6, 2, 5, 4)]
    wider = {WIDTH_0 + w: 5.0 * w for w in range(1, 31)}  # the wider the better
    m = tiny("rope_1d", max_seq_len=max(len(s) for s in seqs) + 30, shape_bias={HEIGHT_0 + 2: 50.0, **wider})
    got = engine(m, seqs, "row_major", config=EngineConfig(compile="never", max_rows=3, compact_below=0.9, window=window, unroll=unroll))
    assert_same(got, reference(m, seqs, "row_major"))
    assert len({d.grid.shape for d in got}) == 6 and selects  # six sizes, rows dropped


@pytest.mark.parametrize("row_end", [False, True], ids=["plain", "row_end"])
def test_prompts_near_the_sequence_limit(row_end):
    """A model that always wants 30x30, in one batch with prompts whose room allows only small
    grids or not even 1x1: each row is finished when a grid fits, reported at the limit
    otherwise, exactly as the reference decodes it alone with the same limit."""
    order = "snake"
    seqs = ragged_prompts(order, row_end, n=4, seed=4)
    longest = max(len(s) for s in seqs)
    m = tiny("rope_1d", max_seq_len=longest + 40, shape_bias={HEIGHT_0 + 30: 50.0, WIDTH_0 + 30: 50.0})
    got = engine(m, seqs, order, row_end)
    want = reference(m, seqs, order, row_end)
    assert_same(got, want)
    assert any(d.grid is not None and d.grid.shape[0] == 30 for d in got)  # the room allowed a 30-high grid
    limit = longest + 3  # the longest prompt has 3 tokens of room: not even 1x1 (4 tokens)
    got = engine(m, seqs, order, row_end, max_len=limit)
    assert_same(got, reference(m, seqs, order, row_end, max_len=limit))
    assert got[int(np.argmax([len(s) for s in seqs]))].reason.startswith("reached the sequence limit")


def test_plan_table_matches_the_serializer():
    """Every shape's plan lists the serializer's tokens, rows and columns of that grid's body."""
    for order, row_end in ORDER_CASES:
        plan = plan_table(order, row_end, 4, "cpu")
        for h in range(1, 5):
            for w in range(1, 5):
                g = np.arange(h * w).reshape(h, w) % 10
                full = serialize_example([], Pair(g, g), order=order, row_end=row_end)
                body = slice(int(np.flatnonzero(full.tokens == OUTPUT)[-1]) + 3, len(full))
                p = plan[(h - 1) * 4 + (w - 1), : len(full) - body.start].numpy()
                cells = full.row[body] >= 0
                assert (p[~cells, 0] == full.tokens[body][~cells]).all() and (p[cells, 0] == -1).all()
                assert (p[:, 1] == full.row[body]).all() and (p[:, 2] == full.col[body]).all()


def test_decode_batch_decodes_ragged_rows_in_one_call(monkeypatch):
    """AutoregressiveGridModel.decode_batch: full sequences of different prompt lengths, cut after
    each row's OUTPUT marker, in one engine call (it used to group by prompt length)."""
    module = AutoregressiveGridModel(max_seq_len=512, d_model=16, n_layers=1, n_heads=2, decode_compile="never").eval()
    rng = np.random.default_rng(6)
    seqs, prompts = [], []
    for i in range(3):
        ctx = [Pair(rng.integers(0, 10, (2 + i, 3)), rng.integers(0, 10, (3, 2 + i)))]
        q = Pair(rng.integers(0, 10, (2, 2 + i)), rng.integers(0, 10, (2, 2)))
        seqs.append(serialize_example(ctx, q))
        prompts.append(serialize_example(ctx, Pair(q.input, None), prompt_only=True))
    calls = []
    real = DecodeEngine.generate
    monkeypatch.setattr(DecodeEngine, "generate", lambda self, *a, **k: calls.append(a[3]) or real(self, *a, **k))
    got = module.decode_batch(collate(seqs), [2, 0, 1])
    assert calls == [[len(prompts[2]), len(prompts[0]), len(prompts[1])]]
    assert_same(got, reference(module.model, [prompts[2], prompts[0], prompts[1]], "row_major"))


def test_input_errors_name_the_defect():
    m = tiny("rope_1d")
    b = collate(ragged_prompts("row_major", False, n=2))
    with pytest.raises(ValueError, match="2 prompts"):
        generate(m, b["tokens"], positions_of(b), [5], "row_major", config=EAGER)
    with pytest.raises(ValueError, match="prompt lengths must be 1.."):
        generate(m, b["tokens"], positions_of(b), [0, 5], "row_major", config=EAGER)
    with pytest.raises(ValueError, match="longer than max_len 20"):
        generate(m, b["tokens"], positions_of(b), b["lengths"], "row_major", max_len=20, config=EAGER)
    with pytest.raises(ValueError, match="decode compile must be one of"):
        EngineConfig(compile="sometimes")
    with pytest.raises(ValueError, match="max_rows"):
        EngineConfig(max_rows=0)
    with pytest.raises(ValueError, match=r"EngineConfig.unroll must be >= 1, got 0"):
        EngineConfig(unroll=0)
    for name in ("window", "prefill_waste", "length_spread"):
        with pytest.raises(ValueError, match=rf"EngineConfig.{name} must be >= 0, got -1"):
            EngineConfig(**{name: -1})


# ---------------------------------------------------------------- compilation


class Spy:
    """Stands in for ``compiled_step``: counts the steps it runs (eagerly) and may raise."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls, self.error = 0, error

    def __call__(self, mode, k=1):
        def step(*args):
            if self.error is not None:
                raise self.error
            self.calls += k
            return engine_module._steps(k, *args)

        return step


def test_auto_compiles_after_the_eager_budget_and_gives_the_same_tokens(monkeypatch):
    spy = Spy()
    monkeypatch.setattr(engine_module, "compiled_step", spy)
    m = tiny("rope_1d")
    seqs = ragged_prompts("row_major", False)
    eng = DecodeEngine(EngineConfig(compile="auto", compile_after=10))
    got = eng.generate(m, *_batch(seqs), "row_major", max_side=6)
    assert eng.eager_steps == 12 and spy.calls > 0  # switched mid-decode, after three calls of unroll=4 steps
    assert_same(got, reference(m, seqs, "row_major", max_side=6))
    never = DecodeEngine(EngineConfig(compile="never"))
    never.generate(m, *_batch(seqs), "row_major", max_side=6)
    assert never.eager_steps == 12 + spy.calls  # every step after the first 12 ran "compiled"


def _batch(seqs):
    b = collate(seqs)
    return b["tokens"], positions_of(b), b["lengths"]


def test_a_failing_compiler_falls_back_to_the_eager_step_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    engine_module.compiled_step.cache_clear()
    monkeypatch.setattr(torch, "compile", broken)
    try:
        m = tiny("alibi_2d")
        seqs = ragged_prompts("hilbert", False)
        eng = DecodeEngine(EngineConfig(compile="always"))
        with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler found\); decoding eagerly") as rec:
            got = eng.generate(m, *_batch(seqs), "hilbert", max_side=5)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the second decode warns no more
                eng.generate(m, *_batch(seqs), "hilbert", max_side=5)
        assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
        assert eng.failure.startswith("RuntimeError") and not eng.compiling()
        assert_same(got, reference(m, seqs, "hilbert", max_side=5))
    finally:
        engine_module.compiled_step.cache_clear()


@pytest.mark.slow  # one real inductor compilation of a 1-layer model: tens of seconds on 2 cores
def test_compiled_step_equals_the_reference_on_a_ragged_batch():
    """The real torch.compile path (inductor, dynamic shapes): a ragged batch with row ends,
    2D RoPE, ALiBi-2D and edges_2d, compaction; a second batch of another size and length near the
    sequence limit; then weights changed in place: all equal to the reference. One graph serves
    them all: an 8-slot window (it moves every few calls), batches of 3 then 2 rows (3 is also
    the grammar plan's last dimension, which duck sizing once tied the batch to)."""
    engine_module.compiled_step.cache_clear()
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, encoding=["rope_2d", "alibi_2d", "edges_2d"])).eval()
    seqs = ragged_prompts("snake", True, n=3, seed=7)
    eng = DecodeEngine(EngineConfig(compile="always", compact_below=0.9, window=8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback
        got = eng.generate(m, *_batch(seqs), "snake", True, max_side=5)
        assert eng.failure is None and eng.eager_steps == 0
        assert_same(got, reference(m, seqs, "snake", True, max_side=5))
        more = ragged_prompts("snake", True, n=2, seed=8)
        limit = max(len(s) for s in more) + 12
        assert_same(eng.generate(m, *_batch(more), "snake", True, max_side=5, max_len=limit),
                    reference(m, more, "snake", True, max_side=5, max_len=limit))
        # weights changed in place (as test-time training and its restore do) are what the compiled step reads
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        changed = eng.generate(m, *_batch(seqs), "snake", True, max_side=5)
        assert_same(changed, reference(m, seqs, "snake", True, max_side=5))
        assert [d.tokens for d in changed] != [d.tokens for d in got]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 1  # no recompilation


def test_cuda_graph_steps_write_only_static_buffers(monkeypatch):
    """Under CUDA graphs (``reduce-overhead``) every buffer a step writes in place (the cache
    window's keys, values and key positions, and the token buffer) must be marked a static
    address: cudagraph trees skip CUDA graphs for a graph that mutates any other input
    (``torch._inductor.cudagraph_utils.check_for_mutation``). The mode is faked on CPU (the
    development machines have no GPU) and the compiled step is a spy that checks the marks."""
    def marked(t):
        return getattr(t, "_dynamo_static_input_type", None) is not None  # what mark_static_address sets

    seen = []

    def spy(mode, k=1):
        def step(*args):
            cache, s = args[1], args[2]
            mutated = {"keys": cache.k, "values": cache.v, "key positions": cache.positions or (), "tokens": [s.out]}
            seen.append(sorted(name for name, ts in mutated.items() if not all(marked(t) for t in ts)))  # unmarked
            return engine_module._steps(k, *args)

        return step

    monkeypatch.setattr(engine_module, "compile_mode", lambda device: "reduce-overhead")
    monkeypatch.setattr(engine_module, "compiled_step", spy)
    m = tiny(["rope_2d", "alibi_2d"], seed=6, shape_bias={HEIGHT_0 + 4: 50.0, WIDTH_0 + 4: 50.0})
    seqs = ragged_prompts("row_major", False, n=4, seed=6)
    got = DecodeEngine(EngineConfig(compile="always", compact_below=0.9)).generate(m, *_batch(seqs), "row_major", max_side=5)
    assert_same(got, reference(m, seqs, "row_major", max_side=5))
    assert len(seen) > 2 and not any(seen), seen


def test_cuda_graphs_after_an_eager_start_see_one_cache_shape(monkeypatch):
    """``compile="auto"`` switching to CUDA graphs mid-decode: from then on every call gets the
    whole cache, not a moving window (CUDA graphs record one graph per shape). Mode faked, spy."""
    sizes = []

    def spy(mode, k=1):
        def step(*args):
            sizes.append(args[1].k[0].size(2))
            return engine_module._steps(k, *args)

        return step

    monkeypatch.setattr(engine_module, "compile_mode", lambda device: "reduce-overhead")
    monkeypatch.setattr(engine_module, "compiled_step", spy)
    m = tiny("rope_1d", seed=6, shape_bias={HEIGHT_0 + 5: 50.0, WIDTH_0 + 5: 50.0})
    seqs = ragged_prompts("row_major", False, n=3, seed=6)
    eng = DecodeEngine(EngineConfig(compile="auto", compile_after=4, window=8, compact_below=0.0))
    got = eng.generate(m, *_batch(seqs), "row_major", max_side=5)
    assert_same(got, reference(m, seqs, "row_major", max_side=5))
    assert eng.eager_steps == 4 and len(sizes) > 2 and len(set(sizes)) == 1, sizes


@pytest.mark.slow  # two real inductor compilations of a 1-layer model
def test_one_row_products_become_fused_sums_only_in_the_batch_1_graph():
    """On CPU the compiled step decomposes matrix products of one row (``decompose_mm_pass``):
    a batch of one prompt (its own graph: dynamic shapes specialize a size of 1) gets them and
    still equals the reference; a batch of two keeps its GEMM calls."""
    engine_module.compiled_step.cache_clear()
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(max_seq_len=256, d_model=16, n_layers=1, n_heads=2, encoding=["rope_1d", "edges_2d"])).eval()
    seqs = ragged_prompts("row_major", False, n=2, seed=3)
    eng = DecodeEngine(EngineConfig(compile="always"))
    counters = torch._dynamo.utils.counters  # looked up each time: compiling may clear it
    counters.clear()
    decomposed = lambda: sum(v for k, v in counters["inductor"].items() if k.startswith("decompose_"))  # noqa: E731
    assert_same(eng.generate(m, *_batch(seqs), "row_major", max_side=5), reference(m, seqs, "row_major", max_side=5))
    assert decomposed() == 0  # batch of 2: library GEMMs
    # (a graph from inductor's on-disk cache replays the counters its compilation set)
    assert_same(eng.generate(m, *_batch(seqs[:1]), "row_major", max_side=5), reference(m, seqs[:1], "row_major", max_side=5))
    assert eng.failure is None and decomposed() > 0  # batch of 1: fused sums
    engine_module.compiled_step.cache_clear()
