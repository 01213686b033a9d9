"""Line and pattern families: filling enclosed regions, borders, rays to the edge, connecting
same-colour points, continuing a periodic pattern, and two kinds of denoising."""

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
    noise,
    paint,
    place,
    place_boxes,
    polyomino,
    side,
    style,
)

# --- fill enclosed regions, draw a border ----------------------------------------------------


def _fill_params(rng: np.random.Generator, d: Difficulty) -> Params:
    wall, fill = colours(rng, 2)
    return {**style(rng, exclude=(wall, fill)), "wall": wall, "fill": fill}


def _enclosure_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d, 4), side(rng, d, 4)
    return PairPlan(h, w, h, w, count(rng, d, 1, 3))


def _enclosure_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Hollow rectangles of the wall colour (3x3 or larger) over sparse noise."""
    h, w = plan.h, plan.w
    x = noise(rng, h, w, p["palette"], p["density"] / 4)
    for _ in range(plan.extra):
        rh, rw = int(rng.integers(3, h + 1)), int(rng.integers(3, w + 1))
        r, c = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
        x[r : r + rh, c : c + rw][[0, -1], :] = p["wall"]
        x[r : r + rh, c : c + rw][:, [0, -1]] = p["wall"]
    return x


def fill_enclosed(x: np.ndarray, p: Params) -> np.ndarray:
    """Background cells not 4-connected to the grid's edge through background take the fill colour."""
    holes = ndimage.binary_fill_holes(x != 0) & (x == 0)  # holes: background not reachable from the edge
    return np.where(holes, p["fill"], x)


def draw_border(x: np.ndarray, p: Params) -> np.ndarray:
    y = x.copy()
    y[[0, -1], :] = p["colour"]
    y[:, [0, -1]] = p["colour"]
    return y


def _colour_and_style(rng: np.random.Generator, d: Difficulty) -> Params:
    c = colours(rng, 1)[0]
    return {**style(rng, exclude=(c,)), "colour": c}


# --- rays ------------------------------------------------------------------------------------

RAYS = ("down", "up", "right", "left", "vertical", "horizontal")
_TURNS = {"down": 0, "left": 1, "up": 2, "right": 3}  # np.rot90 (anticlockwise) turns that bring that side to the bottom


def _ray_down(x: np.ndarray) -> np.ndarray:
    """Every background cell takes the colour of the nearest non-zero cell above it in its column."""
    rows = np.where(x != 0, np.arange(x.shape[0])[:, None], -1)
    last = np.maximum.accumulate(rows, axis=0)  # (h, w): row of the last non-zero cell at or above
    seen = np.take_along_axis(x, np.maximum(last, 0), axis=0)
    return np.where(last >= 0, seen, 0)


def _ray(x: np.ndarray, direction: str) -> np.ndarray:
    k = _TURNS[direction]
    return np.rot90(_ray_down(np.rot90(x, k)), -k)


def extend_rays(x: np.ndarray, p: Params) -> np.ndarray:
    """Every non-zero cell shoots a ray of its colour to the edge in the hidden direction(s)
    (``vertical``: up and down, ``horizontal``: left and right). A ray stops at the next
    non-zero cell; for two directions the first of the pair wins where rays meet."""
    dirs = {"vertical": ("down", "up"), "horizontal": ("right", "left")}.get(p["direction"], (p["direction"],))
    y = x.copy()
    for direction in dirs:
        y = np.where(y == 0, _ray(x, direction), y)
    return y


def _ray_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d, 3), side(rng, d, 3)
    return PairPlan(h, w, h, w, count(rng, d, 1, min(h, w) - 2))


