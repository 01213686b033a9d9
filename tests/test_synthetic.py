"""Synthetic task families: every rule on hand-made grids, valid and informative generated tasks,
determinism of the fixed set, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from gridlm.datamodules.synthetic import FAMILIES, GROUPS, Difficulty, TaskPlan, fill_task, make_task, make_tasks, plan_task, select
from gridlm.datamodules.synthetic.lines import _ray_down
from gridlm.datamodules.synthetic.objects import gravity
from gridlm.datamodules.tasks import Task, validate_grid

GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}


def G(text: str) -> np.ndarray:
    """A grid from rows separated by ``|``; ``.`` is the background 0."""
    return np.array([[0 if ch == "." else int(ch) for ch in row] for row in text.split("|")], dtype=np.int64)


def perm(**moves: int) -> np.ndarray:
    p = np.arange(10)
    for k, v in moves.items():
        p[int(k[1:])] = v
    return p


H2, V2 = np.array([[True, True]]), np.array([[True], [True]])  # a horizontal and a vertical domino
LOGIC = {"left": 1, "right": 2, "separator": 5, "out": 3, "stacked": False}

# (family, hidden parameters, input, expected output); several cases for families with variants
CASES = [
    ("flip_h", {}, "12.|3.4", ".21|4.3"),
    ("flip_v", {}, "12|34|56", "56|34|12"),
    ("rotate_90", {"k": 1}, "12|34", "24|13"),
    ("rotate_90", {"k": 3}, "12|34", "31|42"),
    ("rotate_180", {}, "12.|..3", "3..|.21"),
    ("transpose", {}, "12|34|56", "135|246"),
    ("translate", {"shift": (1, 0), "wrap": False}, "12|34|..", "..|12|34"),
    ("translate", {"shift": (0, 1), "wrap": True}, "12.|3.4", ".12|43."),
    ("scale_2x", {"factor": (2, 2)}, "1.|.2", "11..|11..|..22|..22"),
    ("upscale", {"factor": (2, 1)}, "12", "12|12"),
    ("upscale", {"factor": (1, 3)}, "1.", "111..."),
    ("downscale", {"factor": (2, 2)}, "1122|1122|..33|..33", "12|.3"),
    ("tile", {"factor": (2, 3)}, "1.", "1.1.1.|1.1.1."),
    ("mirror_tile", {"axes": "h"}, "12", "1221"),
    ("mirror_tile", {"axes": "v"}, "1|2", "1|2|2|1"),
    ("mirror_tile", {"axes": "both"}, "12|3.", "1221|3..3|3..3|1221"),
    ("symmetry_complete", {"symmetry": "h", "mask": 5}, "1521|3..3", "1221|3..3"),
    ("symmetry_complete", {"symmetry": "both", "mask": 5}, "5..1|2332|2332|1..1", "1..1|2332|2332|1..1"),
    ("symmetry_complete", {"symmetry": "rot180", "mask": 5}, "55|..|21", "12|..|21"),
    ("colour_map", {"perm": perm(c1=2, c2=3, c3=1)}, "12|3.", "23|1."),
    ("colour_swap", {"swap": (1, 2)}, "123|21.", "213|12."),
    ("fill_background", {"colour": 6}, "1.|.2", "16|62"),
    ("keep_colour", {"colour": 2}, "123|22.", ".2.|22."),
    ("remove_colour", {"colour": 2}, "123|22.", "1.3|..."),
    ("recolour_largest_object", {"colour": 5}, "11.2|...2|3..2", "11.5|...5|3..5"),
    ("recolour_smallest_object", {"colour": 5}, "11.2|...2|3..2", "11.2|...2|5..2"),
    ("recolour_by_size", {"by_size": [4, 5, 6]}, "1.11|....|111.|....|1111", "4.55|....|666.|....|1111"),
    ("recolour_by_shape", {"shapes": (H2, V2), "target": 8}, "11.1|...1|11..", "88.1|...1|88.."),
    ("recolour_by_count", {"most": True}, "1.2|..2|2..", "2.2|..2|2.."),
    ("recolour_by_count", {"most": False}, "1.2|..2|2..", "1.1|..1|1.."),
    ("gravity", {}, "1.|.2|3.", "..|1.|32"),
    ("gravity_towards", {"direction": "left"}, "..1|2.3", "1..|23."),
    ("gravity_towards", {"direction": "up"}, "1.|.2|3.", "12|3.|.."),
    ("gravity_towards", {"direction": "right"}, "1..|2.3", "..1|.23"),
    ("move_until_contact", {"mover": 1, "wall": 2}, "1...|....|....|2222", "....|....|1...|2222"),
    ("move_until_contact", {"mover": 1, "wall": 2}, "2..1|2...|2..1", "21..|2...|21.."),
    ("move_until_contact", {"mover": 1, "wall": 2}, "222|...|.1.|11.", "222|.1.|11.|..."),
    ("crop_largest", {}, "11.2|...2|3..2", "2|2|2"),
    ("crop_smallest", {}, "11.2|...2|3..2", "3"),
    ("crop_unique", {}, "1.1.1|.....|1.11.", "11"),
    ("count_objects", {"bar": 5, "vertical": False}, "1.1|...|2..", "555"),
    ("count_objects", {"bar": 5, "vertical": True}, "1..|.1.|...|22.", "5|5"),  # diagonal cells: one object
    ("keep_largest", {}, "11.2|...2|3..2", "...2|...2|...2"),
    ("hollow_rectangles", {"fill": 0}, "111.|111.|111.", "111.|1.1.|111."),
    ("hollow_rectangles", {"fill": 4}, "2222|2222|2222|2222", "2222|2442|2442|2222"),
    ("halo", {"colour": 5}, "....|.1..|....|....", "555.|515.|555.|...."),
    ("fill_enclosed", {"fill": 4}, "11111|1..1.|11111", "11111|1441.|11111"),
    ("draw_border", {"colour": 7}, "...|.1.|...", "777|717|777"),
    ("extend_rays", {"direction": "down"}, ".1.|...|2..", ".1.|.1.|21."),
    ("extend_rays", {"direction": "horizontal"}, "...|.3.|...", "...|333|..."),
    ("extend_rays", {"direction": "up"}, "...|..4|1..", "1.4|1.4|1.."),
    ("extend_rays", {"direction": "right"}, "...|3..|.2.", "...|333|.22"),
    ("extend_rays", {"direction": "left"}, "..1|...|.2.", "111|...|22."),
    ("connect_points", {"line": 0}, "1..1|2...|....|2...", "1111|2...|2...|2..."),
    ("connect_points", {"line": 7}, "1..1|2...|....|2...", "1771|2...|7...|2..."),
    ("continue_pattern", {}, "12121|34343|12.21|34343", "12121|34343|12121|34343"),
    ("continue_pattern", {}, "123123|1....3|123123", "123123|123123|123123"),
    ("denoise", {"noise": 5}, "15.5|11..|....", "11..|11..|...."),
    ("remove_isolated", {}, "1..2|...2|3...|.4..", "...2|...2|3...|.4.."),
    ("logic_and", LOGIC, "1.5..|11522", "..|33"),
    ("logic_or", LOGIC, "1.5..|11522", "3.|33"),
    ("logic_xor", LOGIC, "1.5..|11522", "3.|.."),
    ("logic_nor", LOGIC, "1.5..|11522", ".3|.."),
    ("logic_andnot", LOGIC, "1.5..|11522", "3.|.."),
    ("logic_xor", {**LOGIC, "stacked": True}, "1.|55|22", ".3"),
]


def test_registry_and_groups():
    assert len(FAMILIES) >= 40
    assert all(name == f.name for name, f in FAMILIES.items())
    assert set(GROUP_OF) == set(FAMILIES) and sum(len(v) for v in GROUPS.values()) == len(FAMILIES)
    assert not set(GROUPS) & set(FAMILIES)  # a group name never shadows a family
    assert list(FAMILIES)[:12] == ["flip_h", "flip_v", "rotate_90", "rotate_180", "transpose", "colour_map", "translate",
                                   "gravity", "scale_2x", "recolour_largest_object", "fill_enclosed", "draw_border"]  # fmt: skip
    assert all(f.doc for f in FAMILIES.values())


def test_every_family_has_a_hand_made_case():
    assert {c[0] for c in CASES} == set(FAMILIES)


@pytest.mark.parametrize("name, params, grid, expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_on_a_hand_made_grid(name, params, grid, expected):
    x = G(grid)
    before = x.copy()
    y = FAMILIES[name].rule(x, params)
    assert np.array_equal(y, G(expected)), f"{name}\n{y}"
    assert np.array_equal(x, before), "a rule must not change its input"


def test_vectorised_gravity_and_rays_match_cell_loops():
    """Slow references: cells fall one column at a time; a ray walks down its column."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = np.where(rng.random((5, 4)) < 0.4, rng.integers(1, 10, size=(5, 4)), 0)
        fallen, rays = np.zeros_like(x), x.copy()
        for c in range(x.shape[1]):
            col = [v for v in x[:, c] if v]
            fallen[x.shape[0] - len(col) :, c] = col
            for r in range(1, x.shape[0]):
                if rays[r, c] == 0:
                    rays[r, c] = rays[r - 1, c]
        assert np.array_equal(gravity(x, {}), fallen)
        assert np.array_equal(_ray_down(x), rays)


