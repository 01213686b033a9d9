"""Positional encodings for serialized grids, chosen by name (see ``registry.py``)."""

from gridlm.modules.encodings.base import (
    AdditiveEncoding,
    BiasEncoding,
    PositionalEncoding,
    Positions,
    RotaryEncoding,
    apply_rotary,
    apply_rotary_signed,
    signed_sin,
)
from gridlm.modules.encodings.registry import ENCODINGS, EncodingName, EncodingStack, parse_encoding_names

__all__ = [
    "AdditiveEncoding",
    "BiasEncoding",
    "ENCODINGS",
    "EncodingName",
    "EncodingStack",
    "PositionalEncoding",
    "Positions",
    "RotaryEncoding",
    "apply_rotary",
    "apply_rotary_signed",
    "parse_encoding_names",
    "signed_sin",
]