def _ray_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Seeds in distinct rows and columns, none on an edge a ray points at (so every ray shows)."""
    h, w = plan.h, plan.w
    n = plan.extra
    direction = p["direction"]
    r_lo = 1 if direction in ("up", "vertical") else 0
    r_hi = h - 1 if direction in ("down", "vertical") else h
    c_lo = 1 if direction in ("left", "horizontal") else 0
    c_hi = w - 1 if direction in ("right", "horizontal") else w
    rows = rng.choice(np.arange(r_lo, r_hi), size=min(n, r_hi - r_lo), replace=False)
    cols = rng.choice(np.arange(c_lo, c_hi), size=len(rows), replace=False)
    x = np.zeros((h, w), dtype=np.int64)
    x[rows, cols] = rng.choice(p["palette"], size=len(rows))
    return x


# --- connect same-colour points --------------------------------------------------------------


def connect(x: np.ndarray, p: Params) -> np.ndarray:
    """Two cells of one colour alone in their row (or column) are joined by a line over the
    background, in their colour or in the hidden line colour."""
    y = x.copy()
    for c in np.unique(x[x > 0]).tolist():
        m = x == c
        for grid, out in ((m, y), (m.T, y.T)):  # rows, then columns (y.T is a view)
            pairs = np.nonzero(grid.sum(1) == 2)[0]
            if not len(pairs):
                continue
            first = grid[pairs].argmax(1)
            last = grid.shape[1] - 1 - grid[pairs, ::-1].argmax(1)
            span = np.arange(grid.shape[1])
            between = (span > first[:, None]) & (span < last[:, None]) & (out[pairs] == 0)  # (pairs, w)
            rows = out[pairs]
            rows[between] = p["line"] or c
            out[pairs] = rows
    return y


def _connect_params(rng: np.random.Generator, d: Difficulty) -> Params:
    line = colours(rng, 1)[0] if rng.integers(2) else 0  # 0: a line takes its points' colour
    return {"line": line}


def _connect_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d, 3), side(rng, d, 3)
    return PairPlan(h, w, h, w, count(rng, d, 1, 4))


def _connect_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Pairs of points, one colour per pair, on a row or a column with a gap between them; no
    segment crosses or touches another pair's cells."""
    h, w = plan.h, plan.w
    x = np.zeros((h, w), dtype=np.int64)
    used = np.zeros((h, w), dtype=bool)
    cols = colours(rng, plan.extra, exclude=(p["line"],) if p["line"] else ())
    for c in cols:
        for _ in range(10):
            g, u = (x, used) if rng.integers(2) else (x.T, used.T)  # a row pair, or a column pair (views)
            if g.shape[1] < 3:
                continue
            r = int(rng.integers(g.shape[0]))
            a, b = np.sort(rng.choice(g.shape[1], size=2, replace=False))
            if b - a < 2 or u[max(r - 1, 0) : r + 2, a : b + 1].any():
                continue
            g[r, a] = g[r, b] = c
            u[r, a : b + 1] = True
            break
    return x


# --- periodic pattern ------------------------------------------------------------------------


def _pattern_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d, 4), side(rng, d, 4)
    return PairPlan(h, w, h, w)