def grids(task: Task):
    for pair in task.train + task.test:
        yield pair.input
        yield pair.output


def colours_of(*gs) -> set[int]:
    return set(np.unique(np.concatenate([g.ravel() for g in gs])).tolist())


SIZES = [Difficulty(max_side=10), Difficulty(min_side=8, max_side=12, max_objects=6), Difficulty(max_side=30, min_side=20)]


def planned(name: str, rng: np.random.Generator, d: Difficulty, n_train: int = 4) -> tuple[Task, TaskPlan]:
    plan = plan_task(FAMILIES[name], rng, d, n_train)
    return fill_task(plan, rng, f"{name}-test"), plan


@pytest.mark.parametrize("name", list(FAMILIES))
def test_generated_tasks_are_valid_and_show_their_rule(name):
    """Tasks of every family at three sizes and at the smallest max_side it supports: the
    reference rule maps every input to its output (RE-ARC's verifier check), every grid is valid,
    has its planned shape and fits max_side, no pair is the identity, inputs are distinct, and the
    test output needs no colour that neither the demonstrations' outputs nor the test input show
    (hidden colours are inferable)."""
    fam = FAMILIES[name]
    for k, d in enumerate([*SIZES, Difficulty(max_side=fam.needs)]):
        for i in range(6):
            task, plan = planned(name, np.random.default_rng([k, i]), d)
            pairs = task.train + task.test
            for p, pp in zip(pairs, plan.pairs, strict=True):
                assert np.array_equal(fam.rule(p.input, plan.params), p.output)
                assert (*p.input.shape, *p.output.shape) == pp[:4]
                assert p.input.shape != p.output.shape or not np.array_equal(p.input, p.output), task.task_id
                for g in (p.input, p.output):
                    assert np.array_equal(validate_grid(g, task.task_id), g) and g.dtype == np.int64
                    assert max(g.shape) <= d.max_side
            if k < len(SIZES):
                assert len({(p.input.shape, p.input.tobytes()) for p in pairs}) == len(pairs)
            test = task.test[0]
            assert colours_of(test.output) <= colours_of(*(p.output for p in task.train), test.input), task.task_id


