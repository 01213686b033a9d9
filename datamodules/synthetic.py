"""Seeded procedural ARC-style task families, for tests and quick studies.

Each family is a rule with *hidden per-task parameters* (a palette, a colour permutation, a shift,
a target colour, ...). ``FAMILIES[name](rng)`` draws one task's parameters and returns a
:class:`PairGenerator`; calling it as ``gen(rng, max_side)`` gives one ``(input, output)`` pair
that follows the task's rule. Every task of a family therefore poses the same kind of puzzle
with different hidden parameters, which the model must infer from the demonstrations.

Families: flip_h, flip_v, rotate_90, rotate_180, transpose, colour_map, translate, gravity,
scale_2x, recolour_largest_object, fill_enclosed, draw_border.

``max_side`` bounds every grid of a task, outputs included (so ``scale_2x`` inputs are at most
``max_side // 2`` on a side). Generation is deterministic for a seed: ``make_tasks`` gives task i
its own generator seeded by ``(seed, i)``, so task i does not depend on ``n_tasks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from gridlm.datamodules.tasks import Pair, Task, validate_grid
from gridlm.datamodules.tokens import MAX_SIDE, N_COLOURS

MIN_SIDE = 2  # smallest sampled side (1 for scale_2x when max_side < 4)
MAX_TRIES = 20  # resamples of an input whose output would equal it (a demonstration that shows nothing)


# ---------------------------------------------------------------------------------------------
# Random grids


def _palette(rng: np.random.Generator, lo: int = 2, hi: int = 4, exclude: tuple[int, ...] = ()) -> np.ndarray:
    """A task's colours: ``lo..hi`` distinct non-zero colours, none of ``exclude``."""
    choices = np.array([c for c in range(1, N_COLOURS) if c not in exclude])
    return np.sort(rng.choice(choices, size=int(rng.integers(lo, hi + 1)), replace=False))


def _style(rng: np.random.Generator, exclude: tuple[int, ...] = ()) -> dict:
    """Hidden parameters shared by most families: the palette and the density of non-zero cells."""
    return {"palette": _palette(rng, exclude=exclude), "density": float(rng.uniform(0.2, 0.6))}


def _shape(rng: np.random.Generator, max_side: int, lo: int = MIN_SIDE) -> tuple[int, int]:
    lo = min(lo, max_side)
    return int(rng.integers(lo, max_side + 1)), int(rng.integers(lo, max_side + 1))


def _noise(rng: np.random.Generator, h: int, w: int, palette: np.ndarray, density: float) -> np.ndarray:
    """Background 0 with each cell coloured from ``palette`` with probability ``density``."""
    colours = rng.choice(palette, size=(h, w))
    return np.where(rng.random((h, w)) < density, colours, 0).astype(np.int64)


def _random_input(rng: np.random.Generator, max_side: int, p: dict) -> np.ndarray:
    return _noise(rng, *_shape(rng, max_side), p["palette"], p["density"])


def _components(grid: np.ndarray) -> np.ndarray:
    """Label the 4-connected components of non-zero cells: 0 = background, 1..n = components."""
    h, w = grid.shape
    labels = np.zeros((h, w), dtype=np.int64)
    n = 0
    for r0, c0 in zip(*np.nonzero(grid)):
        if labels[r0, c0]:
            continue
        n += 1
        labels[r0, c0] = n
        stack = [(r0, c0)]
        while stack:
            r, c = stack.pop()
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < h and 0 <= cc < w and grid[rr, cc] and not labels[rr, cc]:
                    labels[rr, cc] = n
                    stack.append((rr, cc))
    return labels


def _flood_edge(open_: np.ndarray) -> np.ndarray:
    """Cells of ``open_`` reachable from the border through ``open_`` cells (4-connectivity)."""
    padded = np.pad(open_, 1, constant_values=True)  # (h+2, w+2): a frame connects every edge cell
    return _components(padded.astype(np.int64))[1:-1, 1:-1] == 1


# ---------------------------------------------------------------------------------------------
# Family-specific inputs and rules


def _colour_map_params(rng: np.random.Generator) -> dict:
    p = _style(rng)
    perm = np.arange(N_COLOURS)
    perm[1:] = rng.permutation(np.arange(1, N_COLOURS))  # background 0 stays 0
    while np.array_equal(perm[p["palette"]], p["palette"]):  # the map must change some used colour
        perm[1:] = rng.permutation(np.arange(1, N_COLOURS))
    return {**p, "perm": perm}