def _pattern_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """A grid tiled by a random ph x pw tile (ph, pw <= 3, over 2+ colours) with a rectangle
    blanked to the background (the pair check rejects it unless the visible part fixes a tiling)."""
    h, w = plan.h, plan.w
    ph, pw = int(rng.integers(1, min(3, h // 2) + 1)), int(rng.integers(1, min(3, w // 2) + 1))
    if ph * pw == 1:
        pw = 2
    tile = rng.choice(p["palette"], size=(ph, pw))
    full = np.tile(tile, (-(-h // ph), -(-w // pw)))[:h, :w]
    mh, mw = int(rng.integers(1, h // 2 + 1)), int(rng.integers(1, w // 2 + 1))
    r, c = int(rng.integers(0, h - mh + 1)), int(rng.integers(0, w - mw + 1))
    x = full.copy()
    x[r : r + mh, c : c + mw] = 0
    return x


def continue_pattern(x: np.ndarray, p: Params) -> np.ndarray:
    """Background cells take the colour of the smallest tiling (period up to 4x4, fewest cells
    first) that every non-background cell agrees with; the grid is unchanged if none does."""
    h, w = x.shape
    for ph, pw in _PERIODS:
        if ph > h or pw > w:
            continue
        H, W = -(-h // ph) * ph, -(-w // pw) * pw
        g = np.zeros((H, W), dtype=x.dtype)
        g[:h, :w] = x
        blocks = g.reshape(H // ph, ph, W // pw, pw)  # (rows of tiles, ph, cols of tiles, pw)
        hi = blocks.max(axis=(0, 2))
        lo = np.where(blocks > 0, blocks, 10).min(axis=(0, 2))
        if (hi > 0).all() and (hi == lo).all():
            return np.tile(hi, (H // ph, W // pw))[:h, :w]
    return x.copy()


_PERIODS = sorted(((ph, pw) for ph in range(1, 5) for pw in range(1, 5)), key=lambda s: (s[0] * s[1], s))


def _restores_tiling(x: np.ndarray, y: np.ndarray, p: Params) -> bool:
    return bool((y != 0).all())  # a tiling was found: every blank cell is determined


# --- denoise ---------------------------------------------------------------------------------


def _denoise_params(rng: np.random.Generator, d: Difficulty) -> Params:
    return {"noise": colours(rng, 1)[0], "rate": float(rng.uniform(0.05, 0.15))}


def _denoise_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d, 4), side(rng, d, 4)
    return PairPlan(h, w, h, w, count(rng, d, 1, max(1, ((h + 1) // 4) * ((w + 1) // 4))))


def _denoise_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Solid rectangles (2x2 or larger, one colour each) sprinkled with cells of the noise colour."""
    boxes = [(int(rng.integers(2, min(plan.h, 5) + 1)), int(rng.integers(2, min(plan.w, 5) + 1))) for _ in range(plan.extra)]
    boxes, corners = place_boxes(rng, plan.h, plan.w, boxes)
    x = np.zeros((plan.h, plan.w), dtype=np.int64)
    for (bh, bw), (r, c), colour in zip(boxes, corners, colours(rng, len(boxes), exclude=(p["noise"],))):
        x[r : r + bh, c : c + bw] = colour
    dots = rng.random(x.shape) < p["rate"]
    dots.flat[int(rng.integers(x.size))] = True
    x[dots] = p["noise"]
    return x


def denoise(x: np.ndarray, p: Params) -> np.ndarray:
    """Noise-colour cells inside the bounding box of a colour take that colour (the first such
    colour, ascending); the others become background."""
    y = np.where(x == p["noise"], 0, x)
    noisy = x == p["noise"]
    for c in np.unique(y[y > 0]).tolist():
        rows, cols = np.nonzero((y == c).any(1))[0], np.nonzero((y == c).any(0))[0]
        box = np.zeros_like(noisy)
        box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
        fix = noisy & box & (y == 0)
        y[fix] = c
    return y


def _solid_rectangles(x: np.ndarray, y: np.ndarray, p: Params) -> bool:
    """Every colour of the output fills its bounding box (no rectangle lost an edge to noise)."""
    for c in np.unique(y[y > 0]).tolist():
        rows, cols = np.nonzero((y == c).any(1))[0], np.nonzero((y == c).any(0))[0]
        if (y == c).sum() != (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1):
            return False
    return True


def remove_isolated(x: np.ndarray, p: Params) -> np.ndarray:
    """Non-zero cells with no non-zero neighbour (8 neighbours) are erased."""
    nz = x != 0
    neighbours = ndimage.convolve(nz.astype(np.int64), EIGHT.astype(np.int64), mode="constant") - nz
    return np.where(nz & (neighbours == 0), 0, x)


def _isolated_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    h, w = side(rng, d, 4), side(rng, d, 4)
    return PairPlan(h, w, h, w, count(rng, d, 1, max(1, ((h + 1) // 4) * ((w + 1) // 4))))


def _isolated_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Objects of 2+ cells and single stray cells, in the task's palette."""
    x = noise(rng, plan.h, plan.w, p["palette"], p["density"] / 3)
    masks = [polyomino(rng, int(rng.integers(2, 7)), 3, 3) for _ in range(plan.extra)]
    for m, corner in zip(masks, place(rng, plan.h, plan.w, [m.shape for m in masks]) or []):
        paint(x, m, corner, int(rng.choice(p["palette"])))
    return x


FAMILIES = [
    Family("fill_enclosed", fill_enclosed, _fill_params, _enclosure_plan, _enclosure_input, needs=4,
           doc="background enclosed by walls takes a hidden colour"),  # fmt: skip
    Family("draw_border", draw_border, _colour_and_style, doc="the grid's outermost cells take a hidden colour"),
    Family("extend_rays", extend_rays, lambda rng, d: {**style(rng), "direction": str(rng.choice(RAYS))}, _ray_plan, _ray_input,
           needs=3, doc="single cells shoot rays to the edge in a hidden direction (or both ways)"),  # fmt: skip
    Family("connect_points", connect, _connect_params, _connect_plan, _connect_input, needs=3,
           doc="two same-colour cells on a row or column are joined (in their colour or a hidden one)"),  # fmt: skip
    Family("continue_pattern", continue_pattern, plan_pair=_pattern_plan, sample_input=_pattern_input, accept=_restores_tiling,
           needs=4, doc="a periodic tiling with a blanked rectangle is completed"),  # fmt: skip
    Family("denoise", denoise, _denoise_params, _denoise_plan, _denoise_input, _solid_rectangles, needs=4,
           doc="cells of a hidden noise colour are removed from solid rectangles and background"),  # fmt: skip
    Family("remove_isolated", remove_isolated, plan_pair=_isolated_plan, sample_input=_isolated_input, needs=4,
           doc="cells with no non-zero neighbour are erased"),  # fmt: skip
]
