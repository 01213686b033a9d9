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


def test_kv_cache_matches_full_forward_token_by_token():
    m = tiny()
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
    ],
    ids=["heads-not-dividing", "odd-head-dim", "dropout", "unknown-encoding", "zero-layers"],
)
def test_config_errors_name_the_option(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TransformerConfig(**{**dict(d_model=16, n_heads=2, encoding="none"), **kw})
