import pytest
import torch

from gridlm.modules.encodings import Positions
from gridlm.modules.transformer import Transformer, TransformerConfig


def tiny(**kw):
    base = dict(vocab_size=20, max_seq_len=64, d_model=16, n_layers=2, n_heads=2, encoding="none")
    base.update(kw)
    return Transformer(TransformerConfig(**base)).eval()


def positions(B, T, offset=0):
    pos = torch.arange(offset, offset + T).expand(B, T)
    row = (pos // 5) % 7
    col = pos % 5
    return Positions(pos, row, col, torch.zeros_like(pos))


def test_tied_parameter_seen_once_by_optimizer():
    m = tiny(tie_embeddings=True)
    assert m.head.weight is m.embed.weight
    params = list(m.parameters())
    assert sum(p is m.embed.weight for p in params) == 1
    untied = tiny(tie_embeddings=False)
    assert untied.num_params() == m.num_params() + 20 * 16


def test_causal_output_does_not_depend_on_future_tokens():
    m = tiny()
    x = torch.randint(0, 20, (2, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 20
    a = m(x, positions(2, 12))
    b = m(y, positions(2, 12))
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


LLAMA = [dict(), dict(norm="rmsnorm"), dict(mlp="swiglu"), dict(qk_norm=True), dict(norm="rmsnorm", mlp="swiglu", qk_norm=True)]


@pytest.mark.parametrize("kw", LLAMA, ids=["gpt2", "rmsnorm", "swiglu", "qk_norm", "llama"])
def test_kv_cache_matches_full_forward_token_by_token(kw):
    m = tiny(**kw)
    x = torch.randint(0, 20, (3, 15))
    p = positions(3, 15)
    full = m(x, p)
    cache = m.new_cache(3, 15)
    steps = [m(x[:, :6], p.slice(0, 6), cache)]
    for t in range(6, 15):
        steps.append(m(x[:, t : t + 1], p.slice(t, t + 1), cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_bidirectional_padding_mask_isolates_real_tokens():
    m = tiny(causal=False)
    x = torch.randint(0, 20, (1, 10))
    keep = torch.ones(1, 10, dtype=torch.bool)
    keep[:, 7:] = False
    y = x.clone()
    y[:, 7:] = 3
    a = m(x, positions(1, 10), key_padding_mask=keep)
    b = m(y, positions(1, 10), key_padding_mask=keep)
    torch.testing.assert_close(a[:, :7], b[:, :7])


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(d_model=18, n_heads=4), "divisible"),
        (dict(d_model=12, n_heads=4), "even"),
        (dict(dropout=1.5), "dropout"),
        (dict(encoding="nope"), "unknown encoding"),
        (dict(n_layers=0), "n_layers"),
        (dict(norm="batchnorm"), "model.norm"),
        (dict(mlp="relu"), "model.mlp"),
    ],
    ids=["heads-not-dividing", "odd-head-dim", "dropout", "unknown-encoding", "zero-layers", "norm", "mlp"],
)
def test_config_errors_name_the_option(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TransformerConfig(**{**dict(d_model=16, n_heads=2, encoding="none"), **kw})


def test_block_parts_by_name():
    """RMSNorm / SwiGLU / QK-norm are really used, and SwiGLU keeps the GELU MLP's parameter count."""
    gpt2, llama = tiny(), tiny(norm="rmsnorm", mlp="swiglu", qk_norm=True)
    kinds = lambda m: {type(x).__name__ for x in m.modules()}  # noqa: E731
    assert {"LayerNorm", "GELU"} <= kinds(gpt2) and not {"RMSNorm", "SwiGLU"} & kinds(gpt2)
    assert {"RMSNorm", "SwiGLU"} <= kinds(llama) and not {"LayerNorm", "GELU"} & kinds(llama)
    qk = sum(p.numel() for n, p in llama.named_parameters() if "q_norm" in n or "k_norm" in n)
    assert qk == 2 * 2 * 8  # two layers, q and k, head_dim 8
    mlp_params = lambda m: sum(p.numel() for n, p in m.named_parameters() if ".mlp." in n)  # noqa: E731
    assert abs(mlp_params(tiny(mlp="swiglu")) / mlp_params(gpt2) - 1) < 0.07  # hidden 40 vs 64 * 2/3 = 42.7
    x = torch.randint(0, 20, (1, 9))
    assert not torch.allclose(gpt2(x, positions(1, 9)), tiny(norm="rmsnorm")(x, positions(1, 9)))


def _serialized(seed: int = 0):
    import numpy as np

    from gridlm.datamodules.batching import collate
    from gridlm.datamodules.serialize import serialize_example
    from gridlm.datamodules.tasks import Pair

    rng = np.random.default_rng(seed)
    g = lambda h, w: rng.integers(0, 10, (h, w))  # noqa: E731
    b = collate([serialize_example([Pair(g(3, 4), g(2, 2))], Pair(g(3, 3), g(2, 3)))])
    return b["tokens"], Positions.from_batch(b), b["grid"][0]


def test_bidirectional_input_grids_see_their_whole_grid_and_nothing_leaks():
    """``input_attention: bidirectional``: a cell of an input grid changes the outputs at every
    earlier token of that grid, never before the grid; outputs stay causal."""
    m = tiny(vocab_size=76, max_seq_len=128, encoding=["rope_1d", "edges_2d"], input_attention="bidirectional")
    x, p, grid = _serialized()
    full = m(x, p)

    def changed_before(t: int) -> list[int]:
        y = x.clone()
        y[0, t] = (y[0, t] + 1) % 10
        return [int(i) for i in torch.nonzero((m(y, p) - full).abs().amax(-1)[0, :t] > 1e-6)]

    start0, start2 = int((grid == 0).nonzero()[0]), int((grid == 2).nonzero()[0])
    last_cell_0 = int((grid == 0).nonzero()[-2])  # the cell before GRID_END
    assert changed_before(last_cell_0) == list(range(start0, last_cell_0))  # its whole input grid
    assert changed_before(int((grid == 2).nonzero()[-2])) == list(range(start2, int((grid == 2).nonzero()[-2])))
    out_cell = int((grid == 3).nonzero()[-2])
    assert changed_before(out_cell) == []  # an output cell is seen by nothing before it
    causal = tiny(vocab_size=76, max_seq_len=128, encoding=["rope_1d", "edges_2d"])
    causal.load_state_dict(m.state_dict())
    assert not torch.allclose(causal(x, p), full)


def test_bidirectional_inputs_decode_with_the_kv_cache():
    """A prompt holds whole input grids, so cached decoding of the query output equals the full forward."""
    m = tiny(vocab_size=76, max_seq_len=128, encoding=["rope_1d", "edges_2d"], input_attention="bidirectional")
    x, p, grid = _serialized(1)
    n = int((grid == 3).nonzero()[0]) + 1  # through the query's OUTPUT marker
    cache = m.new_cache(1, x.shape[1])
    steps = [m(x[:, :n], p.slice(0, n), cache)] + [m(x[:, t : t + 1], p.slice(t, t + 1), cache) for t in range(n, x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), m(x, p), atol=1e-5, rtol=1e-4)


def test_bidirectional_inputs_refuse_a_policy_that_supervises_inputs(tmp_path, capsys):
    from gridlm.experiments.cli import main

    from test_cli import tiny_flags

    code = main(["fit", *tiny_flags(tmp_path), "--model.input_attention", "bidirectional", "--data.target_policy", "all"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "model.input_attention=bidirectional" in err[-1] and "data.target_policy 'all'" in err[-1]
