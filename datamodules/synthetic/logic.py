"""Logic families: two equal halves split by a separator line combine cell by cell (AND, OR,
XOR, NOR, AND-NOT) into an output the size of one half (ARC's boolean priors)."""

from __future__ import annotations

import numpy as np

from gridlm.datamodules.synthetic.core import Difficulty, Family, PairPlan, Params, colours, side

OPS = {
    "and": np.logical_and,
    "or": np.logical_or,
    "xor": np.logical_xor,
    "nor": lambda a, b: ~(a | b),
    "andnot": lambda a, b: a & ~b,
}


def _logic_params(rng: np.random.Generator, d: Difficulty) -> Params:
    left, right, sep, out = colours(rng, 4)
    return {"left": left, "right": right, "separator": sep, "out": out, "stacked": bool(rng.integers(2))}


def _logic_plan(rng: np.random.Generator, d: Difficulty, p: Params) -> PairPlan:
    """Halves of hh x hw: the input is (hh, 2 hw + 1) side by side, or (2 hh + 1, hw) stacked."""
    if p["stacked"]:
        hh, hw = side(rng, d, 2, (d.max_side - 1) // 2), side(rng, d, 2)
        return PairPlan(2 * hh + 1, hw, hh, hw)
    hh, hw = side(rng, d, 2), side(rng, d, 2, (d.max_side - 1) // 2)
    return PairPlan(hh, 2 * hw + 1, hh, hw)


def _logic_input(rng: np.random.Generator, plan: PairPlan, p: Params) -> np.ndarray:
    hh, hw = plan.oh, plan.ow
    a = rng.random((hh, hw)) < rng.uniform(0.3, 0.7)
    b = rng.random((hh, hw)) < rng.uniform(0.3, 0.7)
    sep = np.full((1, hw) if p["stacked"] else (hh, 1), p["separator"], dtype=np.int64)
    parts = [np.where(a, p["left"], 0), sep, np.where(b, p["right"], 0)]
    return np.vstack(parts) if p["stacked"] else np.hstack(parts)


def _halves(x: np.ndarray, p: Params) -> tuple[np.ndarray, np.ndarray]:
    """The two halves (as booleans: non-zero) on either side of the separator line."""
    if p["stacked"]:
        mid = x.shape[0] // 2
        return x[:mid] != 0, x[mid + 1 :] != 0
    mid = x.shape[1] // 2
    return x[:, :mid] != 0, x[:, mid + 1 :] != 0


def logic(op: str):
    def rule(x: np.ndarray, p: Params) -> np.ndarray:
        a, b = _halves(x, p)
        return np.where(OPS[op](a, b), p["out"], 0).astype(np.int64)

    rule.__doc__ = f"Cells where ``{op}`` of the two halves (non-zero = true) holds take the output colour."
    return rule


def _informative(op: str):
    """The output has both colours, and both halves matter (it is not a function of one half)."""

    def accept(x: np.ndarray, y: np.ndarray, p: Params) -> bool:
        a, b = _halves(x, p)
        on = y != 0
        return bool(on.any() and not on.all() and not np.array_equal(on, a) and not np.array_equal(on, b)
                    and not np.array_equal(on, ~a) and not np.array_equal(on, ~b))  # fmt: skip

    return accept


FAMILIES = [
    Family(f"logic_{op}", logic(op), _logic_params, _logic_plan, _logic_input, _informative(op), needs=5,
           doc=f"output: {text} of the two halves split by a separator line (hidden colours, side by side or stacked)")
    for op, text in [("and", "AND"), ("or", "OR"), ("xor", "XOR"), ("nor", "NOR (neither)"), ("andnot", "left AND NOT right")]
]  # fmt: skip
