"""Object families: gravity, moving objects until they touch a wall, cropping the largest /
smallest / unique object, counting objects into a bar, keeping the largest, hollowing and
outlining (ARC's objectness priors). Objects are 4-connected groups of non-zero cells
(``scipy.ndimage.label``); samplers place them with a free row or column between any two."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from gridlm.datamodules.synthetic.core import (
    EIGHT,
    Difficulty,
    Family,
    PairPlan,
    Params,
    colours,
    count,
    label,
    objects,
    paint,
    place,
    place_boxes,
    polyomino,
    shape_key,
    side,
    sizes,
    style,
)

DIRECTIONS = ("down", "up", "right", "left")
_TURNS = {"down": 0, "left": 1, "up": 2, "right": 3}  # np.rot90 (anticlockwise) turns that bring that side to the bottom


# --- gravity ---------------------------------------------------------------------------------


def gravity(x: np.ndarray, p: Params) -> np.ndarray:
    """Non-zero cells fall to the bottom of their column, keeping their top-to-bottom order."""
    order = np.argsort(x != 0, axis=0, kind="stable")  # per column: background rows first, then the cells in order
    return np.take_along_axis(x, order, axis=0)


def gravity_towards(x: np.ndarray, p: Params) -> np.ndarray:
    """Cells fall towards the hidden side (``down``, ``up``, ``left`` or ``right``)."""
    k = _TURNS[p["direction"]]
    return np.rot90(gravity(np.rot90(x, k), p), -k).copy()


# --- move until contact ----------------------------------------------------------------------


def _contact_params(rng: np.random.Generator, d: Difficulty) -> Params:
    mover, wall = colours(rng, 2)
    return {"mover": mover, "wall": wall}


def _contact_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d, 5), side(rng, d, 5)
    return PairPlan(h, w, h, w, count(rng, d, 1, 3))


def _contact_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """A full wall line (a row or a column) and movers on either side, each at least one cell
    away from it, in separate lanes along the wall (so none blocks another)."""
    k = int(rng.integers(4))  # build with a horizontal wall, then turn
    h, w = (plan.h, plan.w) if k % 2 == 0 else (plan.w, plan.h)
    x = np.zeros((h, w), dtype=np.int64)
    row = int(rng.integers(h))
    x[row] = p["wall"]
    lanes = np.sort(rng.choice(np.arange(1, w), size=min(plan.extra, w - 1) - 1, replace=False)) if plan.extra > 1 else []
    edges = [0, *[int(v) for v in lanes], w]
    for a, b in zip(edges[:-1], edges[1:]):
        above = row >= 2 and (row > h - 3 or rng.integers(2))
        room = row - 1 if above else h - row - 2  # rows at least one away from the wall
        if room < 1 or b - a < 1:
            continue
        m = polyomino(rng, int(rng.integers(1, 5)), min(room, 3), min(b - a, 3))
        r = int(rng.integers(0, room - m.shape[0] + 1)) + (0 if above else row + 2)
        c = a + int(rng.integers(0, b - a - m.shape[1] + 1))
        paint(x, m, (r, c), p["mover"])
    return np.rot90(x, k).copy() if k else x


def move_until_contact(x: np.ndarray, p: Params) -> np.ndarray:
    """Every object of the mover colour slides straight towards the wall (a full row or column of
    the wall colour) until it touches it. Without one wall line the grid is unchanged."""
    wall = x == p["wall"]
    rows, cols = np.nonzero(wall.all(1))[0], np.nonzero(wall.all(0))[0]
    if len(rows) + len(cols) != 1:
        return x.copy()
    k = 0 if len(rows) else 1  # turn a column wall into a row wall
    g = np.rot90(x, k)
    at = int(rows[0]) if len(rows) else int(np.nonzero((g == p["wall"]).all(1))[0][0])
    y = np.where(g == p["mover"], 0, g)
    for box, mask in objects(np.where(g == p["mover"], 1, 0)):
        top, bottom = box[0].start, box[0].stop
        shift = at - bottom if bottom <= at else at + 1 - top
        y[box[0].start + shift : box[0].stop + shift, box[1]][mask] = p["mover"]
    return np.rot90(y, -k).copy()


# --- crop an object --------------------------------------------------------------------------


def _crop_plan(which: str):
    """The output is the chosen object's box: the plan draws that object (its mask)."""

    def plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
        h, w = side(rng, d, 5), side(rng, d, 5)
        n = count(rng, d, 3 if which == "unique" else 2, max(2, ((h + 1) // 4) * ((w + 1) // 4)))
        if which == "largest":
            target = polyomino(rng, int(rng.integers(3, 10)), min(4, h - 2), min(4, w - 2))
        elif which == "smallest":
            target = polyomino(rng, int(rng.integers(1, 4)), 2, 2)
        else:
            target = polyomino(rng, int(rng.integers(2, 6)), 3, 3)
        return PairPlan(h, w, *target.shape, (n, target))

    return plan


def _crop_input(which: str):
    def sample(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
        n, target = plan.extra
        k = int(target.sum())
        if which == "largest":
            others = [polyomino(rng, int(rng.integers(1, k)), 3, 3) for _ in range(n - 1)] if k > 1 else []
        elif which == "smallest":
            others = [polyomino(rng, int(rng.integers(k + 1, k + 6)), 3, 3) for _ in range(n - 1)]
        else:
            other = polyomino(rng, int(rng.integers(2, 6)), 3, 3)
            others = [other] * (n - 1)
        masks = [target, *others]
        corners = place(rng, plan.h, plan.w, [m.shape for m in masks])
        x = np.zeros((plan.h, plan.w), dtype=np.int64)
        if corners is None:
            return x
        for m, corner in zip(masks, corners):
            paint(x, m, corner, p["colour"] if p["colour"] else int(rng.choice(p["palette"])))
        return x

    return sample


def _crop_params(rng: np.random.Generator, d: Difficulty) -> Params:
    p = style(rng)
    return {**p, "colour": int(rng.choice(p["palette"])) if rng.integers(2) else 0}  # 0: every object its own colour


def crop(which: str):
    """The box of the unique largest / smallest object, or of the object whose shape no other
    object has; the whole grid when there is no such object."""

    def rule(x: np.ndarray, p: Params) -> np.ndarray:
        found = objects(x)
        if which == "unique":
            keys = [shape_key(m) for _, m in found]
            pick = [i for i, key in enumerate(keys) if keys.count(key) == 1]
        else:
            s = [int(m.sum()) for _, m in found]
            best = (max if which == "largest" else min)(s, default=0)
            pick = [i for i, v in enumerate(s) if v == best]
        if len(pick) != 1:
            return x.copy()
        return x[found[pick[0]][0]].copy()

    return rule


def _crop_check(which: str):
    def accept(x: np.ndarray, y: np.ndarray, p: Params) -> bool:
        found = objects(x)
        if which == "unique":  # the repeated shape must really repeat and differ from the unique one
            keys = [shape_key(m) for _, m in found]
            return len(found) >= 3 and len(set(keys)) == 2
        return len(found) >= 2

    return accept


# --- count objects into a bar ----------------------------------------------------------------


def _bar_params(rng: np.random.Generator, d: Difficulty) -> Params:
    bar = colours(rng, 1)[0]
    return {**style(rng, exclude=(bar,)), "bar": bar, "vertical": bool(rng.integers(2))}


def _bar_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d, 3), side(rng, d, 3)
    n = count(rng, d, 1, max(1, ((h + 1) // 3) * ((w + 1) // 3) // 2))
    return PairPlan(h, w, *((n, 1) if p["vertical"] else (1, n)), n)


def _bar_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    masks = [polyomino(rng, int(rng.integers(1, 4)), 2, 2) for _ in range(plan.extra)]
    corners = place(rng, plan.h, plan.w, [m.shape for m in masks], tries=60)
    x = np.zeros((plan.h, plan.w), dtype=np.int64)
    for m, corner in zip(masks, corners or []):
        paint(x, m, corner, int(rng.choice(p["palette"])))
    return x


def count_bar(x: np.ndarray, p: Params) -> np.ndarray:
    """A bar of the hidden colour, one cell per object (8-connected), vertical or horizontal
    (hidden); a 1x1 background cell when there is no object."""
    n = label(x, diagonal=True)[1]
    if n == 0:
        return np.zeros((1, 1), dtype=np.int64)
    return np.full((n, 1) if p["vertical"] else (1, n), p["bar"], dtype=np.int64)


# --- keep the largest object, hollow rectangles, halos ---------------------------------------


def keep_largest(x: np.ndarray, p: Params) -> np.ndarray:
    """Only the unique largest object remains (the grid is unchanged without a unique one)."""
    labels, n = label(x)
    s = sizes(labels, n)[1:]
    if n == 0 or (s == s.max()).sum() != 1:
        return x.copy()
    return np.where(labels == int(s.argmax()) + 1, x, 0)


def _rect_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d, 3), side(rng, d, 3)
    return PairPlan(h, w, h, w, count(rng, d, 1, max(1, ((h + 1) // 4) * ((w + 1) // 4))))


def _rect_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Solid rectangles of at least 3x3 cells (so that they have an inside), one colour each."""
    boxes = [(int(rng.integers(3, min(plan.h, 6) + 1)), int(rng.integers(3, min(plan.w, 6) + 1))) for _ in range(plan.extra)]
    x = np.zeros((plan.h, plan.w), dtype=np.int64)
    for (bh, bw), (r, c) in zip(*place_boxes(rng, plan.h, plan.w, boxes)):
        x[r : r + bh, c : c + bw] = rng.choice(p["palette"])
    return x


def hollow(x: np.ndarray, p: Params) -> np.ndarray:
    """Cells of an object whose 4 neighbours are all in that object (the inside) take the hidden
    fill colour (0 = background); cells on the grid's edge are never inside."""
    labels, _ = label(x)
    pad = np.pad(labels, 1)  # (h+2, w+2): outside the grid counts as background
    inside = (labels > 0) & (pad[:-2, 1:-1] == labels) & (pad[2:, 1:-1] == labels) & (pad[1:-1, :-2] == labels) & (pad[1:-1, 2:] == labels)
    return np.where(inside, p["fill"], x)


def _hollow_params(rng: np.random.Generator, d: Difficulty) -> Params:
    fill = colours(rng, 1)[0] if rng.integers(2) else 0
    return {**style(rng, exclude=(fill,)), "fill": fill}


def halo(x: np.ndarray, p: Params) -> np.ndarray:
    """Background cells touching an object (8 neighbours) take the hidden halo colour."""
    ring = ndimage.binary_dilation(x != 0, structure=EIGHT) & (x == 0)
    return np.where(ring, p["colour"], x)


def _halo_params(rng: np.random.Generator, d: Difficulty) -> Params:
    c = colours(rng, 1)[0]
    return {**style(rng, exclude=(c,)), "colour": c}


def _halo_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    masks = [polyomino(rng, int(rng.integers(1, 6)), 3, 3) for _ in range(plan.extra)]
    shapes, corners = place_boxes(rng, plan.h, plan.w, [m.shape for m in masks])
    x = np.zeros((plan.h, plan.w), dtype=np.int64)
    for m, corner in zip(masks[: len(shapes)], corners):
        paint(x, m, corner, int(rng.choice(p["palette"])))
    return x


def _objects_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d, 3), side(rng, d, 3)
    return PairPlan(h, w, h, w, count(rng, d, 2, max(2, ((h + 1) // 4) * ((w + 1) // 4))))


def _several(x: np.ndarray, y: np.ndarray, p: Params) -> bool:
    return label(x)[1] >= 2


FAMILIES = [
    Family("gravity", gravity, doc="cells fall to the bottom of their column"),
    Family("gravity_towards", gravity_towards, lambda rng, d: {**style(rng), "direction": str(rng.choice(DIRECTIONS))},
           doc="cells fall towards a hidden side"),  # fmt: skip
    Family("move_until_contact", move_until_contact, _contact_params, _contact_plan, _contact_input, needs=5,
           doc="objects slide towards a wall line until they touch it"),  # fmt: skip
    Family("crop_largest", crop("largest"), _crop_params, _crop_plan("largest"), _crop_input("largest"), _crop_check("largest"),
           needs=5, doc="output: the box of the largest object"),  # fmt: skip
    Family("crop_smallest", crop("smallest"), _crop_params, _crop_plan("smallest"), _crop_input("smallest"), _crop_check("smallest"),
           needs=5, doc="output: the box of the smallest object"),  # fmt: skip
    Family("crop_unique", crop("unique"), _crop_params, _crop_plan("unique"), _crop_input("unique"), _crop_check("unique"),
           needs=5, doc="output: the box of the object whose shape appears once"),  # fmt: skip
    Family("count_objects", count_bar, _bar_params, _bar_plan, _bar_input, needs=3,
           doc="output: a bar of a hidden colour and orientation, one cell per object"),  # fmt: skip
    Family("keep_largest", keep_largest, plan_pair=_objects_plan, sample_input=_halo_input, accept=_several, needs=3,
           doc="everything but the largest object is erased"),  # fmt: skip
    Family("hollow_rectangles", hollow, _hollow_params, _rect_plan, _rect_input, needs=3,
           doc="the inside of every solid rectangle takes a hidden colour (or the background)"),  # fmt: skip
    Family("halo", halo, _halo_params, _rect_plan, _halo_input, needs=3,
           doc="background cells around every object take a hidden colour"),  # fmt: skip
]
