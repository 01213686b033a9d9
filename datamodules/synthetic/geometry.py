"""Geometry families: flips, rotations, transpose, translation, up- and down-scaling, tiling,
mirrored tiling and symmetry completion (ARC's geometry priors)."""

from __future__ import annotations

import numpy as np

from gridlm.datamodules.synthetic.core import (
    Difficulty,
    Family,
    PairPlan,
    Params,
    colours,
    noise,
    side,
    style,
)


def _swapped(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    """Rotations by 90 degrees and the transpose: the output swaps height and width."""
    h, w = side(rng, d), side(rng, d)
    if h * w == 1:
        w = 2
    return PairPlan(h, w, w, h)


def _at_least(lo_h: int, lo_w: int):
    def plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
        h, w = side(rng, d, lo_h), side(rng, d, lo_w)
        return PairPlan(h, w, h, w)

    return plan


# --- rotate_90: a quarter turn whose direction the task hides --------------------------------


def _rotate_90_params(rng: np.random.Generator, d: Difficulty) -> Params:
    return {**style(rng), "k": int(rng.choice([1, 3]))}  # np.rot90 quarter turns: 1 = anticlockwise, 3 = clockwise


def _not_half_turn_symmetric(x: np.ndarray, y: np.ndarray, p: Params) -> bool:
    """Clockwise and anticlockwise differ on this input (else the demo hides the direction)."""
    return not np.array_equal(x, x[::-1, ::-1])


# --- translate -------------------------------------------------------------------------------


def _translate_params(rng: np.random.Generator, d: Difficulty) -> Params:
    m = min(2, d.max_side - 1)
    shift = (0, 0)
    while shift == (0, 0):
        shift = (int(rng.integers(-m, m + 1)), int(rng.integers(-m, m + 1)))
    return {**style(rng), "shift": shift, "wrap": bool(rng.integers(2))}


def _translate_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    dy, dx = p["shift"]
    h, w = side(rng, d, abs(dy) + 1), side(rng, d, abs(dx) + 1)
    return PairPlan(h, w, h, w)


def _translate_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """Noise with a coloured cell among those the shift carries off the grid, so that every
    demonstration shows whether cells wrap around or vanish."""
    x = noise(rng, plan.h, plan.w, p["palette"], p["density"])
    dy, dx = p["shift"]
    rows = range(plan.h - dy, plan.h) if dy > 0 else range(0, -dy)
    cols = range(plan.w - dx, plan.w) if dx > 0 else range(0, -dx)
    if dy and (not dx or rng.integers(2)):
        r, c = int(rng.choice(list(rows))), int(rng.integers(plan.w))
    else:
        r, c = int(rng.integers(plan.h)), int(rng.choice(list(cols)))
    x[r, c] = rng.choice(p["palette"])
    return x


def translate(x: np.ndarray, p: Params) -> np.ndarray:
    """Shift by ``p["shift"]`` = (down, right); cells leaving the grid wrap around or are dropped."""
    dy, dx = p["shift"]
    if p["wrap"]:
        return np.roll(x, (dy, dx), axis=(0, 1))
    h, w = x.shape
    out = np.zeros_like(x)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


# --- scaling and tiling ----------------------------------------------------------------------


def _factor_params(choices: tuple[int, ...], both_one_ok: bool = False):
    """Hidden (vertical, horizontal) factors, not both 1, that fit ``max_side``."""

    def draw(rng: np.random.Generator, d: Difficulty) -> Params:
        fit = [k for k in choices if k <= d.max_side] or [1]
        while True:
            kh, kw = int(rng.choice(fit)), int(rng.choice(fit))
            if (kh, kw) != (1, 1) or both_one_ok:
                return {**style(rng), "factor": (kh, kw)}

    return draw


def _grow_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    """Output = input times the factor on each axis: inputs at most max_side // factor."""
    kh, kw = p["factor"]
    h, w = side(rng, d, 1, d.max_side // kh), side(rng, d, 1, d.max_side // kw)
    return PairPlan(h, w, h * kh, w * kw)


def upscale(x: np.ndarray, p: Params) -> np.ndarray:
    kh, kw = p["factor"]
    return np.repeat(np.repeat(x, kh, axis=0), kw, axis=1)


def _shrink_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    kh, kw = p["factor"]
    oh, ow = side(rng, d, 1, d.max_side // kh), side(rng, d, 1, d.max_side // kw)
    return PairPlan(oh * kh, ow * kw, oh, ow)


def _blocks_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """An input made of factor-sized blocks of one colour each."""
    return upscale(noise(rng, plan.oh, plan.ow, p["palette"], p["density"]), p)


def downscale(x: np.ndarray, p: Params) -> np.ndarray:
    kh, kw = p["factor"]
    return x[::kh, ::kw].copy()


def tile(x: np.ndarray, p: Params) -> np.ndarray:
    return np.tile(x, p["factor"])


def _mirror_params(rng: np.random.Generator, d: Difficulty) -> Params:
    axes = ["h", "v", "both"] if d.max_side >= 2 else ["h"]
    return {**style(rng), "axes": str(rng.choice(axes))}


def _mirror_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    kh, kw = {"h": (1, 2), "v": (2, 1), "both": (2, 2)}[p["axes"]]
    h, w = side(rng, d, 1, d.max_side // kh), side(rng, d, 1, d.max_side // kw)
    return PairPlan(h, w, h * kh, w * kw)


def mirror_tile(x: np.ndarray, p: Params) -> np.ndarray:
    """The input beside its mirror image (``h``), above it (``v``), or both (a 2x2 kaleidoscope)."""
    if p["axes"] == "h":
        return np.hstack([x, x[:, ::-1]])
    if p["axes"] == "v":
        return np.vstack([x, x[::-1]])
    top = np.hstack([x, x[:, ::-1]])
    return np.vstack([top, top[::-1]])


# --- symmetry completion ---------------------------------------------------------------------


def _symmetry_params(rng: np.random.Generator, d: Difficulty) -> Params:
    mask = colours(rng, 1)[0]
    return {**style(rng, exclude=(mask,)), "symmetry": str(rng.choice(["h", "v", "both", "rot180"])), "mask": mask}


def _symmetry_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    lo_h = 4 if p["symmetry"] in ("v", "both", "rot180") else 1
    lo_w = 4 if p["symmetry"] in ("h", "both") else 1
    h, w = side(rng, d, lo_h), side(rng, d, lo_w)
    return PairPlan(h, w, h, w)


def _symmetric(x: np.ndarray, symmetry: str) -> np.ndarray:
    """Make ``x`` symmetric by copying its top / left part onto the mirrored part."""
    h, w = x.shape
    if symmetry in ("h", "both"):
        x[:, w - w // 2 :] = x[:, : w // 2][:, ::-1]
    if symmetry in ("v", "both"):
        x[h - h // 2 :] = x[: h // 2][::-1]
    if symmetry == "rot180":
        x[h - h // 2 :] = x[: h // 2][::-1, ::-1]
        if h % 2:
            x[h // 2, w - w // 2 :] = x[h // 2, : w // 2][::-1]
    return x


def _symmetry_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    """A symmetric pattern with a rectangle of the mask colour inside one half (one quadrant for
    ``both``), so that every masked cell's mirror image is visible."""
    h, w = plan.h, plan.w
    x = _symmetric(noise(rng, h, w, p["palette"], 0.5 + p["density"] / 2), p["symmetry"])
    hh = h // 2 if p["symmetry"] in ("v", "both", "rot180") else h
    hw = w // 2 if p["symmetry"] in ("h", "both") else w
    mh, mw = int(rng.integers(1, hh + 1)), int(rng.integers(1, hw + 1))
    r, c = int(rng.integers(0, hh - mh + 1)), int(rng.integers(0, hw - mw + 1))
    if rng.integers(2):  # the mask lies in the other half as often
        r, c = (h - r - mh, c) if p["symmetry"] in ("v", "rot180") else (r, w - c - mw)
    x[r : r + mh, c : c + mw] = p["mask"]
    return x


def complete_symmetry(x: np.ndarray, p: Params) -> np.ndarray:
    """Cells of the mask colour take the colour of their mirror image (the first one not masked)."""
    y = x.copy()
    partners = {"h": [x[:, ::-1]], "v": [x[::-1]], "both": [x[:, ::-1], x[::-1], x[::-1, ::-1]], "rot180": [x[::-1, ::-1]]}
    for mirror in partners[p["symmetry"]]:
        hole = (y == p["mask"]) & (mirror != p["mask"])
        y[hole] = mirror[hole]
    return y


FAMILIES = [
    Family("flip_h", lambda x, p: x[:, ::-1].copy(), plan_pair=_at_least(1, 2), doc="mirror left-right"),
    Family("flip_v", lambda x, p: x[::-1, :].copy(), plan_pair=_at_least(2, 1), doc="mirror top-bottom"),
    Family("rotate_90", lambda x, p: np.rot90(x, p["k"]).copy(), _rotate_90_params, _swapped, accept=_not_half_turn_symmetric,
           doc="a quarter turn; the direction is hidden"),  # fmt: skip
    Family("rotate_180", lambda x, p: x[::-1, ::-1].copy(), plan_pair=_at_least(1, 2), doc="a half turn"),
    Family("transpose", lambda x, p: x.T.copy(), plan_pair=_swapped, doc="swap rows and columns"),
    Family("translate", translate, _translate_params, _translate_plan, _translate_input,
           doc="shift by a hidden (down, right) of up to 2 cells; cells wrap around or drop (hidden)"),  # fmt: skip
    Family("scale_2x", upscale, lambda rng, d: {**style(rng), "factor": (2, 2)}, _grow_plan, doc="every cell becomes a 2x2 block"),
    Family("upscale", upscale, _factor_params((1, 2, 3)), _grow_plan,
           doc="every cell becomes a kh x kw block (hidden factors 1..3, not both 1)"),  # fmt: skip
    Family("downscale", downscale, _factor_params((1, 2, 3)), _shrink_plan, _blocks_input,
           doc="an input of kh x kw blocks shrinks to one cell per block"),  # fmt: skip
    Family("tile", tile, _factor_params((1, 2, 3)), _grow_plan, doc="the input repeated th x tw times (hidden)"),
    Family("mirror_tile", mirror_tile, _mirror_params, _mirror_plan,
           doc="the input beside / above its mirror image, or a 2x2 kaleidoscope (hidden)"),  # fmt: skip
    Family("symmetry_complete", complete_symmetry, _symmetry_params, _symmetry_plan, _symmetry_input, needs=4,
           doc="a symmetric pattern (hidden symmetry) with a masked rectangle (hidden colour) restored"),  # fmt: skip
]
