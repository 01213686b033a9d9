"""Synthetic task families: determinism, validity, and each family's defining property."""

from __future__ import annotations

import numpy as np
import pytest

from gridlm.datamodules.synthetic import FAMILIES, make_task, make_tasks
from gridlm.datamodules.tasks import Task, validate_grid

REQUIRED = [
    "flip_h",
    "flip_v",
    "rotate_90",
    "rotate_180",
    "transpose",
    "colour_map",
    "translate",
    "gravity",
    "scale_2x",
    "recolour_largest_object",
]


def flood(mask: np.ndarray, seeds: list[tuple[int, int]]) -> np.ndarray:
    """Reference 4-connected flood fill of ``mask`` from ``seeds`` (kept independent of the module)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    todo = [s for s in seeds if mask[s]]
    while todo:
        r, c = todo.pop()
        if seen[r, c]:
            continue
        seen[r, c] = True
        todo += [(r + dr, c + dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)) if 0 <= r + dr < h and 0 <= c + dc < w and mask[r + dr, c + dc]]
    return seen


def check_translate(x, y, p):
    dy, dx = p["shift"]
    h, w = x.shape
    expected = np.zeros_like(x)
    for r in range(h):
        for c in range(w):
            rr, cc = r + dy, c + dx
            if p["wrap"]:
                expected[rr % h, cc % w] = x[r, c]
            elif 0 <= rr < h and 0 <= cc < w:
                expected[rr, cc] = x[r, c]
    return np.array_equal(y, expected)


def check_gravity(x, y, p):
    for c in range(x.shape[1]):
        col = x[:, c][x[:, c] != 0]
        k = len(col)
        if not (np.array_equal(y[x.shape[0] - k :, c], col) and not y[: x.shape[0] - k, c].any()):
            return False
    return True


def check_largest(x, y, p):
    sizes = {}
    for r, c in zip(*np.nonzero(x)):
        comp = flood(x != 0, [(r, c)])
        sizes[comp.tobytes()] = comp
    largest = max(sizes.values(), key=lambda m: m.sum())
    assert sum(m.sum() == largest.sum() for m in sizes.values()) == 1, "largest object must be unique"
    return np.array_equal(y, np.where(largest, p["colour"], x))


def check_fill(x, y, p):
    h, w = x.shape
    edge = [(r, c) for r in range(h) for c in range(w) if r in (0, h - 1) or c in (0, w - 1)]
    outside = flood(x == 0, edge)
    return np.array_equal(y, np.where((x == 0) & ~outside, p["fill"], x))


def check_border(x, y, p):
    ring = np.ones_like(x, dtype=bool)
    ring[1:-1, 1:-1] = False
    return bool((y[ring] == p["colour"]).all() and np.array_equal(y[~ring], x[~ring]))


PROPERTY = {
    "flip_h": lambda x, y, p: np.array_equal(y, x[:, ::-1]),
    "flip_v": lambda x, y, p: np.array_equal(y, x[::-1]),
    "rotate_90": lambda x, y, p: p["k"] in (1, 3) and np.array_equal(y, np.rot90(x, p["k"])),
    "rotate_180": lambda x, y, p: np.array_equal(y, x[::-1, ::-1]),
    "transpose": lambda x, y, p: np.array_equal(y, x.T),
    "colour_map": lambda x, y, p: np.array_equal(y, p["perm"][x]),
    "translate": check_translate,
    "gravity": check_gravity,
    "scale_2x": lambda x, y, p: np.array_equal(y, x.repeat(2, axis=0).repeat(2, axis=1)),
    "recolour_largest_object": check_largest,
    "fill_enclosed": check_fill,
    "draw_border": check_border,
}


def grids(task: Task):
    for pair in task.train + task.test:
        yield pair.input
        yield pair.output


def same_tasks(a: list[Task], b: list[Task]) -> bool:
    return [t.task_id for t in a] == [t.task_id for t in b] and all(
        np.array_equal(g, h) for ta, tb in zip(a, b) for g, h in zip(grids(ta), grids(tb), strict=True)
    )


def test_registry_has_the_required_families_and_a_check_for_each():
    assert set(REQUIRED) <= set(FAMILIES) and len(FAMILIES) >= 10
    assert set(PROPERTY) == set(FAMILIES)
    assert all(name == family.name for name, family in FAMILIES.items())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_defining_property(name):
    rng = np.random.default_rng(123)
    for _ in range(6):  # 6 tasks, each with its own hidden parameters
        gen = FAMILIES[name](rng)
        for max_side in (2, 3, 10):
            for _ in range(4):
                x, y = gen(rng, max_side)
                assert PROPERTY[name](x, y, gen.params), f"{name} max_side={max_side}\n{x}\n{y}"


def test_colour_map_is_one_fixed_permutation_per_task():
    rng = np.random.default_rng(0)
    for _ in range(10):
        task = make_task("colour_map", rng)
        mapping = {}
        for pair in task.train + task.test:
            for a, b in zip(pair.input.ravel(), pair.output.ravel()):
                assert mapping.setdefault(int(a), int(b)) == b
        assert mapping.get(0, 0) == 0 and len(set(mapping.values())) == len(mapping)
        shown = set(np.unique(np.concatenate([p.input.ravel() for p in task.train])))
        assert set(np.unique(task.test[0].input)) <= shown  # the test needs no unseen colour


@pytest.mark.parametrize("max_side", [2, 3, 7, 30])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_makes_valid_tasks_within_max_side(name, max_side):
    task = make_task(name, np.random.default_rng(max_side), n_train=4, n_test=2, max_side=max_side)
    assert len(task.train) == 4 and len(task.test) == 2 and task.source == "synthetic"
    for grid in grids(task):
        assert np.array_equal(validate_grid(grid, task.task_id), grid) and grid.dtype == np.int64
        assert max(grid.shape) <= max_side


def test_scale_2x_inputs_fit_a_30_by_30_output():
    task = make_task("scale_2x", np.random.default_rng(0), n_train=20, max_side=30)
    assert max(max(p.input.shape) for p in task.train) <= 15
    assert all(p.output.shape == (2 * p.input.shape[0], 2 * p.input.shape[1]) for p in task.train)


def test_demonstrations_are_almost_never_identity():
    tasks = make_tasks(len(FAMILIES) * 8, seed=5)
    pairs = [p for t in tasks for p in t.train]
    same = sum(p.input.shape == p.output.shape and np.array_equal(p.input, p.output) for p in pairs)
    assert same <= len(pairs) // 50


def test_make_tasks_is_deterministic_and_seed_dependent():
    a, b = make_tasks(24, seed=7), make_tasks(24, seed=7)
    assert same_tasks(a, b)
    c = make_tasks(24, seed=8)
    assert not same_tasks(a, c)
    differ = sum(not np.array_equal(x.train[0].input, y.train[0].input) for x, y in zip(a, c))
    assert differ >= 20  # tiny grids may coincide by chance, but not most of them


def test_task_i_does_not_depend_on_n_tasks():
    assert same_tasks(make_tasks(5, seed=3), make_tasks(9, seed=3)[:5])


def test_round_robin_over_families():
    tasks = make_tasks(5, seed=0, families=["gravity", "flip_h"])
    assert [t.task_id for t in tasks] == [
        "synthetic-0-00000-gravity",
        "synthetic-0-00001-flip_h",
        "synthetic-0-00002-gravity",
        "synthetic-0-00003-flip_h",
        "synthetic-0-00004-gravity",
    ]
    default = make_tasks(len(FAMILIES) + 1)
    assert [t.task_id.split("-", 3)[3] for t in default] == [*FAMILIES, next(iter(FAMILIES))]


def test_make_task_default_id_is_deterministic():
    a = make_task("flip_h", np.random.default_rng(1))
    b = make_task("flip_h", np.random.default_rng(1))
    assert a.task_id == b.task_id and a.task_id.startswith("flip_h-") and same_tasks([a], [b])


def test_unknown_family_lists_valid_names():
    with pytest.raises(ValueError, match="unknown synthetic family 'spin'; valid: flip_h, flip_v,"):
        make_task("spin", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown synthetic family 'spin'") as info:
        make_tasks(3, families=["flip_h", "spin"])
    assert all(name in str(info.value) for name in FAMILIES)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"families": "flip_h"}, TypeError, "use \\['flip_h'\\]"),
        ({"families": []}, ValueError, "families is empty"),
        ({"max_side": 1}, ValueError, "max_side=1 must be an int in 2..30"),
        ({"max_side": 31}, ValueError, "max_side=31"),
        ({"n_tasks": 0}, ValueError, "n_tasks=0 must be an int >= 1"),
        ({"seed": -1}, ValueError, "seed=-1 must be an int >= 0"),
    ],
    ids=["families_str", "families_empty", "max_side_1", "max_side_31", "n_tasks_0", "seed_negative"],
)
def test_make_tasks_rejects_bad_arguments(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        make_tasks(**{"n_tasks": 2, **kwargs})
