"""The parts every task family is built from: difficulty knobs, pair plans, the ``Family``
record, and shared samplers (palettes, noise, polyominoes, non-touching object placement).

A family, as in RE-ARC (Hodel 2024, arXiv 2404.07353: one generator and one verifier per task),
is three functions: a *hidden-parameter sampler* (``draw_params``: what a task keeps fixed across
its pairs), an *input sampler* and a *reference rule*. Here the input sampler is split in two so
that sequence lengths are known before any grid is drawn: ``plan_pair`` fixes the input and
output shapes (cheap: a few integer draws), ``sample_input`` fills an input of the planned shape.
The rule is a plain function of (input, params) and is tested on hand-made grids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from gridlm.datamodules.tokens import MAX_SIDE, N_COLOURS

COLOURS = np.arange(1, N_COLOURS)  # the non-background colours
FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity
EIGHT = ndimage.generate_binary_structure(2, 2)  # 8-connectivity


@dataclass(frozen=True)
class Difficulty:
    """Knobs of the task distribution (every family clamps them to what its rule needs)."""

    min_side: int = 2  # smallest side a sampler draws (families needing more start higher)
    max_side: int = 10  # largest side of any grid of a task, outputs included
    min_objects: int = 1  # fewest objects per grid, where a family places objects
    max_objects: int = 4  # most objects per grid (fewer when they do not fit)
    min_demos: int = 3  # demonstrations per task in the stream
    max_demos: int = 4

    def __post_init__(self) -> None:
        for name in ("min_side", "max_side", "min_objects", "max_objects", "min_demos", "max_demos"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"synthetic {name}={value!r} must be an int")
        if not 2 <= self.max_side <= MAX_SIDE:
            raise ValueError(f"synthetic max_side={self.max_side} must be an int in 2..{MAX_SIDE}")
        if not 1 <= self.min_side <= self.max_side:
            raise ValueError(f"synthetic min_side={self.min_side} must be in 1..max_side={self.max_side}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"synthetic min_objects={self.min_objects}, max_objects={self.max_objects}: need 1 <= min <= max")
        if not 1 <= self.min_demos <= self.max_demos:
            raise ValueError(f"synthetic min_demos={self.min_demos}, max_demos={self.max_demos}: need 1 <= min <= max")


class PairPlan(NamedTuple):
    """The shapes of one pair, fixed before its grids are drawn (so lengths are known early)."""

    h: int  # input height
    w: int  # input width
    oh: int  # output height
    ow: int  # output width
    extra: Any = None  # what else the plan fixed (an object count, the output's object, ...)


Params = dict
Rule = Callable[[np.ndarray, Params], np.ndarray]


def _style(rng: np.random.Generator, d: Difficulty) -> Params:
    return style(rng)


def _same_shape(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d), side(rng, d)
    return PairPlan(h, w, h, w)


def _noise_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    return noise(rng, plan.h, plan.w, p["palette"], p["density"])


@dataclass(frozen=True)
class Family:
    """A task family: hidden parameters, pair shapes, inputs, and the reference rule."""

    name: str
    rule: Rule  # (input, params) -> output
    draw_params: Callable[[np.random.Generator, Difficulty], Params] = _style  # one task's hidden parameters
    plan_pair: Callable[[np.random.Generator, Difficulty, Params], PairPlan] = _same_shape  # shapes of one pair
    sample_input: Callable[[np.random.Generator, PairPlan, Params], np.ndarray] = _noise_input  # an input of the plan
    accept: Callable[[np.ndarray, np.ndarray, Params], bool] | None = None  # extra check that a pair shows the rule
    needs: int = 2  # smallest max_side the family can work with
    doc: str = ""  # one line for docs/synthetic.md


# ---------------------------------------------------------------------------------------------
# Samplers shared by the families


def side(rng: np.random.Generator, d: Difficulty, lo: int = 1, hi: int = MAX_SIDE) -> int:
    """A side in ``[max(d.min_side, lo), min(d.max_side, hi)]`` (``lo`` wins when they cross)."""
    hi = min(d.max_side, hi)
    lo = min(max(d.min_side, lo), hi)
    return int(rng.integers(lo, hi + 1))


def count(rng: np.random.Generator, d: Difficulty, lo: int = 1, hi: int = 99) -> int:
    """An object count in the knob range ``d.min_objects..d.max_objects`` clamped to ``lo..hi``."""
    n = int(rng.integers(d.min_objects, d.max_objects + 1))
    return max(lo, min(hi, n))


def palette(rng: np.random.Generator, lo: int = 2, hi: int = 4, exclude=()) -> np.ndarray:
    """``lo..hi`` distinct non-zero colours, none of ``exclude``."""
    choices = COLOURS[~np.isin(COLOURS, np.asarray(exclude, dtype=np.int64))]
    return np.sort(rng.choice(choices, size=int(rng.integers(lo, hi + 1)), replace=False))


def colours(rng: np.random.Generator, n: int, exclude=()) -> list[int]:
    """``n`` distinct non-zero colours (in random order), none of ``exclude``."""
    choices = COLOURS[~np.isin(COLOURS, np.asarray(exclude, dtype=np.int64))]
    return [int(c) for c in rng.choice(choices, size=n, replace=False)]


def style(rng: np.random.Generator, exclude=()) -> Params:
    """Hidden parameters shared by most families: a palette and the density of non-zero cells."""
    return {"palette": palette(rng, exclude=exclude), "density": float(rng.uniform(0.2, 0.6))}


def noise(rng: np.random.Generator, h: int, w: int, pal: np.ndarray, density: float) -> np.ndarray:
    """Background 0 with each cell coloured from ``pal`` with probability ``density``."""
    cells = pal[rng.integers(0, len(pal), size=(h, w))]
    return np.where(rng.random((h, w)) < density, cells, 0).astype(np.int64)


def label(grid: np.ndarray, diagonal: bool = False) -> tuple[np.ndarray, int]:
    """Connected components of the non-zero cells (scipy.ndimage.label): labels 1..n, 0 = background."""
    labels, n = ndimage.label(grid != 0, structure=EIGHT if diagonal else FOUR)
    return labels, int(n)


def sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Cell count of components 1..n (index 0 is the background)."""
    return np.bincount(labels.ravel(), minlength=n + 1)


