"""Tasks from families: a cheap *plan* (family, hidden parameters, every grid's shape), then the
grids. Fixed seeded sets (``make_tasks``) and the fresh-task stream (``Stream``).

Generation is deterministic: a task is a pure function of its random generator's seed, and the
plan is drawn first from that generator, so the sequence length of a task is known from the
plan alone (``Stream.lengths`` buckets an epoch without drawing a grid). Each pair's input is
redrawn (same shapes) until the pair shows the rule: the output differs from the input, the
family's ``accept`` check passes (e.g. every colour of a colour map appears), no two inputs of
a task are equal (waived after ``DISTINCT_TRIES`` draws: a 1x1 input has few values), and the
pair is not one of ``exclude`` (the validation set's test pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import numpy as np

from gridlm.datamodules.serialize import grid_token_count
from gridlm.datamodules.synthetic.core import Difficulty, Family, PairPlan, Params
from gridlm.datamodules.synthetic.registry import FAMILIES, check_family, select
from gridlm.datamodules.tasks import Pair, Task, validate_grid

MAX_TRIES = 100  # input redraws for one pair before the family is declared broken (a bug)
DISTINCT_TRIES = 50  # after these, an input may repeat one of the task's (tiny grids have few inputs)
SPLIT_KEYS = {"train": 0, "val": 1}  # disjoint seed spaces: (seed, split, epoch, index)

PairKey = tuple  # (input shape, input bytes, output shape, output bytes)


class TaskPlan(NamedTuple):
    family: Family
    params: Params
    pairs: list[PairPlan]  # demonstrations first, then the tests
    n_train: int


def pair_key(x: np.ndarray, y: np.ndarray) -> PairKey:
    return x.shape, x.tobytes(), y.shape, y.tobytes()


def plan_task(family: Family, rng: np.random.Generator, d: Difficulty, n_train: int, n_test: int = 1) -> TaskPlan:
    params = family.draw_params(rng, d)
    return TaskPlan(family, params, [family.plan_pair(rng, d, params) for _ in range(n_train + n_test)], n_train)


def plan_length(plan: TaskPlan, row_end: bool = False) -> int:
    """Tokens of the task serialized as one example (demonstrations as context, the first test
    as the query), the longest under any dihedral augmentation (as ``max_augmented_length``)."""
    shapes = [s for p in plan.pairs[: plan.n_train + 1] for s in ((p.h, p.w), (p.oh, p.ow))]
    length = 1 + sum(grid_token_count(h, w, row_end) for h, w in shapes)
    if row_end:
        length = max(length, 1 + sum(grid_token_count(w, h, row_end) for h, w in shapes))
    return length


def sample_pair(family: Family, rng: np.random.Generator, plan: PairPlan, params: Params, seen: set | None = None,
                exclude: frozenset | set | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One (input, output) pair of ``plan`` that shows the rule (see the module docstring)."""
    for attempt in range(MAX_TRIES):
        x = family.sample_input(rng, plan, params)
        if x.shape != (plan.h, plan.w):
            raise RuntimeError(f"synthetic family {family.name}: input {x.shape} differs from its plan {plan[:2]}")
        y = family.rule(x, params)
        if y.shape != (plan.oh, plan.ow) or (x.shape == y.shape and np.array_equal(x, y)):
            continue
        if family.accept is not None and not family.accept(x, y, params):
            continue
        seen_key = (x.shape, x.tobytes())
        if seen is not None and seen_key in seen and attempt < DISTINCT_TRIES:
            continue
        if exclude and pair_key(x, y) in exclude:
            continue
        if seen is not None:
            seen.add(seen_key)
        return x, y
    raise RuntimeError(f"synthetic family {family.name}: no pair showing the rule in {MAX_TRIES} draws for plan {plan[:4]}")


def fill_task(plan: TaskPlan, rng: np.random.Generator, task_id: str, exclude: frozenset | set | None = None) -> Task:
    """The grids of ``plan``; every grid checked with :func:`validate_grid`."""
    seen: set = set()
    pairs = []
    for i, pp in enumerate(plan.pairs):
        x, y = sample_pair(plan.family, rng, pp, plan.params, seen, exclude)
        split, k = ("train", i) if i < plan.n_train else ("test", i - plan.n_train)
        where = f"{task_id}: {split}[{k}]"
        pairs.append(Pair(validate_grid(x, f"{where}.input"), validate_grid(y, f"{where}.output")))
    return Task(task_id=task_id, train=pairs[: plan.n_train], test=pairs[plan.n_train :], source="synthetic")


def make_task(family: str, rng: np.random.Generator, n_train: int = 3, n_test: int = 1, max_side: int = 10,
              task_id: str | None = None, difficulty: Difficulty | None = None) -> Task:  # fmt: skip
    """One task of ``family``: fresh hidden parameters, ``n_train`` demonstrations, ``n_test`` tests.

    ``difficulty`` (default: ``Difficulty(max_side=max_side)``) bounds every grid. ``task_id``
    defaults to ``"<family>-<8 hex digits drawn from rng>"``."""
    fam = check_family(family)
    d = difficulty or Difficulty(max_side=max_side)
    if fam.needs > d.max_side:
        raise ValueError(f"synthetic family {family} needs max_side >= {fam.needs}, got {d.max_side}")
    if n_train < 1 or n_test < 1:
        raise ValueError(f"make_task: n_train={n_train} and n_test={n_test} must both be >= 1")
    if task_id is None:
        task_id = f"{family}-{int(rng.integers(2**32)):08x}"
    return fill_task(plan_task(fam, rng, d, n_train, n_test), rng, task_id)


