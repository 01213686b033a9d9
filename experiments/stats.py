"""Statistics of a study: intervals over seeds, a paired bootstrap over tasks, verdicts, power.

- **Over seeds** (:func:`over_seeds`): mean, sample standard deviation and the 95% Student-t
  interval ``mean ± t(0.975, n-1) * s / sqrt(n)`` of one metric over a variant's seeds
  (``scipy.stats.t``). It covers training randomness; with 2 seeds ``t = 12.7``, so it is wide.
- **Paired against a baseline** (:func:`paired_bootstrap`): per-example differences
  ``variant - baseline`` on the *same* validation examples (same seed, task id and test
  index), pooled over seeds and summed per task. The estimate is their mean over examples; its
  95% interval is a bootstrap that resamples **tasks**, not examples (``scipy.stats.bootstrap``
  with ``paired=True`` over the per-task sums and counts, BCa; Efron & Tibshirani 1993, ch. 14).
  Examples of one task share a rule and demonstrations, so they are not independent;
  resampling them one by one would give an interval that is too narrow (the cluster
  bootstrap, Davison & Hinkley 1997, sec. 3.8). It covers the choice of validation tasks, not
  training randomness (that is the seed interval's job).
- **Verdict** (:func:`verdict`): ``better`` / ``worse`` when the interval excludes zero on one
  side, else ``no detectable difference``.
- **Power** (:func:`n_for_power`): how many units (tasks, or seeds) a difference of the observed
  size needs to be detected with 80% power by a two-sided paired t-test at alpha = 0.05, from
  the noncentral t distribution (``scipy.stats.nct``; Cohen 1988, ch. 2), with the effect size
  ``d_z = mean / sd`` of the per-unit differences.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95  # every interval of a study report
POWER = 0.8  # target power of the sample-size estimates
ALPHA = 0.05  # two-sided test level of the sample-size estimates
N_RESAMPLES = 9999  # bootstrap resamples (scipy's default)
_TINY = 1e-12  # relative spread below which values are equal up to rounding
BETTER, WORSE, SAME = "better", "worse", "no detectable difference"


# ---------------------------------------------------------------------- over seeds
@dataclass(frozen=True)
class SeedStats:
    """One metric of one variant over its seeds."""

    n: int  # seeds with a finite value
    mean: Optional[float]  # None without values
    std: Optional[float]  # sample standard deviation (ddof 1); None below 2 seeds
    lo: Optional[float]  # 95% Student-t interval; None below 2 seeds
    hi: Optional[float]


def finite(values: Iterable[Optional[float]]) -> list[float]:
    """The finite values of ``values`` as floats (None, NaN and inf dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def over_seeds(values: Iterable[Optional[float]], confidence: float = CONFIDENCE) -> SeedStats:
    """Mean, std and the Student-t interval of the finite ``values`` (one per seed)."""
    x = np.asarray(finite(values), dtype=float)
    n = len(x)
    if n == 0:
        return SeedStats(0, None, None, None, None)
    mean = float(x.mean())
    if n == 1:
        return SeedStats(1, mean, None, None, None)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return SeedStats(n, mean, 0.0, mean, mean)
    lo, hi = stats.t.interval(confidence, df=n - 1, loc=mean, scale=std / math.sqrt(n))
    return SeedStats(n, mean, std, float(lo), float(hi))


def t_band(y: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t interval over axis 0 of ``y`` (seeds, points), NaNs ignored per point;
    the band is NaN where fewer than 2 seeds have a value."""
    y = np.asarray(y, dtype=float)  # (seeds, points)
    n = np.sum(np.isfinite(y), axis=0)  # (points,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns and n < 2
        mean = np.nanmean(y, axis=0)
        sem = np.nanstd(y, axis=0, ddof=1) / np.sqrt(n)
    half = np.where(n >= 2, stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)) * sem, np.nan)
    return mean, mean - half, mean + half


# ---------------------------------------------------------------------- paired over tasks
@dataclass(frozen=True)
class Paired:
    """A variant against the baseline on one metric, over the examples both evaluated."""

    metric: str  # e.g. "exact_match", "loss"
    higher_is_better: bool
    estimate: Optional[float]  # mean per-example difference, variant - baseline
    lo: Optional[float]  # 95% bootstrap interval over tasks (None: fewer than 2 tasks)
    hi: Optional[float]
    method: str  # "BCa", "percentile" (BCa degenerate), "exact" (every task's mean equal), ""
    n_examples: int  # paired examples, all seeds together
    n_tasks: int  # distinct tasks among them (the resampling unit)
    n_seeds: int  # seeds paired
    tasks_needed: Optional[int]  # tasks for 80% power at the observed effect (None: no effect)
    verdict: str

    @property
    def crosses_zero(self) -> bool:
        return self.lo is None or self.hi is None or self.lo <= 0.0 <= self.hi


def verdict(lo: Optional[float], hi: Optional[float], higher_is_better: bool) -> str:
    """``better`` / ``worse`` when the interval of ``variant - baseline`` excludes zero."""
    if lo is None or hi is None:
        return SAME
    if lo > 0.0:
        return BETTER if higher_is_better else WORSE
    if hi < 0.0:
        return WORSE if higher_is_better else BETTER
    return SAME


def _ratio(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean per-example difference of a (resampled) set of tasks: sum of sums / sum of counts."""
    return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)


def bootstrap_over_tasks(
    sums: Sequence[float], counts: Sequence[float], confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[Optional[float], Optional[float], Optional[float], str]:
    """``(estimate, lo, hi, method)`` for the mean per-example difference, resampling tasks:
    ``sums[t]`` is the sum of task t's per-example differences, ``counts[t]`` their number."""
    s, c = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    if len(s) == 0 or c.sum() == 0:
        return None, None, None, ""
    estimate = float(s.sum() / c.sum())
    if len(s) < 2:
        return estimate, None, None, ""
    means = s / c
    if np.ptp(means) <= _TINY * max(1.0, float(np.abs(means).max())):  # every task's mean difference equal: every resample gives it
        return estimate, estimate, estimate, "exact"
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((s, c), _ratio, paired=True, vectorized=True, n_resamples=n_resamples,
                              confidence_level=confidence, method="BCa", rng=rng)  # fmt: skip
        lo, hi, method = res.confidence_interval.low, res.confidence_interval.high, "BCa"
        if not (math.isfinite(lo) and math.isfinite(hi)):  # BCa needs a non-degenerate jackknife
            res = stats.bootstrap((s, c), _ratio, paired=True, vectorized=True, n_resamples=n_resamples,
                                  confidence_level=confidence, method="percentile", rng=rng)  # fmt: skip
            lo, hi, method = res.confidence_interval.low, res.confidence_interval.high, "percentile"
    return estimate, float(lo), float(hi), method


def per_task(diffs: Iterable[tuple[str, float]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(task ids, sums, counts)`` of ``(task_id, difference)`` pairs (first-seen task order)."""
    index: dict[str, int] = {}
    sums: list[float] = []
    counts: list[int] = []
    for task, d in diffs:
        if task not in index:
            index[task] = len(sums)
            sums.append(0.0)
            counts.append(0)
        sums[index[task]] += d
        counts[index[task]] += 1
    return list(index), np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)


def paired_bootstrap(
    baseline: Iterable[dict], variant: Iterable[dict], metric: str, higher_is_better: bool, n_resamples: int = N_RESAMPLES
) -> Paired:
    """Pair two variants' per-example rows (dicts with ``seed``, ``task_id``, ``test_index`` and
    ``metric``; a None or NaN value is an example without that metric, e.g. not decoded) on
    ``(seed, task_id, test_index)``, and bootstrap the mean difference over tasks."""
    base = {(r["seed"], r["task_id"], r["test_index"]): r.get(metric) for r in baseline}
    diffs, seeds = [], set()
    for r in variant:
        key = (r["seed"], r["task_id"], r["test_index"])
        a, b = base.get(key), r.get(metric)
        if a is None or b is None or not (math.isfinite(float(a)) and math.isfinite(float(b))):
            continue
        diffs.append((str(r["task_id"]), float(b) - float(a)))
        seeds.add(r["seed"])
    _, sums, counts = per_task(diffs)
    estimate, lo, hi, method = bootstrap_over_tasks(sums, counts, n_resamples=n_resamples)
    means = sums / np.maximum(counts, 1)
    needed = n_for_power(effect_size(means)) if len(means) >= 2 else None
    return Paired(metric, higher_is_better, estimate, lo, hi, method, len(diffs), len(sums), len(seeds), needed,
                  verdict(lo, hi, higher_is_better))  # fmt: skip


# ---------------------------------------------------------------------- power
def effect_size(diffs: Sequence[float]) -> Optional[float]:
    """Cohen's ``d_z = mean / sd`` of paired differences (None below 2 values or with sd 0)."""
    x = np.asarray(finite(diffs), dtype=float)
    if len(x) < 2:
        return None
    sd, mean = float(x.std(ddof=1)), float(x.mean())
    return mean / sd if sd > _TINY * max(1.0, abs(mean)) else None  # equal values up to rounding: no spread


def t_test_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided one-sample (paired) t-test with ``n`` units at effect size ``d_z``:
    ``P(|T| > t_crit)`` for ``T ~ noncentral t(df = n - 1, nc = d_z * sqrt(n))``."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) * math.sqrt(n)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def n_for_power(effect: Optional[float], power: float = POWER, alpha: float = ALPHA, n_max: int = 10**8) -> Optional[int]:
    """Smallest number of units (>= 2) with :func:`t_test_power` >= ``power``; None when there is
    no effect to detect (None or 0) or it needs more than ``n_max``."""
    if effect is None or not math.isfinite(effect) or effect == 0.0:
        return None
    if t_test_power(effect, 2, alpha) >= power:
        return 2
    lo, hi = 2, 4  # power(lo) < target
    while t_test_power(effect, hi, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > n_max:
            return None
    while hi - lo > 1:  # power grows with n
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if t_test_power(effect, mid, alpha) < power else (lo, mid)
    return hi
