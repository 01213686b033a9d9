"""Study statistics (gridlm.experiments.stats) on constructed data, checked against scipy and
against independent computations: seed intervals, the paired bootstrap over tasks, verdicts, power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as ss

from gridlm.experiments import stats
from gridlm.experiments.stats import BETTER, SAME, WORSE


def rows(values: dict[tuple, float | None], metric: str = "loss") -> list[dict]:
    """Per-example rows from {(seed, task, test_index): value}."""
    return [{"seed": s, "task_id": t, "test_index": i, metric: v} for (s, t, i), v in values.items()]


def clustered(rng: np.random.Generator, n_tasks: int, per_task: int, task_sd: float, example_sd: float, shift: float, seeds=(0, 1)):
    """Baseline and variant rows whose differences share a per-task effect (the clustering a task's
    examples have: one rule, one set of demonstrations) plus small per-example noise."""
    base, var = {}, {}
    for t in range(n_tasks):
        effect = shift + rng.normal(0, task_sd)
        for s in seeds:
            for i in range(per_task):
                key = (s, f"task{t:03d}", i)
                base[key] = rng.normal(1.0, 0.3)
                var[key] = base[key] + effect + rng.normal(0, example_sd)
    return rows(base), rows(var)


# ---------------------------------------------------------------------- over seeds
def test_seed_interval_is_scipys_student_t():
    values = [1.31, 1.27, 1.40, 1.22]
    got = stats.over_seeds(values)
    ci = ss.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert got.n == 4 and got.mean == pytest.approx(np.mean(values)) and got.std == pytest.approx(np.std(values, ddof=1))
    assert (got.lo, got.hi) == pytest.approx((ci.low, ci.high))
    half = 3.182446305284263 * np.std(values, ddof=1) / 2  # t(0.975, 3) from tables, sqrt(4) = 2
    assert got.hi - got.mean == pytest.approx(half)


def test_seed_interval_with_one_or_no_seeds_or_missing_values():
    assert stats.over_seeds([]).mean is None
    one = stats.over_seeds([0.5, None, float("nan")])
    assert one.n == 1 and one.mean == 0.5 and one.std is None and one.lo is None
    same = stats.over_seeds([0.25, 0.25])
    assert (same.lo, same.hi) == (0.25, 0.25)


def test_curve_band_is_the_seed_interval_at_each_point():
    y = np.array([[1.0, 2.0, 3.0], [1.5, 2.5, np.nan], [0.5, 2.2, 3.3]])  # (seeds, points)
    mean, lo, hi = stats.t_band(y)
    for j in range(3):
        s = stats.over_seeds(y[:, j])
        assert mean[j] == pytest.approx(s.mean) and (lo[j], hi[j]) == pytest.approx((s.lo, s.hi))
    mean1, lo1, _ = stats.t_band(y[:1])
    assert np.allclose(mean1, y[0]) and np.isnan(lo1).all()  # one seed: no band


# ---------------------------------------------------------------------- verdicts
@pytest.mark.parametrize(
    "lo, hi, higher, expected",
    [(0.01, 0.2, True, BETTER), (-0.2, -0.01, True, WORSE), (-0.2, -0.01, False, BETTER), (0.01, 0.2, False, WORSE),
     (-0.1, 0.1, True, SAME), (0.0, 0.1, True, SAME), (None, None, False, SAME)],
    ids=["exact-up", "exact-down", "loss-down", "loss-up", "crosses", "touches-zero", "no-interval"],
)  # fmt: skip
def test_verdict_reads_the_interval_in_the_metric_direction(lo, hi, higher, expected):
    assert stats.verdict(lo, hi, higher) == expected


def test_a_known_difference_is_detected():
    rng = np.random.default_rng(1)
    base, var = clustered(rng, n_tasks=40, per_task=3, task_sd=0.1, example_sd=0.05, shift=-0.2)  # variant 0.2 nats lower
    p = stats.paired_bootstrap(base, var, "loss", higher_is_better=False)
    assert p.verdict == BETTER and p.method == "BCa"
    assert p.hi < 0 and p.lo < -0.2 < p.hi  # excludes 0, contains the true shift
    assert (p.n_examples, p.n_tasks, p.n_seeds) == (240, 40, 2)
    assert p.estimate == pytest.approx(np.mean([v["loss"] - b["loss"] for v, b in zip(var, base)]))
    worse = stats.paired_bootstrap(var, base, "loss", higher_is_better=False)  # the other way round
    assert worse.verdict == WORSE and worse.estimate == pytest.approx(-p.estimate)


def test_exact_match_gains_are_detected_and_undecoded_examples_left_out():
    base, var = {}, {}
    for t in range(30):
        for i in range(2):
            key = (0, f"t{t}", i)
            base[key] = 0.0
            var[key] = 1.0 if (t % 3 and i == 0) else 0.0  # the variant solves 20 of the 60
    base[(0, "t0", 5)] = None  # not decoded by the baseline: not paired
    var[(0, "t0", 5)] = 1.0
    p = stats.paired_bootstrap(rows(base, "exact_match"), rows(var, "exact_match"), "exact_match", higher_is_better=True)
    assert p.n_examples == 60 and p.estimate == pytest.approx(20 / 60)
    assert p.verdict == BETTER and p.lo > 0


def test_identical_variants_give_no_detectable_difference():
    rng = np.random.default_rng(2)
    base, _ = clustered(rng, n_tasks=25, per_task=2, task_sd=0.1, example_sd=0.05, shift=0.0)
    p = stats.paired_bootstrap(base, [dict(r) for r in base], "loss", higher_is_better=False)
    assert p.verdict == SAME and (p.estimate, p.lo, p.hi) == (0.0, 0.0, 0.0) and p.method == "exact"
    assert p.tasks_needed is None  # no difference to size a study on
    # two variants that differ only by noise around the same mean
    base, var = clustered(rng, n_tasks=40, per_task=3, task_sd=0.1, example_sd=0.05, shift=0.0)
    noisy = stats.paired_bootstrap(base, var, "loss", higher_is_better=False)
    assert noisy.verdict == SAME and noisy.lo < 0 < noisy.hi


def test_pairs_are_the_same_seed_task_and_test_index():
    base = rows({(0, "a", 0): 1.0, (0, "a", 1): 2.0, (1, "a", 0): 5.0, (0, "b", 0): 3.0})
    var = rows({(0, "a", 1): 2.5, (1, "a", 0): 4.0, (0, "b", 0): 3.5, (0, "c", 0): 9.0})[::-1]  # other order, one unpaired
    p = stats.paired_bootstrap(base, var, "loss", higher_is_better=False)
    assert p.n_examples == 3 and p.n_tasks == 2 and p.n_seeds == 2
    assert p.estimate == pytest.approx((0.5 - 1.0 + 0.5) / 3)


# ---------------------------------------------------------------------- tasks are the resampling unit
def test_the_interval_resamples_tasks_as_scipy_paired_bootstrap_does():
    rng = np.random.default_rng(3)
    base, var = clustered(rng, n_tasks=30, per_task=4, task_sd=0.3, example_sd=0.02, shift=0.1, seeds=(0,))
    p = stats.paired_bootstrap(base, var, "loss", higher_is_better=False)

    # scipy directly on the per-task sums and counts, resampled together (paired=True)
    diffs = np.array([v["loss"] - b["loss"] for v, b in zip(var, base)]).reshape(30, 4)  # (tasks, examples)
    ref = ss.bootstrap((diffs.sum(1), np.full(30, 4.0)), lambda s, c, axis=-1: s.sum(axis) / c.sum(axis), paired=True,
                       vectorized=True, method="BCa", rng=np.random.default_rng(0))  # fmt: skip
    assert (p.lo, p.hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))

    # an independent percentile bootstrap over task indices agrees to a few percent of the width
    idx = np.random.default_rng(7).integers(0, 30, size=(20000, 30))  # (resamples, tasks)
    boot = diffs.mean(1)[idx].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    assert abs(p.lo - lo) < 0.1 * (hi - lo) and abs(p.hi - hi) < 0.1 * (hi - lo)

    # resampling examples instead treats 120 clustered examples as independent: ~sqrt(4) narrower
    wrong = ss.bootstrap((diffs.ravel(),), np.mean, rng=np.random.default_rng(0)).confidence_interval
    assert (p.hi - p.lo) > 1.7 * (wrong.high - wrong.low)


def test_task_resampling_keeps_its_coverage_where_example_resampling_loses_it():
    """200 constructed studies with no true difference and strongly clustered tasks: the 95%
    interval over tasks contains 0 about 95% of the time; resampling examples, far less often."""
    rng = np.random.default_rng(4)
    covered_tasks = covered_examples = 0
    trials = 200
    for _ in range(trials):
        effects = rng.normal(0, 0.3, size=20)[:, None] + rng.normal(0, 0.02, size=(20, 5))  # (tasks, examples)
        _, lo, hi, _ = stats.bootstrap_over_tasks(effects.sum(1), np.full(20, 5.0), n_resamples=999, seed=int(rng.integers(1 << 30)))
        covered_tasks += lo <= 0 <= hi
        flat = effects.ravel()
        ci = ss.bootstrap((flat,), np.mean, n_resamples=999, method="percentile", rng=rng).confidence_interval
        covered_examples += ci.low <= 0 <= ci.high
    assert covered_tasks / trials > 0.88
    assert covered_examples / trials < 0.75


# ---------------------------------------------------------------------- power
@pytest.mark.parametrize("effect, n", [(0.5, 34), (0.8, 15), (0.2, 199)], ids=["d0.5", "d0.8", "d0.2"])
def test_sample_size_matches_published_paired_t_test_tables(effect, n):
    """Two-sided one-sample / paired t-test, alpha 0.05, power 0.8 (G*Power and Cohen 1988 give
    34, 15 and 199); the normal approximation ((z_.975 + z_.8) / d)^2 is a little lower."""
    assert stats.n_for_power(effect) == n
    assert stats.n_for_power(-effect) == n
    assert stats.t_test_power(effect, n) >= 0.8 > stats.t_test_power(effect, n - 1)
    assert math.ceil(((ss.norm.ppf(0.975) + ss.norm.ppf(0.8)) / effect) ** 2) <= n


def test_power_agrees_with_simulated_t_tests():
    rng = np.random.default_rng(5)
    x = rng.normal(0.5, 1.0, size=(4000, 34))  # 4000 studies of 34 paired differences, d = 0.5
    rejected = np.mean(ss.ttest_1samp(x, 0.0, axis=1).pvalue < 0.05)
    assert rejected == pytest.approx(stats.t_test_power(0.5, 34), abs=0.025)


def test_no_effect_needs_no_sample_size():
    assert stats.n_for_power(0.0) is None and stats.n_for_power(None) is None
    assert stats.effect_size([0.1, 0.1, 0.1]) is None and stats.effect_size([1.0]) is None
    assert stats.effect_size([1.0, 3.0]) == pytest.approx(2.0 / math.sqrt(2.0))
