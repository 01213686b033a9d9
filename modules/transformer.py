"""A small pre-norm transformer over serialized grids, causal or bidirectional, with a KV cache.

Pre-norm blocks (GPT-2 / nanoGPT layout) on ``F.scaled_dot_product_attention``; positional
information comes from :class:`gridlm.modules.encodings.EncodingStack` through its three slots
(added to the embeddings, rotating q/k, or an attention bias).

Block parts are chosen by name: ``norm`` LayerNorm (GPT-2) or RMSNorm (Zhang & Sennrich 2019, as
in Llama), ``mlp`` GELU (GPT-2) or SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"; hidden
width 2/3 of the GELU one so both have the same parameters), and ``qk_norm`` an RMSNorm of every
head's queries and keys before the rotation (Dehghani et al. 2023, ViT-22B; OLMo 2), which keeps
attention logits bounded at high learning rates.

``input_attention: bidirectional`` (causal models only) lets every token of an *input* grid attend
to its whole grid, later cells included, while everything else stays causal: an input grid is read
the way a vision transformer reads an image (whole-grid context for gravity, counting, cropping,
symmetry), and no target can leak, because input grids are never next-token targets (the
``test_output`` and ``all_outputs`` policies). Input grids are the even grid indices of the
serializer's layout (pair k: input 2k, output 2k+1). Decoding is unchanged: the prompt holds
every input grid whole, and each generated output token sees every key before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gridlm.modules.encodings import EncodingStack, Positions, apply_rotary_signed, signed_sin
from gridlm.modules.encodings.registry import parse_encoding_names


NormName = Literal["layernorm", "rmsnorm"]
MLPName = Literal["gelu", "swiglu"]
InputAttention = Literal["causal", "bidirectional"]
NORMS = ("layernorm", "rmsnorm")
INPUT_ATTENTION = ("causal", "bidirectional")
MLPS = ("gelu", "swiglu")


@dataclass
class TransformerConfig:
    vocab_size: int = 76  # from the DataModule (gridlm.datamodules.tokens.VOCAB_SIZE); linked by the CLI
    max_seq_len: int = 2048  # longest sequence the position tables cover; linked from the DataModule
    d_model: int = 128  # residual width
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads; d_model must divide evenly
    mlp_ratio: int = 4  # hidden width of the MLP = mlp_ratio * d_model (GPT-2 default)
    dropout: float = 0.0  # from-scratch training on small data; 0 keeps runs deterministic
    encoding: Union[str, Sequence[str]] = "rope_1d"  # name or list of names from gridlm.modules.encodings.ENCODINGS
    tie_embeddings: bool = True  # share the token embedding with the output head (fewer params)
    causal: bool = True  # False for the bidirectional refiner
    bias: bool = False  # biases in Linear layers (litgpt/nanoGPT default: off)
    norm: NormName = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama)
    mlp: MLPName = "gelu"  # "gelu" (GPT-2) or "swiglu" (Llama; same parameter count)
    qk_norm: bool = False  # RMSNorm of each head's q and k before attention (ViT-22B, OLMo 2)
    input_attention: InputAttention = "causal"  # "bidirectional": input grids attend to their whole grid
    encoding_names: list = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"model.d_model / model.n_heads = {self.d_model // self.n_heads} must be even (rotary encodings rotate pairs)"
            )
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"model.mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.input_attention not in INPUT_ATTENTION:
            raise ValueError(f"model.input_attention must be one of {INPUT_ATTENTION}, got {self.input_attention!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        self.encoding_names = parse_encoding_names(self.encoding)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class KVCache:
    """Keys/values of every layer for incremental decoding, plus the positions they were made at
    (attention-bias encodings need key positions). Preallocated to ``max_len``; ``length`` grows
    by each forward's ``T`` (every row at once: prompts of equal length)."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, max_len: int, device, dtype) -> None:
        shape = (batch, n_heads, max_len, head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.positions: Positions | None = None
        self.length = 0
        self.max_len = max_len

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        t0, t1 = self.length, self.length + k.size(2)
        if t1 > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; decoding needs {t1} (raise max_len)")
        self.k[layer][:, :, t0:t1] = k
        self.v[layer][:, :, t0:t1] = v
        return self.k[layer][:, :, :t1], self.v[layer][:, :, :t1]

    def keys(self, positions: Positions) -> tuple[Positions, Tensor | None, int]:
        """For a forward of ``positions`` (B, T): the positions of every key it attends to, a
        ``(B, Tk)`` mask of visible keys (None: all, up to causality) and the cached length before it."""
        key_pos = positions if self.positions is None else Positions.cat(self.positions, positions)
        return key_pos, None, self.length

    def advance(self, T: int, key_pos: Positions) -> None:
        self.length += T
        self.positions = key_pos


class StaticKVCache:
    """A fixed-size cache for compiled decoding: keys/values ``(B, nh, L, hs)`` zero-filled once,
    with per-row write slots, so rows of different prompt lengths decode together.

    Two modes. Prefill (``slots`` None): a right-padded prompt batch ``(B, T)`` is written to
    slots ``[0, T)`` and attends causally to itself only (a real token never sees the padding
    after it). Step (``slots`` a ``(B,)`` tensor): one token per row is written at its row's
    slot (the engine keeps ``slot == pos``: prompt length + tokens generated), and attends to
    the slots of the window it is decoded through (:meth:`view`: the slots in use, rounded up)
    under a mask of ``slot' <= slot``: the slots of padding were overwritten by generated
    tokens before they become visible. Shapes change only with the window, so one
    compiled step serves every step (gpt-fast's static cache, with per-row offsets instead of a
    shared ``input_pos``). ``positions`` keeps the key metadata for attention-bias encodings."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, max_len: int, device, dtype, keep_positions: bool) -> None:
        # one spare slot, never written: every window the engine decodes through (``view``) is then a
        # strict view whose stride never equals a contiguous tensor's, so one compiled graph serves all
        shape = (batch, n_heads, max_len + 1, head_dim)
        # zeros, not empty: a masked slot's value still enters softmax(qk) @ v, and 0 * NaN is NaN
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        fill = torch.zeros(batch, max_len + 1, dtype=torch.long, device=device)
        self.positions = Positions(*(fill.clone() for _ in range(6))) if keep_positions else None  # (B, L) each
        self.slots: Tensor | None = None
        self.max_len = max_len

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.slots is None:  # prefill: slots [0, T), attend to the prompt itself
            T = k.size(2)
            self.k[layer][:, :, :T] = k
            self.v[layer][:, :, :T] = v
            return k, v
        rows = torch.arange(k.size(0), device=k.device)
        kc, vc = self.k[layer], self.v[layer]
        kc[rows, :, self.slots] = k[:, :, 0].to(kc.dtype)  # (B, nh, hs) at (row, slot)
        vc[rows, :, self.slots] = v[:, :, 0].to(vc.dtype)
        if kc.dtype != k.dtype:  # autocast (bf16-mixed): the cache keeps the weights' dtype, attention the activations'
            return kc.to(k.dtype), vc.to(v.dtype)
        return kc, vc  # (B, nh, L, hs)

    def keys(self, positions: Positions) -> tuple[Positions, Tensor | None, int]:
        if self.slots is None:
            if self.positions is not None:
                T = positions.pos.size(1)
                for store, new in zip(self.positions, positions):
                    store[:, :T] = new if new is not None else -1
            return positions, None, 0
        key_pos = positions
        if self.positions is not None:
            rows = torch.arange(positions.pos.size(0), device=positions.pos.device)
            for store, new in zip(self.positions, positions):
                store[rows, self.slots] = new[:, 0] if new is not None else -1
            key_pos = Positions(*(s if n is not None else None for s, n in zip(self.positions, positions)))
        visible = torch.arange(self.k[0].size(2), device=self.slots.device) <= self.slots[:, None]  # (B, L)
        return key_pos, visible, 0

    @property
    def length(self) -> int:
        """Keys before this forward, as :class:`Attention`'s fused causal path counts them: 0 (a
        prefill attends to itself; a step always brings its mask)."""
        return 0

    def advance(self, T: int, key_pos: Positions) -> None:
        pass  # the engine moves the slots

    def view(self, rows: slice = slice(None), length: int | None = None) -> "StaticKVCache":
        """A cache over some rows and the first ``length`` slots that shares this one's storage
        (views, no copy): the engine prefills groups of rows of similar length through it, and
        decodes through a window of the slots in use, so a step reads the keys written so far
        rather than all ``max_len`` slots."""
        n = self.max_len if length is None else length
        out = object.__new__(StaticKVCache)
        out.k = [k[rows, :, :n] for k in self.k]
        out.v = [v[rows, :, :n] for v in self.v]
        out.positions = None if self.positions is None else self.positions.map(lambda t: t[rows, :n])
        out.slots, out.max_len = None, n
        return out

    def select(self, rows: Tensor, length: int) -> "StaticKVCache":
        """A cache of the chosen rows and the first ``length`` slots (copies): the engine drops
        finished rows and unused slots mid-decode."""
        out = object.__new__(StaticKVCache)
        out.k = [k[rows, :, : length + 1].contiguous() for k in self.k]  # + the spare slot
        out.v = [v[rows, :, : length + 1].contiguous() for v in self.v]
        out.positions = None if self.positions is None else self.positions.map(lambda t: t[rows, : length + 1].contiguous())
        out.slots, out.max_len = None, length
        return out


def make_norm(cfg: TransformerConfig, dim: int | None = None) -> nn.Module:
    """The block's normalisation over ``dim`` features (default ``d_model``)."""
    dim = dim or cfg.d_model
    return nn.RMSNorm(dim, eps=1e-6) if cfg.norm == "rmsnorm" else nn.LayerNorm(dim, bias=cfg.bias)


