"""Colour families: colour maps and swaps, background fill, keeping or removing a colour, and
recolouring objects by their size, shape or count (ARC's colour priors)."""

from __future__ import annotations

import numpy as np

from gridlm.datamodules.synthetic.core import (
    N_COLOURS,
    Difficulty,
    Family,
    PairPlan,
    Params,
    colours,
    count,
    label,
    noise,
    objects,
    paint,
    place,
    polyomino,
    shape_key,
    side,
    sizes,
    style,
)


def _force(rng: np.random.Generator, x: np.ndarray, required) -> np.ndarray:
    """Put every colour of ``required`` on a distinct random cell (the plan leaves room)."""
    cells = rng.choice(x.size, size=len(required), replace=False)
    x.flat[cells] = required
    return x


# --- colour_map / colour_swap ----------------------------------------------------------------


def _colour_map_params(rng: np.random.Generator, d: Difficulty) -> Params:
    p = style(rng)
    perm = np.arange(N_COLOURS)
    while np.array_equal(perm[p["palette"]], p["palette"]):  # the map must change a used colour
        perm[1:] = rng.permutation(np.arange(1, N_COLOURS))  # background 0 stays 0
    return {**p, "perm": perm}


def _with_palette(plan_lo: int):
    """Plans with at least ``plan_lo`` cells, so that every required colour fits."""

    def plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
        while True:
            h, w = side(rng, d), side(rng, d)
            if h * w >= plan_lo:
                return PairPlan(h, w, h, w)

    return plan


def _palette_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Noise in which every palette colour appears, so that each demonstration shows the whole map."""
    return _force(rng, noise(rng, plan.h, plan.w, p["palette"], p["density"]), p["palette"])


def _swap_params(rng: np.random.Generator, d: Difficulty) -> Params:
    a, b = colours(rng, 2)
    others = colours(rng, int(rng.integers(0, 3)), exclude=(a, b))
    return {"palette": np.array([a, b, *others]), "density": float(rng.uniform(0.3, 0.7)), "swap": (a, b)}


def swap(x: np.ndarray, p: Params) -> np.ndarray:
    a, b = p["swap"]
    return np.where(x == a, b, np.where(x == b, a, x))


# --- background fill, keep / remove a colour -------------------------------------------------


def _colour_and_style(rng: np.random.Generator, d: Difficulty) -> Params:
    """A task colour and a palette without it."""
    c = colours(rng, 1)[0]
    return {**style(rng, exclude=(c,)), "colour": c}


def _background_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    x = noise(rng, plan.h, plan.w, p["palette"], p["density"])
    x.flat[int(rng.integers(x.size))] = 0  # some background to fill
    return x


def _chosen_in_palette(rng: np.random.Generator, d: Difficulty) -> Params:
    """A palette of 2..4 colours and one of them as the task colour."""
    p = style(rng)
    return {**p, "colour": int(rng.choice(p["palette"]))}


# --- recolour objects ------------------------------------------------------------------------


def _objects_plan(lo: int, fewest: int, box: int):
    """Shapes of at least ``lo`` a side and an object count (the knob, at least ``fewest``, at most
    what fits: about one ``box`` x ``box`` object and its margin per (box + 1)^2 cells)."""

    def plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
        h, w = side(rng, d, lo), side(rng, d, lo)
        fits = max(fewest, ((h + 1) // (box + 1)) * ((w + 1) // (box + 1)))
        return PairPlan(h, w, h, w, count(rng, d, fewest, fits))

    return plan


def _placed(rng: np.random.Generator, h: int, w: int, masks: list, keep: int) -> tuple[list, list] | None:
    """Place ``masks`` without touching, dropping trailing ones (down to ``keep``) until they fit."""
    masks = list(masks)
    corners = place(rng, h, w, [m.shape for m in masks])
    while corners is None and len(masks) > keep:
        masks.pop()
        corners = place(rng, h, w, [m.shape for m in masks])
    return None if corners is None else (masks, corners)


def _sized_objects_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Random objects of 1..6 cells in palette colours (rejected by the pair check when the
    extreme one is not unique)."""
    h, w = plan.h, plan.w
    shapes = [polyomino(rng, int(rng.integers(1, 7)), min(h, 3), min(w, 3)) for _ in range(plan.extra)]
    x = np.zeros((h, w), dtype=np.int64)
    for s, corner in zip(*(_placed(rng, h, w, shapes, 2) or ([], []))):
        paint(x, s, corner, int(rng.choice(p["palette"])))
    return x