def test_hidden_parameters_show_in_every_demonstration():
    d = Difficulty()
    for i in range(20):
        rng = np.random.default_rng(i)
        task = make_task("colour_map", rng)  # one fixed map, every colour it moves shown in every demo
        mapping: dict[int, int] = {}
        for pair in task.train + task.test:
            for a, b in zip(pair.input.ravel(), pair.output.ravel()):
                assert mapping.setdefault(int(a), int(b)) == b
        assert mapping.get(0, 0) == 0 and len(set(mapping.values())) == len(mapping)
        shown = [colours_of(p.input) - {0} for p in task.train]
        assert all(s == shown[0] for s in shown) and colours_of(task.test[0].input) - {0} <= shown[0]
        task, plan = planned("translate", rng, d)  # every demo carries a coloured cell over the edge
        dy, dx = plan.params["shift"]
        for p in task.train:
            h, w = p.input.shape
            leaving = np.zeros((h, w), dtype=bool)
            leaving[(np.arange(h) + dy < 0) | (np.arange(h) + dy >= h)] = True
            leaving[:, (np.arange(w) + dx < 0) | (np.arange(w) + dx >= w)] = True
            assert (p.input[leaving] != 0).any()
        task = make_task("rotate_90", rng)  # the turn's direction is visible: no input looks the same turned by 180
        assert all(not np.array_equal(p.input, p.input[::-1, ::-1]) for p in task.train)
        task = make_task("recolour_by_size", rng)  # every size (hence every hidden colour) in every demo
        assert all(len(colours_of(p.output) - {0}) == 3 for p in task.train)
        task, plan = planned("recolour_by_shape", rng, Difficulty(max_side=8))  # both shapes in every demo
        assert all(len(colours_of(p.output) - {0}) == 2 for p in task.train)