class SwiGLU(nn.Module):
    """``w2(silu(x W1) * (x W3))`` (Shazeer 2020); ``w13`` holds W1 and W3 side by side."""

    def __init__(self, d_model: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.hidden = hidden
        self.w13 = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.w2 = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).split(self.hidden, dim=-1)  # (B, T, hidden) each
        return self.w2(F.silu(gate) * up)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.causal = cfg.n_heads, cfg.head_dim, cfg.causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6) if cfg.qk_norm else None

    def forward(self, x: Tensor, rot, attn_mask: Tensor | None, cache: KVCache | None, layer: int) -> Tensor:
        """``attn_mask``: the additive mask ``(B|1, nh|1, T, past+T)`` from :meth:`Transformer.attn_mask`
        (bias, causal and padding already combined, once per forward), or None for the fused causal path."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rot is not None:
            cos, sin_signed = rot  # (B, 1, T, hs) each, see Transformer.hidden
            q, k = apply_rotary_signed(q, cos, sin_signed), apply_rotary_signed(k, cos, sin_signed)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)  # (B, nh, past+T, hs)
        dropout = self.dropout if self.training else 0.0
        if attn_mask is None:
            # fast paths: full causal mask from the start, one new query (sees every key), or bidirectional
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal and T > 1 and past == 0)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=dropout)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        hidden = cfg.mlp_ratio * cfg.d_model
        if cfg.mlp == "swiglu":
            # 2/3 of the GELU width (rounded to a multiple of 8): the same parameter count as GELU
            self.mlp = nn.Sequential(SwiGLU(cfg.d_model, 8 * max(1, round(2 * hidden / 3 / 8)), cfg.bias), nn.Dropout(cfg.dropout))
        else:
            self.mlp = nn.Sequential(
                nn.Linear(cfg.d_model, hidden, bias=cfg.bias),
                nn.GELU(approximate="tanh"),
                nn.Linear(hidden, cfg.d_model, bias=cfg.bias),
                nn.Dropout(cfg.dropout),
            )

    def forward(self, x: Tensor, rot, attn_bias, cache, layer: int) -> Tensor:
        x = x + self.attn(self.norm1(x), rot, attn_bias, cache, layer)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """Token ids + explicit positions -> logits ``(B, T, vocab_size)``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encodings = EncodingStack(cfg.encoding_names, cfg.d_model, cfg.n_heads, cfg.max_seq_len)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight  # one Parameter: parameters() yields it once
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight", "mlp.0.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def new_cache(self, batch: int, max_len: int, device=None, dtype=None) -> KVCache:
        p = self.embed.weight
        c = self.cfg
        return KVCache(c.n_layers, batch, c.n_heads, c.head_dim, max_len, device or p.device, dtype or p.dtype)

    def new_static_cache(self, batch: int, max_len: int, device=None, dtype=None) -> StaticKVCache:
        """A :class:`StaticKVCache`; it keeps key positions only when an attention-bias encoding needs them."""
        p = self.embed.weight
        c = self.cfg
        keep = len(self.encodings.bias_encodings) > 0
        return StaticKVCache(c.n_layers, batch, c.n_heads, c.head_dim, max_len, device or p.device, dtype or p.dtype, keep)

    def hidden(
        self,
        tokens: Tensor,
        positions: Positions,
        cache: KVCache | None = None,
        key_padding_mask: Tensor | None = None,
        input_add: Tensor | None = None,
    ) -> Tensor:
        """Final normalised hidden states ``(B, T, d_model)``.

        ``key_padding_mask`` (B, T) True for real tokens: only needed by bidirectional models
        (a causal model never lets a real token see right-padding). ``input_add`` (B, T, C) is
        added to the token embeddings (the refiner's carried latent state, TRM's input injection)."""
        x = self.embed(tokens)  # (B, T, C)
        if input_add is not None:
            x = x + input_add.to(x.dtype)
        add = self.encodings.additive(positions)
        if add is not None:
            x = x + add.to(x.dtype)
        x = self.drop(x)
        rot = self.encodings.rotary(positions)
        if rot is not None:  # once per forward: cast, and the sign of rotate_half folded into sin
            rot = (rot[0].to(x.dtype), signed_sin(rot[1]).to(x.dtype))
        key_pos, past = positions, 0
        if cache is not None:  # keys: cached + new; a static cache also says which of its slots are visible
            key_pos, visible, past = cache.keys(positions)
            key_padding_mask = visible if key_padding_mask is None else key_padding_mask
        # one-token forwards (decoding steps) open nothing: the causal diagonal is their only limit
        bidir = self.cfg.input_attention == "bidirectional" and tokens.size(1) > 1
        within = self.input_blocks(positions, key_pos) if bidir else None
        mask = self.attn_mask(self.encodings.bias(positions, key_pos), key_padding_mask, tokens.size(1), past, x, within)
        for i, block in enumerate(self.blocks):
            x = block(x, rot, mask, cache, i)
        if cache is not None:
            cache.advance(tokens.size(1), key_pos)
        return self.norm(x)

    def embedding_logits(self, h: Tensor, ids: Tensor) -> Tensor:
        """Scores ``(..., len(ids))`` of hidden states ``h`` ``(..., C)`` against the input
        embeddings of tokens ``ids`` (the refiner's canvas readout). A method, not a read of
        ``embed.weight`` by the caller, so that ``GridFSDPStrategy`` runs it inside the FSDP root's
        forward: a replicated weight read outside it loses its gradient (experiments/fsdp.py)."""
        return F.linear(h, self.embed.weight[ids])

    def input_blocks(self, q: Positions, k: Positions) -> Tensor | None:
        """``(B, 1, Tq, Tk)`` True where query and key are in the same *input* grid (even grid index),
        the pairs ``input_attention: bidirectional`` opens above the causal diagonal; None for a
        bidirectional model. No data-dependent branch (a compiled forward would break its graph
        there): a chunk without input-grid queries gets an all-False block, which opens nothing."""
        q_in = (q.grid >= 0) & (q.grid % 2 == 0)  # (B, Tq)
        if not self.cfg.causal:
            return None
        return (q_in[:, :, None] & (q.grid[:, :, None] == k.grid[:, None, :]))[:, None]  # (B, 1, Tq, Tk)

    def attn_mask(
        self, bias: Tensor | None, key_padding_mask: Tensor | None, T: int, past: int, x: Tensor, within: Tensor | None = None
    ) -> Tensor | None:
        """The additive attention mask shared by every layer, built once per forward: the encodings'
        bias ``(B, nh, T, Tk)``, ``-inf`` above the causal diagonal and on padded keys, in the
        dtype attention runs in (the autocast dtype under mixed precision). ``Tk`` is ``past + T``,
        or the width of ``key_padding_mask`` (a static cache's slots). None when the fused
        ``is_causal`` (or unmasked) path of ``scaled_dot_product_attention`` applies: no bias, no
        padding mask, no causal prompt chunk after cached keys, and no input grid to open (``within``:
        :meth:`input_blocks`, pairs allowed above the diagonal)."""
        causal_chunk = self.cfg.causal and past > 0 and T > 1
        if bias is None and key_padding_mask is None and not causal_chunk and within is None:
            return None
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        Tk = past + T if key_padding_mask is None else key_padding_mask.size(1)
        # the encodings' bias is a fresh tensor of this forward: the causal mask is written into it in place
        mask = torch.zeros(1, 1, T, Tk, dtype=dtype, device=x.device) if bias is None else bias.to(dtype)
        if self.cfg.causal and T > 1:
            above = torch.ones(T, Tk, dtype=torch.bool, device=x.device).triu(diagonal=past + 1)  # (T, Tk)
            if within is not None:
                above = above & ~within  # (B, 1, T, Tk): an input grid's tokens see their whole grid
                mask = mask.expand(above.shape[0], -1, -1, -1).clone() if mask.shape[0] < above.shape[0] else mask
            mask.masked_fill_(above, float("-inf"))
        if key_padding_mask is not None:
            pad = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
            mask = torch.where(pad, torch.tensor(float("-inf"), dtype=dtype, device=x.device), mask)  # (B, nh|1, T, Tk)
        return mask

    def forward(
        self,
        tokens: Tensor,
        positions: Positions,
        cache: KVCache | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        return self.head(self.hidden(tokens, positions, cache, key_padding_mask))  # (B, T, vocab)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