def _recolour_extreme(which: str):
    """Recolour the unique largest (smallest) object; the grid is unchanged when it is not unique."""

    def rule(x: np.ndarray, p: Params) -> np.ndarray:
        labels, n = label(x)
        s = sizes(labels, n)[1:]
        if n == 0:
            return x.copy()
        target = s.max() if which == "largest" else s.min()
        if (s == target).sum() != 1:
            return x.copy()
        y = x.copy()
        y[labels == int(np.argmax(s == target)) + 1] = p["colour"]
        return y

    return rule


def _several_objects(x: np.ndarray, y: np.ndarray, p: Params) -> bool:
    """At least two objects (with one, "the largest" and "every object" look the same)."""
    return label(x)[1] >= 2


def _size_params(rng: np.random.Generator, d: Difficulty) -> Params:
    a, *by_size = colours(rng, 4)
    return {"colour": a, "by_size": by_size}  # objects of size 1, 2, 3 take by_size[0], [1], [2]


def _size_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Objects of the input colour, of sizes 1..3, every size at least once."""
    h, w = plan.h, plan.w
    want = [1, 2, 3] + [int(k) for k in rng.integers(1, 4, size=plan.extra - 3)]
    shapes = [polyomino(rng, k, 3, 3) for k in want]
    x = np.zeros((h, w), dtype=np.int64)
    for s, corner in zip(*(_placed(rng, h, w, shapes, 3) or ([], []))):
        paint(x, s, corner, p["colour"])
    return x


def recolour_by_size(x: np.ndarray, p: Params) -> np.ndarray:
    """Objects of 1, 2, 3 cells take the task's colours for those sizes; larger ones keep theirs."""
    labels, n = label(x)
    lut = np.zeros(n + 1, dtype=np.int64)
    s = sizes(labels, n)
    for k, c in enumerate(p["by_size"], start=1):
        lut[s == k] = c
    lut[0] = 0
    return np.where(lut[labels] > 0, lut[labels], x)


def _sizes_present(x: np.ndarray, y: np.ndarray, p: Params) -> bool:
    labels, n = label(x)
    return set(range(1, 4)) <= set(sizes(labels, n)[1:].tolist())


def _shape_params(rng: np.random.Generator, d: Difficulty) -> Params:
    cells = int(rng.integers(3, 5))
    a = polyomino(rng, cells, 2, 3)
    b = a
    while shape_key(b) == shape_key(a):
        b = polyomino(rng, cells, 2, 3)
    colour, target = colours(rng, 2)
    return {"shapes": (a, b), "colour": colour, "target": target}


def _shape_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Copies of the two task shapes in the input colour, each shape at least once."""
    kinds = [0, 1] + [int(k) for k in rng.integers(0, 2, size=plan.extra - 2)]
    masks = [p["shapes"][k] for k in kinds]
    x = np.zeros((plan.h, plan.w), dtype=np.int64)
    for m, corner in zip(*(_placed(rng, plan.h, plan.w, masks, 2) or ([], []))):
        paint(x, m, corner, p["colour"])
    return x


def recolour_by_shape(x: np.ndarray, p: Params) -> np.ndarray:
    """Objects shaped like the task's first shape (up to translation) take the target colour."""
    y = x.copy()
    key = shape_key(p["shapes"][0])
    for box, mask in objects(x):
        if shape_key(mask) == key:
            y[box][mask] = p["target"]
    return y


def _both_shapes(x: np.ndarray, y: np.ndarray, p: Params) -> bool:
    keys = {shape_key(m) for _, m in objects(x)}
    return {shape_key(s) for s in p["shapes"]} <= keys


def _count_params(rng: np.random.Generator, d: Difficulty) -> Params:
    return {"most": bool(rng.integers(2))}


