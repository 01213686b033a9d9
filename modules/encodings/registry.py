"""One explicit registry of positional encodings, and the stack that combines them.

``ENCODINGS`` keys must equal the values of ``EncodingName`` (a test checks it), so a YAML
config, a command-line flag and a checkpoint all name an encoding by the same plain string.
"""

from __future__ import annotations

from typing import Literal, Sequence, Union, get_args

from torch import Tensor, nn

from gridlm.modules.encodings.additive import Edges2D, Learned1D, OneHot2D, Quadtree2D, Sinusoidal1D, Sinusoidal2D
from gridlm.modules.encodings.base import NoEncoding, PositionalEncoding, Positions
from gridlm.modules.encodings.bias import Alibi2D
from gridlm.modules.encodings.rotary import Rope1D, Rope2D, Rope3D

EncodingName = Literal[
    "none",
    "learned_1d",
    "sinusoidal_1d",
    "rope_1d",
    "onehot_2d",
    "edges_2d",
    "quadtree_2d",
    "sinusoidal_2d",
    "rope_2d",
    "rope_3d",
    "alibi_2d",
]

ENCODINGS: dict[str, type[PositionalEncoding]] = {
    "none": NoEncoding,  # additive, zero
    "learned_1d": Learned1D,  # additive, sequence index
    "sinusoidal_1d": Sinusoidal1D,  # additive, sequence index
    "rope_1d": Rope1D,  # rotary, sequence index
    "onehot_2d": OneHot2D,  # additive, cell (row, col)
    "edges_2d": Edges2D,  # additive, cell distances to all four edges of its grid
    "quadtree_2d": Quadtree2D,  # additive, cell (row, col)
    "sinusoidal_2d": Sinusoidal2D,  # additive, cell (row, col)
    "rope_2d": Rope2D,  # rotary, cell (row, col)
    "rope_3d": Rope3D,  # rotary, (grid index, row, col)
    "alibi_2d": Alibi2D,  # bias, cell pairs of one grid
}


SLOTS = ("additive", "rotary", "bias")


def parse_encoding_names(encoding: Union[str, Sequence[str]]) -> list[str]:
    """Normalise ``encoding`` (a name or a list of names) to a list, and reject unknown or repeated
    names, two rotary encodings (q/k can be rotated only once) and ``none`` combined with others."""
    names = [encoding] if isinstance(encoding, str) else list(encoding)
    if not names:
        raise ValueError(f"model.encoding is empty; choose from {sorted(ENCODINGS)} (use 'none' for no encoding)")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"model.encoding: expected encoding names (strings), got {name!r} in {names}")
        if name not in ENCODINGS:
            raise ValueError(f"model.encoding: unknown encoding {name!r}; valid names: {', '.join(sorted(ENCODINGS))}")
        if name in seen:
            raise ValueError(f"model.encoding: {name!r} is listed twice in {names}")
        seen.add(name)
    rotary = [n for n in names if ENCODINGS[n].slot == "rotary"]
    if len(rotary) > 1:
        raise ValueError(
            f"model.encoding: {rotary[0]!r} and {rotary[1]!r} are both rotary encodings; q/k can be rotated by only one"
        )
    if len(names) > 1 and "none" in names:
        raise ValueError(f"model.encoding: 'none' cannot be combined with other encodings, got {names}")
    return names


class EncodingStack(nn.Module):
    """All encodings of a model, grouped by slot. An empty slot returns ``None`` (the transformer
    then skips it); several additive or bias encodings are summed."""

    def __init__(self, encoding: Union[str, Sequence[str]], d_model: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__()
        self.names = parse_encoding_names(encoding)
        mods = {n: ENCODINGS[n](d_model=d_model, n_heads=n_heads, max_seq_len=max_seq_len) for n in self.names}
        self.additive_encodings = nn.ModuleList([m for m in mods.values() if m.slot == "additive"])
        self.rotary_encodings = nn.ModuleList([m for m in mods.values() if m.slot == "rotary"])
        self.bias_encodings = nn.ModuleList([m for m in mods.values() if m.slot == "bias"])

    def extra_repr(self) -> str:
        return f"names={self.names}"

    def additive(self, p: Positions) -> Tensor | None:
        """Sum of the additive encodings, ``(B, T, d_model)`` (or a broadcastable zero for ``none``)."""
        out = None
        for m in self.additive_encodings:
            out = m(p) if out is None else out + m(p)
        return out

    def rotary(self, p: Positions) -> tuple[Tensor, Tensor] | None:
        """``cos, sin`` of the rotary encoding, each ``(B, 1, T, head_dim)``, for :func:`apply_rotary`."""
        return self.rotary_encodings[0](p) if len(self.rotary_encodings) else None

    def bias(self, q: Positions, k: Positions) -> Tensor | None:
        """Sum of the attention biases for query and key positions, ``(B, n_heads, Tq, Tk)``."""
        out = None
        for m in self.bias_encodings:
            out = m(q, k) if out is None else out + m(q, k)
        return out


def _check_registry() -> None:
    """Raise if ``EncodingName`` and ``ENCODINGS`` disagree or a class has an unknown slot."""
    if set(get_args(EncodingName)) != set(ENCODINGS):
        raise RuntimeError(f"EncodingName {get_args(EncodingName)} != ENCODINGS keys {sorted(ENCODINGS)}")
    for name, cls in ENCODINGS.items():
        if cls.slot not in SLOTS:
            raise RuntimeError(f"encoding {name!r} ({cls.__name__}) has slot {cls.slot!r}; expected one of {SLOTS}")


_check_registry()
