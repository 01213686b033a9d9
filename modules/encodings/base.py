"""The positional-encoding interface: three slots, explicit positions.

As in x-transformers, an encoding plugs into one of three slots by what it does:

- ``additive``: a vector added to the token embeddings, ``(B, T, d_model)``;
- ``rotary``:   a rotation of q and k inside attention, given as ``cos, sin`` of shape
                ``(B, 1, T, head_dim)`` and applied with :func:`apply_rotary`;
- ``bias``:     an additive attention bias ``(B, n_heads, Tq, Tk)`` from query and key positions.

Every encoding receives explicit :class:`Positions` from the serializer (sequence index, cell
row and column, grid index) and never infers a grid shape from the sequence length.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Optional

import torch
from torch import Tensor, nn


class Positions(NamedTuple):
    """Per-token coordinates, each ``(B, T)`` int64. ``row``/``col``/``grid`` are -1 for
    tokens that are not cells (or not in a grid). ``height``/``width`` are the shape of a cell's
    grid (-1 for tokens that are not cells); they let an encoding measure a cell from the bottom
    and right edges too. They may be ``None`` where no encoding needs them."""

    pos: Tensor  # index in the sequence, 0..T-1 (continues across KV-cache steps)
    row: Tensor  # cell row inside its grid, or -1
    col: Tensor  # cell column inside its grid, or -1
    grid: Tensor  # grid index in the sequence, or -1
    height: Optional[Tensor] = None  # height of the cell's grid, or -1
    width: Optional[Tensor] = None  # width of the cell's grid, or -1

    @staticmethod
    def from_batch(batch: dict) -> "Positions":
        """The positions of a collated batch (``datamodules.batching.collate`` fields)."""
        return Positions(batch["pos"], batch["row"], batch["col"], batch["grid"], batch.get("height"), batch.get("width"))

    def map(self, fn) -> "Positions":
        """``fn`` applied to every field that is present (``None`` fields stay ``None``)."""
        return Positions(*(None if t is None else fn(t) for t in self))

    def slice(self, start: int, end: int) -> "Positions":
        return self.map(lambda t: t[:, start:end])

    @staticmethod
    def cat(a: "Positions", b: "Positions") -> "Positions":
        return Positions(*(None if x is None or y is None else torch.cat([x, y], dim=1) for x, y in zip(a, b)))


class PositionalEncoding(nn.Module):
    """Base class. Subclasses set ``slot`` and implement ``forward`` for it."""

    slot: ClassVar[str] = "additive"

    def __init__(self, d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.max_seq_len = max_seq_len


class AdditiveEncoding(PositionalEncoding):
    slot = "additive"

    def forward(self, p: Positions) -> Tensor:  # (B, T, d_model)
        raise NotImplementedError


class RotaryEncoding(PositionalEncoding):
    slot = "rotary"

    def forward(self, p: Positions) -> tuple[Tensor, Tensor]:  # cos, sin: (B, 1, T, head_dim)
        raise NotImplementedError


class BiasEncoding(PositionalEncoding):
    slot = "bias"

    def forward(self, q: Positions, k: Positions) -> Tensor:
        """A fresh ``(B, n_heads, Tq, Tk)`` tensor (not a view of a cached or expanded one): the
        transformer writes the causal and padding masks into it in place."""
        raise NotImplementedError


class NoEncoding(AdditiveEncoding):
    """``none``: no positional information at all (the causal mask alone orders tokens)."""

    def forward(self, p: Positions) -> Tensor:
        return torch.zeros((), dtype=torch.float32, device=p.pos.device)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (B, nh, T, hs) by the angles whose cos/sin are (B, 1, T, hs).

    Pairs dimension i with i + hs/2 (the "rotate half" convention of GPT-NeoX/litgpt). The plain
    formula; the transformer uses :func:`apply_rotary_signed` (same result, fewer passes)."""
    return (x * cos + rotate_half(x) * sin).to(x.dtype)


def signed_sin(sin: Tensor) -> Tensor:
    """``sin`` (..., hs) with its first half negated: ``rotate_half(x) * sin == swap(x) * signed``
    where ``swap`` exchanges the halves. Made once per forward, used by every layer."""
    s1, s2 = sin.chunk(2, dim=-1)
    return torch.cat((-s1, s2), dim=-1)


def apply_rotary_signed(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """:func:`apply_rotary` with ``sin_signed = signed_sin(sin)``: no negation pass over ``x``.
    Not ``torch.addcmul``: with it a resumed run's weights differed from an uninterrupted run's in
    the last bits (tests/test_resume.py), most likely because the CPU kernel fuses the
    multiply-add (one rounding) in vectorized lanes and not in the scalar tail, so an element's
    rounding depends on memory alignment. Separate products and a sum round the same way always."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((x2, x1), dim=-1) * sin_signed).to(x.dtype)


def check_below(values: Tensor, limit: int, field: str, encoding: str, fix: str, low: int | None = None) -> None:
    """Raise a ``ValueError`` naming the encoding, the field and the fix if any of ``values`` is
    ``>= limit`` (or ``< low`` when given). Position tables are indexed, never clamped: a clamped or
    wrapped-around index would silently give two tokens the same encoding.

    On CPU, and on an accelerator outside autograd (validation, decoding), the check reads the
    extremes on the host and raises this message. On an accelerator while autograd records
    (training), reading them would be a host-device sync per step: there the positions come
    from the DataModule, valid by construction (``build_specs`` enforces ``max_seq_len``, grids
    are at most 30x30), and a device-side assert (no sync) still stops a bad index. Skipped
    under ``torch.compile``."""
    if values.numel() == 0 or torch.compiler.is_compiling():
        return
    if values.device.type != "cpu" and torch.is_grad_enabled():
        ok = values < limit if low is None else (values < limit) & (values >= low)
        torch._assert_async(ok.all(), f"{encoding}: {field} outside 0..{limit - 1}; {fix}")
        return
    bottom, top = (int(v) for v in torch.aminmax(values))
    if top >= limit:
        raise ValueError(f"{encoding}: {field} {top} is outside the table of {limit} entries; {fix}")
    if low is not None and bottom < low:
        raise ValueError(f"{encoding}: {field} {bottom} is negative; positions count from {low}")
