"""The token vocabulary and the per-token metadata every serialized sequence carries.

Layout of the vocabulary (``VOCAB_SIZE`` = 76)::

    0..9     colours
    10       PAD          padding (never a target)
    11       BOS          start of a sequence
    12       INPUT        start of an input grid
    13       OUTPUT       start of an output grid
    14       ROW_END      end of a row (only with ``row_end=True`` and a row-wise order)
    15       GRID_END     end of a grid
    16..45   HEIGHT_1..HEIGHT_30   grid height, announced before the cells
    46..75   WIDTH_1..WIDTH_30     grid width, announced after the height

A grid is serialized as ``INPUT|OUTPUT, HEIGHT_h, WIDTH_w, <h*w cells in the chosen order>, GRID_END``.
A sequence is ``BOS`` followed by the context pairs and then the query pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_COLOURS = 10
MAX_SIDE = 30  # ARC grids are 1..30 by 1..30

PAD = 10
BOS = 11
INPUT = 12
OUTPUT = 13
ROW_END = 14
GRID_END = 15
HEIGHT_0 = 15  # HEIGHT_0 + h is the token of height h (h = 1..30)
WIDTH_0 = HEIGHT_0 + MAX_SIDE  # WIDTH_0 + w is the token of width w (w = 1..30)
VOCAB_SIZE = WIDTH_0 + MAX_SIDE + 1  # 76

SPECIAL_NAMES = {PAD: "PAD", BOS: "BOS", INPUT: "INPUT", OUTPUT: "OUTPUT", ROW_END: "ROW_END", GRID_END: "GRID_END"}


def height_token(h: int) -> int:
    return HEIGHT_0 + h


def width_token(w: int) -> int:
    return WIDTH_0 + w


def is_height_token(t: int) -> bool:
    return HEIGHT_0 + 1 <= t <= HEIGHT_0 + MAX_SIDE


def is_width_token(t: int) -> bool:
    return WIDTH_0 + 1 <= t <= WIDTH_0 + MAX_SIDE


def token_name(t: int) -> str:
    """Human-readable name of a token id, for error messages and debugging."""
    if 0 <= t < N_COLOURS:
        return str(t)
    if t in SPECIAL_NAMES:
        return SPECIAL_NAMES[t]
    if is_height_token(t):
        return f"H{t - HEIGHT_0}"
    if is_width_token(t):
        return f"W{t - WIDTH_0}"
    return f"<unk {t}>"


# Roles: which part of the sequence a token belongs to. Every token of a grid (its start
# marker, shape tokens, cells, row ends and end marker) carries the grid's role; BOS and PAD are
# SPECIAL. The "test" pair is the query: a test pair at evaluation, the held-out demonstration
# (leave-one-out) in training.
ROLE_DEMO_INPUT = 0
ROLE_DEMO_OUTPUT = 1
ROLE_TEST_INPUT = 2
ROLE_TEST_OUTPUT = 3
ROLE_SPECIAL = 4
ROLE_NAMES = ("demo_input", "demo_output", "test_input", "test_output", "special")

# Supervision policies: which tokens are next-token targets.
#   "test_output": only the query output grid (shape tokens, cells, GRID_END).
#   "all_outputs": every output grid, demonstrations included (default; more signal per sequence).
#   "all":         every token after BOS.
TARGET_POLICIES = ("test_output", "all_outputs", "all")

FIELDS = ("tokens", "row", "col", "grid", "role", "target_mask", "height", "width")


@dataclass
class TokenSequence:
    """A serialized sequence with per-token metadata, all 1D numpy arrays of equal length.

    ``row``/``col`` hold the true coordinates of a cell inside its grid (-1 for non-cell tokens)
    whatever the serialization order, ``height``/``width`` the shape of that grid (-1 likewise); ``grid`` is the index of the grid in the sequence
    (context pair k: input 2k, output 2k+1; the query pair last; -1 for BOS/PAD).
    """

    tokens: np.ndarray  # int64 token ids
    row: np.ndarray  # int64, cell row or -1
    col: np.ndarray  # int64, cell column or -1
    grid: np.ndarray  # int64, grid index or -1
    role: np.ndarray  # int64, one of ROLE_*
    target_mask: np.ndarray  # bool, True where the token is a next-token target
    height: np.ndarray  # int64, height of a cell's grid or -1 (cells only, like row/col)
    width: np.ndarray  # int64, width of a cell's grid or -1
    meta: dict = field(default_factory=dict)  # task_id, query index, shapes, augmentation, ...

    def __len__(self) -> int:
        return len(self.tokens)

    def __post_init__(self) -> None:
        n = len(self.tokens)
        for name in FIELDS:
            if len(getattr(self, name)) != n:
                raise ValueError(f"TokenSequence.{name} has length {len(getattr(self, name))}, tokens has {n}")