def _count_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    """2 or 3 colours, each with a different number of objects (of at most 2x2 cells), the total
    within what fits the grid and the objects knob (at least 3 objects: counts 1 and 2)."""
    h, w = side(rng, d, 6), side(rng, d, 6)
    fits = max(3, min(((h + 1) // 3) * ((w + 1) // 3), max(3, d.max_objects)))
    while True:
        k = int(rng.integers(2, 4))
        counts = rng.choice(np.arange(1, 5), size=k, replace=False).tolist()
        if sum(counts) <= fits:
            return PairPlan(h, w, h, w, tuple(counts))


def _count_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Objects of 2 or 3 colours, each colour with a different number of objects."""
    counts = plan.extra
    cols = colours(rng, len(counts))
    masks, owner = [], []
    for c, m in zip(cols, counts):
        for _ in range(m):
            masks.append(polyomino(rng, int(rng.integers(1, 4)), 2, 2))
            owner.append(c)
    corners = place(rng, plan.h, plan.w, [m.shape for m in masks])
    x = np.zeros((plan.h, plan.w), dtype=np.int64)
    for m, c, corner in zip(masks, owner, corners or []):
        paint(x, m, corner, c)
    return x


def recolour_by_count(x: np.ndarray, p: Params) -> np.ndarray:
    """Every object takes the colour that has the most (or, hidden, the fewest) objects."""
    counts = {}
    for c in np.unique(x[x > 0]).tolist():
        counts[c] = label(np.where(x == c, 1, 0))[1]
    if not counts:
        return x.copy()
    pick = max(counts.values()) if p["most"] else min(counts.values())
    winners = [c for c, m in counts.items() if m == pick]
    if len(winners) != 1:
        return x.copy()
    return np.where(x > 0, winners[0], 0)


def _counts_distinct(x: np.ndarray, y: np.ndarray, p: Params) -> bool:
    return len(np.unique(x[x > 0])) >= 2


FAMILIES = [
    Family("colour_map", lambda x, p: p["perm"][x], _colour_map_params, _with_palette(4), _palette_input,
           doc="a hidden permutation of the colours (every colour it uses appears in every demo)"),  # fmt: skip
    Family("colour_swap", swap, _swap_params, _with_palette(4), _palette_input,
           doc="two hidden colours trade places; others stay"),  # fmt: skip
    Family("fill_background", lambda x, p: np.where(x == 0, p["colour"], x), _colour_and_style, sample_input=_background_input,
           doc="the background becomes a hidden colour"),  # fmt: skip
    Family("keep_colour", lambda x, p: np.where(x == p["colour"], x, 0), _chosen_in_palette, _with_palette(4), _palette_input,
           doc="only the cells of a hidden colour remain"),  # fmt: skip
    Family("remove_colour", lambda x, p: np.where(x == p["colour"], 0, x), _chosen_in_palette, _with_palette(4), _palette_input,
           doc="the cells of a hidden colour are erased"),  # fmt: skip
    Family("recolour_largest_object", _recolour_extreme("largest"), _colour_and_style, _objects_plan(5, 2, 3), _sized_objects_input,
           accept=_several_objects, needs=5, doc="the (unique) largest object takes a hidden colour"),  # fmt: skip
    Family("recolour_smallest_object", _recolour_extreme("smallest"), _colour_and_style, _objects_plan(5, 2, 3), _sized_objects_input,
           accept=_several_objects, needs=5, doc="the (unique) smallest object takes a hidden colour"),  # fmt: skip
    Family("recolour_by_size", recolour_by_size, _size_params, _objects_plan(5, 3, 3), _size_input, accept=_sizes_present,
           needs=5, doc="objects of 1, 2 and 3 cells take three hidden colours"),  # fmt: skip
    Family("recolour_by_shape", recolour_by_shape, _shape_params, _objects_plan(6, 2, 3), _shape_input, accept=_both_shapes,
           needs=6, doc="objects of one hidden shape take a hidden colour, the other shape stays"),  # fmt: skip
    Family("recolour_by_count", recolour_by_count, _count_params, _count_plan, _count_input, accept=_counts_distinct,
           needs=6, doc="all objects take the colour with the most (or, hidden, the fewest) objects"),  # fmt: skip
]