def polyomino(rng: np.random.Generator, cells: int, max_h: int, max_w: int) -> np.ndarray:
    """A random 4-connected shape of ``cells`` cells (at most the box's area), grown one
    neighbour at a time, as a bool mask trimmed to its bounding box (at most max_h x max_w)."""
    cells = max(1, min(cells, max_h * max_w))
    shape = [(int(rng.integers(max_h)), int(rng.integers(max_w)))]
    taken = set(shape)
    picks, t = [], 0
    while len(shape) < cells:
        if t == len(picks):  # random numbers in blocks: one generator call per block, not per try
            picks, t = rng.random((4 * cells + 8, 2)).tolist(), 0
        a, b = picks[t]
        t += 1
        r, c = shape[int(a * len(shape))]
        dr, dc = _STEPS[int(b * 4)]
        r, c = r + dr, c + dc
        if 0 <= r < max_h and 0 <= c < max_w and (r, c) not in taken:
            taken.add((r, c))
            shape.append((r, c))
    rows, cols = zip(*shape)
    r0, c0 = min(rows), min(cols)
    mask = np.zeros((max(rows) - r0 + 1, max(cols) - c0 + 1), dtype=bool)
    mask[np.array(rows) - r0, np.array(cols) - c0] = True
    return mask


_STEPS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def trim(mask: np.ndarray) -> np.ndarray:
    """``mask`` cut to the bounding box of its True cells."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def place(rng: np.random.Generator, h: int, w: int, boxes: list[tuple[int, int]], tries: int = 30) -> list[tuple[int, int]] | None:
    """Top-left corners for boxes ``(bh, bw)`` inside an h x w grid such that no two boxes touch
    (not even diagonally: a free row or column between any two). ``None`` if one does not fit."""
    blocked = np.zeros((h, w), dtype=bool)
    corners = []
    for bh, bw in boxes:
        if bh > h or bw > w:
            return None
        rs = rng.integers(0, h - bh + 1, size=tries)
        cs = rng.integers(0, w - bw + 1, size=tries)
        for r, c in zip(rs.tolist(), cs.tolist()):
            if not blocked[r : r + bh, c : c + bw].any():
                blocked[max(r - 1, 0) : r + bh + 1, max(c - 1, 0) : c + bw + 1] = True
                corners.append((r, c))
                break
        else:
            return None
    return corners


def place_boxes(rng: np.random.Generator, h: int, w: int, boxes: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``(kept, corners)``: :func:`place` for ``boxes``, dropping boxes from the end until the rest
    fit without touching in an ``h`` x ``w`` grid; ``corners`` is empty when even one does not."""
    kept = list(boxes)
    corners = place(rng, h, w, kept)
    while corners is None and len(kept) > 1:
        kept.pop()
        corners = place(rng, h, w, kept)
    return kept, corners or []


def paint(grid: np.ndarray, mask: np.ndarray, corner: tuple[int, int], colour: int) -> None:
    """Colour the True cells of ``mask`` with its top-left at ``corner`` (in place)."""
    r, c = corner
    grid[r : r + mask.shape[0], c : c + mask.shape[1]][mask] = colour


def objects(grid: np.ndarray, diagonal: bool = False) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """Every connected object of non-zero cells: ``(bounding-box slices, its bool mask in the box)``,
    in label order (row-major order of the objects' first cells)."""
    labels, n = label(grid, diagonal)
    return [(box, labels[box] == i + 1) for i, box in enumerate(ndimage.find_objects(labels))]


def shape_key(mask: np.ndarray) -> tuple:
    """A hashable key equal for two masks iff they are the same shape up to translation."""
    return mask.shape, np.packbits(mask).tobytes()