def _check_count(name: str, value: object, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name}={value!r} must be an int >= {lo}")


def make_tasks(n_tasks: int, seed: int = 0, families: Sequence[str] | None = None, max_side: int = 10,
               difficulty: Difficulty | None = None) -> list[Task]:  # fmt: skip
    """A fixed set: ``n_tasks`` tasks, round-robin over ``families`` (default: every family that
    fits ``max_side``; ``-name`` entries exclude), 3 demonstrations and 1 test each.

    Task i uses its own generator seeded by ``(seed, i)`` (so it does not depend on
    ``n_tasks``); its id is ``"synthetic-<seed>-<i:05d>-<family>"``."""
    d = difficulty or Difficulty(max_side=max_side)
    names = select(families, d.max_side)
    _check_count("n_tasks", n_tasks, 1)
    _check_count("seed", seed, 0)
    tasks = []
    for i in range(n_tasks):
        name = names[i % len(names)]
        rng = np.random.default_rng([seed, i])
        tasks.append(make_task(name, rng, difficulty=d, task_id=f"synthetic-{seed}-{i:05d}-{name}"))
    return tasks


@dataclass(frozen=True)
class Stream:
    """Fresh tasks as a pure function of ``(seed, split, epoch, index)``.

    ``train`` draws each task's family at random; ``val`` deals families round-robin (equal
    counts per family) from a disjoint seed space. Each task has ``min_demos..max_demos``
    demonstrations and one test; a plan longer than ``max_seq_len`` loses demonstrations (down to
    one), then is redrawn with smaller grids."""

    families: tuple[str, ...]
    difficulty: Difficulty = Difficulty()
    seed: int = 0
    split: Literal["train", "val"] = "train"
    max_seq_len: int | None = None  # plans are kept to this many tokens
    row_end: bool = False  # count ROW_END tokens in the lengths

    def __post_init__(self) -> None:
        if self.split not in SPLIT_KEYS:
            raise ValueError(f"Stream split={self.split!r} must be one of {', '.join(SPLIT_KEYS)}")
        _check_count("seed", self.seed, 0)
        for name in self.families:
            check_family(name)
        if not self.families:
            raise ValueError("a synthetic stream needs at least one family")

    def _plan(self, epoch: int, index: int) -> tuple[TaskPlan, np.random.Generator]:
        rng = np.random.default_rng([self.seed, SPLIT_KEYS[self.split], epoch, index])
        k = index % len(self.families) if self.split == "val" else int(rng.integers(len(self.families)))
        family = FAMILIES[self.families[k]]
        d = self.difficulty
        n_train = int(rng.integers(d.min_demos, d.max_demos + 1))
        plan = plan_task(family, rng, d, n_train)
        for _ in range(32):
            if self.max_seq_len is None or plan_length(plan, self.row_end) <= self.max_seq_len:
                return plan, rng
            if plan.n_train > 1:
                plan = plan._replace(pairs=plan.pairs[: plan.n_train - 1] + plan.pairs[plan.n_train :], n_train=plan.n_train - 1)
                continue
            smaller = max(family.needs, d.max_side * 3 // 4)  # redraw with smaller grids
            d = replace(d, max_side=smaller, min_side=min(d.min_side, smaller))
            plan = plan_task(family, rng, d, d.min_demos)
        raise ValueError(
            f"synthetic {self.families[k]} tasks do not fit max_seq_len={self.max_seq_len} even with small grids "
            f"({plan_length(plan, self.row_end)} tokens); raise data.max_seq_len or lower synthetic_max_side"
        )

    def length(self, epoch: int, index: int) -> int:
        return plan_length(self._plan(epoch, index)[0], self.row_end)

    def lengths(self, epoch: int, n: int) -> np.ndarray:
        """Sequence lengths of tasks ``0..n-1`` of ``epoch``, from their plans (no grid drawn)."""
        return np.fromiter((self.length(epoch, i) for i in range(n)), dtype=np.int64, count=n)

    def task(self, epoch: int, index: int, exclude: frozenset | set | None = None) -> Task:
        plan, rng = self._plan(epoch, index)
        name = plan.family.name
        task_id = f"synthetic-{self.split}-{self.seed}-{epoch}-{index:06d}-{name}" if self.split == "train" else (
            f"synthetic-val-{self.seed}-{index:05d}-{name}")  # fmt: skip
        return fill_task(plan, rng, task_id, exclude)

    def tasks(self, n: int) -> list[Task]:
        """A fixed set: tasks ``0..n-1`` (of epoch 0)."""
        _check_count("n_synthetic", n, 1)
        return [self.task(0, i) for i in range(n)]
