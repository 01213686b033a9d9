"""Procedural ARC-style tasks: many rule families, fixed seeded sets, and a fresh-task stream.

In the spirit of RE-ARC (Hodel 2024, "Addressing the Abstraction and Reasoning Corpus via
Procedural Example Generation", arXiv 2404.07353), each *family* is a hidden-parameter sampler,
an input sampler and a reference rule; a task draws fresh hidden parameters (a colour map, a
direction, a shape, ...) that the model must infer from the demonstrations. One module per
group of priors: ``geometry``, ``colour``, ``objects``, ``lines`` (lines and patterns),
``logic``; ``core`` holds the shared samplers, ``registry`` the names, ``generate`` the task
makers, ``stream`` the training dataset. The families and options are listed in
docs/synthetic.md.

- ``make_tasks(n, seed, families, max_side)``: a fixed set (task i seeded by ``(seed, i)``).
- ``Stream(families, difficulty, seed, split)``: fresh tasks, a pure function of
  ``(seed, split, epoch, index)``; ``split="val"`` draws from a disjoint seed space.
"""

from gridlm.datamodules.synthetic.core import Difficulty, Family, PairPlan
from gridlm.datamodules.synthetic.generate import (
    MAX_TRIES,
    Stream,
    TaskPlan,
    fill_task,
    make_task,
    make_tasks,
    pair_key,
    plan_length,
    plan_task,
    sample_pair,
)
from gridlm.datamodules.synthetic.registry import FAMILIES, GROUPS, check_family, parse_spec, select

__all__ = [
    "Difficulty", "Family", "PairPlan", "MAX_TRIES", "Stream", "TaskPlan", "fill_task", "make_task", "make_tasks",
    "pair_key", "plan_length", "plan_task", "sample_pair", "FAMILIES", "GROUPS", "check_family", "parse_spec", "select",
]  # fmt: skip