def _colour_map_input(rng: np.random.Generator, max_side: int, p: dict) -> np.ndarray:
    """Noise in which every palette colour appears, so each demonstration shows the whole map."""
    grid = _random_input(rng, max_side, p)
    cells = rng.choice(grid.size, size=len(p["palette"]), replace=False)
    grid.flat[cells] = p["palette"]
    return grid


def _translate_params(rng: np.random.Generator) -> dict:
    shift = (0, 0)
    while shift == (0, 0):
        shift = (int(rng.integers(-2, 3)), int(rng.integers(-2, 3)))
    return {**_style(rng), "shift": shift, "wrap": bool(rng.integers(2))}


def _translate(x: np.ndarray, p: dict) -> np.ndarray:
    """Shift by ``p["shift"]`` = (down, right); cells leaving the grid wrap around or are dropped."""
    dy, dx = p["shift"]
    if p["wrap"]:
        return np.roll(x, (dy, dx), axis=(0, 1))
    h, w = x.shape
    out = np.zeros_like(x)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


def _gravity(x: np.ndarray, p: dict) -> np.ndarray:
    """Non-zero cells fall to the bottom of their column, keeping their top-to-bottom order."""
    out = np.zeros_like(x)
    for c in range(x.shape[1]):
        col = x[:, c][x[:, c] != 0]
        if len(col):
            out[-len(col) :, c] = col
    return out