def test_scale_families_fit_max_side():
    task = make_task("scale_2x", np.random.default_rng(0), n_train=20, max_side=30)
    assert max(max(p.input.shape) for p in task.train) <= 15
    assert all(p.output.shape == (2 * p.input.shape[0], 2 * p.input.shape[1]) for p in task.train)


def test_make_tasks_is_deterministic_seed_dependent_and_prefix_stable():
    def same(a, b):
        return [t.task_id for t in a] == [t.task_id for t in b] and all(
            np.array_equal(g, h) for ta, tb in zip(a, b) for g, h in zip(grids(ta), grids(tb), strict=True)
        )

    a = make_tasks(len(FAMILIES), seed=7)
    assert same(a, make_tasks(len(FAMILIES), seed=7))
    c = make_tasks(len(FAMILIES), seed=8)
    assert sum(not np.array_equal(x.train[0].input, y.train[0].input) for x, y in zip(a, c)) >= len(a) - 4
    assert same(make_tasks(5, seed=3), make_tasks(9, seed=3)[:5])


def test_round_robin_and_selection_by_name():
    tasks = make_tasks(5, seed=0, families=["gravity", "flip_h"])
    assert [t.task_id for t in tasks] == [f"synthetic-0-0000{i}-{n}" for i, n in enumerate(["gravity", "flip_h"] * 2 + ["gravity"])]
    default = make_tasks(len(FAMILIES) + 1)
    assert [t.task_id.split("-", 3)[3] for t in default] == [*FAMILIES, next(iter(FAMILIES))]
    assert select(["-flip_h", "-logic"]) == [n for n in FAMILIES if n != "flip_h" and not n.startswith("logic_")]
    assert select(["geometry", "gravity"]) == [*GROUPS["geometry"], "gravity"]
    small = select(None, max_side=3)  # families that need larger grids are left out of "all"
    assert "flip_h" in small and "logic_and" not in small and all(FAMILIES[n].needs <= 3 for n in small)


@pytest.mark.parametrize(
    "names, error, fragment",
    [
        (["spin"], ValueError, r"unknown synthetic family 'spin'; valid: flip_h, flip_v, .* \(groups: geometry"),
        (["flip_h", "-gravity"], ValueError, "mix included and excluded names; use a,b .* or -a,-b"),
        (["-spin"], ValueError, "unknown synthetic family 'spin'"),
        ([f"-{g}" for g in GROUPS], ValueError, "leaves no family"),
        ("flip_h", TypeError, r"use \['flip_h'\]"),
        ([], ValueError, "families is empty"),
    ],
    ids=["unknown", "mixed", "unknown_excluded", "everything_excluded", "string", "empty"],
)
def test_selection_errors_are_one_line(names, error, fragment):
    with pytest.raises(error, match=fragment) as info:
        select(names)
    assert "\n" not in str(info.value)


def test_a_family_too_large_for_max_side_is_named():
    with pytest.raises(ValueError, match=r"logic_and \(needs 5\) need a larger max_side than 3"):
        select(["logic_and", "flip_h"], max_side=3)
    with pytest.raises(ValueError, match="needs max_side >= 5, got 4"):
        make_task("logic_or", np.random.default_rng(0), max_side=4)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"max_side": 1}, ValueError, "max_side=1 must be an int in 2..30"),
        ({"max_side": 31}, ValueError, "max_side=31"),
        ({"n_tasks": 0}, ValueError, "n_tasks=0 must be an int >= 1"),
        ({"seed": -1}, ValueError, "seed=-1 must be an int >= 0"),
        ({"difficulty": Difficulty(max_side=5)}, None, None),
    ],
    ids=["max_side_1", "max_side_31", "n_tasks_0", "seed_negative", "difficulty_ok"],
)
def test_make_tasks_rejects_bad_arguments(kwargs, error, fragment):
    if error is None:
        assert all(max(g.shape) <= 5 for t in make_tasks(**{"n_tasks": 3, **kwargs}) for g in grids(t))
        return
    with pytest.raises(error, match=fragment):
        make_tasks(**{"n_tasks": 2, **kwargs})


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"min_side": 5, "max_side": 4}, "min_side=5 must be in 1..max_side=4"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects=3, max_objects=2"),
        ({"min_demos": 0}, "min_demos=0"),
        ({"max_side": 2.5}, "max_side=2.5 must be an int"),
    ],
)
def test_difficulty_checks_its_knobs(kwargs, fragment):
    with pytest.raises((ValueError, TypeError), match=fragment):
        Difficulty(**kwargs)