def _scale_input(rng: np.random.Generator, max_side: int, p: dict) -> np.ndarray:
    side = max(max_side // 2, 1)
    return _noise(rng, *_shape(rng, side), p["palette"], p["density"])


def _largest_object_input(rng: np.random.Generator, max_side: int, p: dict) -> np.ndarray:
    """Noise whose largest 4-connected non-zero object is unique (resampled until it is)."""
    for _ in range(MAX_TRIES):
        grid = _noise(rng, *_shape(rng, max_side), p["palette"], 0.6 * p["density"])  # sparse: several objects
        sizes = np.bincount(_components(grid).ravel())[1:]
        if len(sizes) and (sizes == sizes.max()).sum() == 1:
            return grid
    grid = np.zeros(_shape(rng, max_side), dtype=np.int64)  # fallback: one object
    grid[0, :2] = p["palette"][0]
    return grid


def _recolour_largest(x: np.ndarray, p: dict) -> np.ndarray:
    labels = _components(x)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    out = x.copy()
    out[labels == int(sizes.argmax())] = p["colour"]
    return out


def _enclosure_input(rng: np.random.Generator, max_side: int, p: dict) -> np.ndarray:
    """1..3 hollow rectangles of the wall colour (3x3 or larger) over sparse noise."""
    h, w = _shape(rng, max_side, lo=min(3, max_side))
    grid = _noise(rng, h, w, p["palette"], p["density"] / 4)
    for _ in range(int(rng.integers(1, 4))):
        rh, rw = int(rng.integers(min(3, h), h + 1)), int(rng.integers(min(3, w), w + 1))
        r, c = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
        grid[r : r + rh, c : c + rw][[0, -1], :] = p["wall"]
        grid[r : r + rh, c : c + rw][:, [0, -1]] = p["wall"]
    return grid


def _fill_enclosed(x: np.ndarray, p: dict) -> np.ndarray:
    """Background cells not 4-connected to the grid's edge through background become ``fill``."""
    out = x.copy()
    out[(x == 0) & ~_flood_edge(x == 0)] = p["fill"]
    return out


def _draw_border(x: np.ndarray, p: dict) -> np.ndarray:
    out = x.copy()
    out[[0, -1], :] = p["colour"]
    out[:, [0, -1]] = p["colour"]
    return out


def _with_colour(key: str = "colour") -> Callable[[np.random.Generator], dict]:
    """Parameters: a task colour under ``key`` and a style whose palette avoids it."""

    def draw(rng: np.random.Generator) -> dict:
        colour = int(rng.integers(1, N_COLOURS))
        return {**_style(rng, exclude=(colour,)), key: colour}

    return draw


def _fill_params(rng: np.random.Generator) -> dict:
    wall, fill = (int(c) for c in rng.choice(np.arange(1, N_COLOURS), size=2, replace=False))
    return {**_style(rng, exclude=(wall, fill)), "wall": wall, "fill": fill}


def _rotate_90_params(rng: np.random.Generator) -> dict:
    return {**_style(rng), "k": int(rng.choice([1, 3]))}  # np.rot90 quarter turns: 1 = anticlockwise, 3 = clockwise


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Family:
    """A task family: how to draw a task's hidden parameters, its inputs, and its rule."""

    name: str
    rule: Callable[[np.ndarray, dict], np.ndarray]  # (input, params) -> output
    draw_params: Callable[[np.random.Generator], dict] = _style
    sample_input: Callable[[np.random.Generator, int, dict], np.ndarray] = _random_input  # (rng, max_side, params)

    def __call__(self, rng: np.random.Generator) -> PairGenerator:
        """Draw one task's hidden parameters; the returned generator makes that task's pairs."""
        return PairGenerator(self, self.draw_params(rng))


@dataclass(frozen=True)
class PairGenerator:
    """One task's pair source: ``gen(rng, max_side) -> (input, output)`` with ``params`` fixed."""

    family: Family
    params: dict = field(repr=False)

    def __call__(self, rng: np.random.Generator, max_side: int) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(MAX_TRIES):  # skip inputs the rule leaves unchanged (e.g. symmetric grids)
            x = self.family.sample_input(rng, max_side, self.params)
            y = self.family.rule(x, self.params)
            if x.shape != y.shape or not np.array_equal(x, y):
                break
        return x, y


_FAMILY_LIST = [
    Family("flip_h", lambda x, p: x[:, ::-1].copy()),
    Family("flip_v", lambda x, p: x[::-1, :].copy()),
    Family("rotate_90", lambda x, p: np.rot90(x, p["k"]).copy(), _rotate_90_params),
    Family("rotate_180", lambda x, p: np.rot90(x, 2).copy()),
    Family("transpose", lambda x, p: x.T.copy()),
    Family("colour_map", lambda x, p: p["perm"][x], _colour_map_params, _colour_map_input),
    Family("translate", _translate, _translate_params),
    Family("gravity", _gravity),
    Family("scale_2x", lambda x, p: np.kron(x, np.ones((2, 2), dtype=np.int64)), _style, _scale_input),
    Family("recolour_largest_object", _recolour_largest, _with_colour(), _largest_object_input),
    Family("fill_enclosed", _fill_enclosed, _fill_params, _enclosure_input),
    Family("draw_border", _draw_border, _with_colour()),
]
FAMILIES: dict[str, Family] = {f.name: f for f in _FAMILY_LIST}


def _check_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown synthetic family {name!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def _check_max_side(max_side: int) -> None:
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or not 2 <= max_side <= MAX_SIDE:
        raise ValueError(f"synthetic max_side={max_side!r} must be an int in 2..{MAX_SIDE}")


def make_task(
    family: str,
    rng: np.random.Generator,
    n_train: int = 3,
    n_test: int = 1,
    max_side: int = 10,
    task_id: str | None = None,
) -> Task:
    """One task of ``family``: fresh hidden parameters, ``n_train`` demonstrations, ``n_test`` tests.

    Every grid is checked with :func:`validate_grid`. ``task_id`` defaults to
    ``"<family>-<8 hex digits drawn from rng>"``.
    """
    fam = _check_family(family)
    _check_max_side(max_side)
    if n_train < 1 or n_test < 1:
        raise ValueError(f"make_task: n_train={n_train} and n_test={n_test} must both be >= 1")
    if task_id is None:
        task_id = f"{family}-{int(rng.integers(2**32)):08x}"
    gen = fam(rng)

    def pairs(split: str, n: int) -> list[Pair]:
        out = []
        for i in range(n):
            x, y = gen(rng, max_side)
            where = f"{task_id}: {split}[{i}]"
            out.append(Pair(validate_grid(x, f"{where}.input"), validate_grid(y, f"{where}.output")))
        return out

    return Task(task_id=task_id, train=pairs("train", n_train), test=pairs("test", n_test), source="synthetic")


def make_tasks(n_tasks: int, seed: int = 0, families: Sequence[str] | None = None, max_side: int = 10) -> list[Task]:
    """``n_tasks`` tasks, round-robin over ``families`` (default: all), deterministic for ``seed``.

    Task i uses ``families[i % len(families)]`` and its own generator seeded by ``(seed, i)``;
    its id is ``"synthetic-<seed>-<i:05d>-<family>"``.
    """
    if isinstance(families, str):
        raise TypeError(f"families must be a list of names, got the string {families!r}; use [{families!r}]")
    names = list(FAMILIES) if families is None else list(families)
    if not names:
        raise ValueError(f"families is empty; choose from {', '.join(FAMILIES)}")
    for name in names:
        _check_family(name)
    _check_max_side(max_side)
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, (int, np.integer)) or n_tasks < 1:
        raise ValueError(f"n_tasks={n_tasks!r} must be an int >= 1")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an int >= 0")
    tasks = []
    for i in range(n_tasks):
        name = names[i % len(names)]
        rng = np.random.default_rng([seed, i])
        tasks.append(make_task(name, rng, max_side=max_side, task_id=f"synthetic-{seed}-{i:05d}-{name}"))
    return tasks
