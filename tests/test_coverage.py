"""Intervals checked the way a statistician checks them: simulations of known truth (seeded, 2,000 draws
per case) in which the accuracy, paired drop and mean-drop intervals must cover the truth at least 93% of
the time at every sample size, however few documents change, and the knee reader must find no knee on
straight and flat noisy curves in at least 90% of draws. Beside them, the exact interval against scipy's
beta quantiles (its textbook form) where scipy is installed, and by hand where it has a closed form."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest

from prune.inflection import knee
from prune.intervals import mean_interval, paired_drop_interval
from tasks.uncertainty import metric_interval, proportion_interval

DRAWS, FLOOR = 2000, 0.93  # >= 93% of 2,000 draws: 4 Monte-Carlo sds (0.5% each) below a 95% interval's
SIZES = (8, 50, 200)
CHANGED = (0, 2, 6, 10)


def test_exact_interval_closed_forms_and_range():
    # 0 of n: [0, 1 - (alpha/2)^(1/n)]; n of n: [(alpha/2)^(1/n), 1]; 0 of 8 is [0, 0.369]
    assert proportion_interval(0, 8) == (0.0, pytest.approx(1 - 0.025 ** (1 / 8), abs=1e-12))
    assert proportion_interval(8, 8) == (pytest.approx(0.025 ** (1 / 8), abs=1e-12), 1.0)
    assert round(proportion_interval(0, 8)[1], 3) == 0.369
    for n in (1, 8, 50):
        for k in range(n + 1):
            low, high = proportion_interval(k, n)
            assert 0.0 <= low < k / n + 1e-12 and k / n - 1e-12 < high <= 1.0 and high - low > 0
    with pytest.raises(ValueError, match="0 <= k <= n"):
        proportion_interval(3, 2)


def test_exact_interval_is_scipys_beta_quantiles():
    beta = pytest.importorskip("scipy.stats").beta
    for k, n in ((1, 8), (3, 8), (25, 50), (199, 200), (5021, 10042)):
        low, high = proportion_interval(k, n)
        # float64 bisection to 2^-64 against scipy's incomplete-beta inverse: both near machine precision
        assert low == pytest.approx(beta.ppf(0.025, k, n - k + 1), abs=1e-12)
        assert high == pytest.approx(beta.ppf(0.975, k + 1, n - k), abs=1e-12)


def test_bootstrap_interval_of_a_mean_holds_the_mean_and_scipy_agrees():
    values = [0.0, 0.5, 1.0, 0.25, 0.75, 0.6, 0.2, 0.9]
    low, high = metric_interval("mean", values)  # not 0/1: the percentile bootstrap
    assert low < sum(values) / len(values) < high
    stats = pytest.importorskip("scipy.stats")
    ref = stats.bootstrap((np.asarray(values),), np.mean, n_resamples=20000, method="percentile",
                          random_state=np.random.default_rng(0)).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.02) and high == pytest.approx(ref.high, abs=0.02)  # two seeds


@pytest.mark.parametrize("n", SIZES)
def test_accuracy_interval_covers(n):
    rng = np.random.default_rng(n)
    interval = lru_cache(None)(lambda k: proportion_interval(k, n))
    for p in (0.0, 0.05, 0.3, 0.5, 0.9, 1.0):
        ks = rng.binomial(n, p, size=DRAWS)
        covered = np.mean([interval(int(k))[0] <= p <= interval(int(k))[1] for k in ks])
        assert covered >= FLOOR, (n, p, covered)


def _paired_counts(rng, n: int, right: float, changed: float, broken_share: float) -> np.ndarray:
    """(DRAWS, 2) broken and fixed counts of n paired documents: `changed` documents are expected to
    change, a `broken_share` of them from right to wrong; the unchanged ones are right with probability
    `right` under both."""
    q10, q01 = changed / n * broken_share, changed / n * (1 - broken_share)
    probs = [right * (1 - q10 - q01), q10, q01, (1 - right) * (1 - q10 - q01)]
    return rng.multinomial(n, probs, size=DRAWS)[:, 1:3]


@lru_cache(None)
def _drop_interval(broken: int, fixed: int, n: int) -> tuple[float, float]:
    base = [1.0] * broken + [0.0] * fixed + [1.0] * ((n - broken - fixed) // 2) + [0.0] * ((n - broken - fixed + 1) // 2)
    pruned = [0.0] * broken + [1.0] * fixed + base[broken + fixed:]
    return paired_drop_interval(base, pruned)


@pytest.mark.parametrize("n", SIZES)
def test_paired_drop_interval_covers_with_few_changed_documents(n):
    rng = np.random.default_rng(100 + n)
    for changed in CHANGED:
        changed = min(changed, n)
        for broken_share in (1.0, 0.75, 0.5):
            counts = _paired_counts(rng, n, 0.7, changed, broken_share)
            truth = 100 * changed / n * (2 * broken_share - 1)
            ivs = [_drop_interval(int(b), int(f), n) for b, f in counts]
            covered = np.mean([lo - 1e-9 <= truth <= hi + 1e-9 for lo, hi in ivs])
            assert covered >= FLOOR, (n, changed, broken_share, covered)
            assert min(hi - lo for lo, hi in ivs) > 0  # never zero width, not even with no changed document


def test_mean_drop_interval_covers_over_fourteen_tasks():
    """The paper's reading: the mean drop over its 14 seen tasks, tasks of different sizes and drops."""
    rng = np.random.default_rng(7)
    sizes = [8, 50, 200, 50, 200, 8, 50, 200, 50, 200, 8, 50, 200, 50]
    for changed in CHANGED:
        shares = rng.uniform(0.5, 1.0, size=len(sizes))
        truth = np.mean([100 * min(changed, n) / n * (2 * s - 1) for n, s in zip(sizes, shares)])
        per_task = [_paired_counts(rng, n, 0.7, min(changed, n), s) for n, s in zip(sizes, shares)]
        covered = 0
        for d in range(DRAWS):
            ivs = [_drop_interval(int(c[d, 0]), int(c[d, 1]), n) for c, n in zip(per_task, sizes)]
            drops = [100 * (c[d, 0] - c[d, 1]) / n for c, n in zip(per_task, sizes)]
            low, high = mean_interval(drops, ivs)
            covered += low - 1e-9 <= truth <= high + 1e-9
        assert covered / DRAWS >= FLOOR, (changed, covered / DRAWS)


def _noisy_mean_curve(rng, truth: dict[float, float], tasks: int, n: int):
    """The mean over `tasks` tasks of n documents each at every percentage (independent draws: noisier
    in its steps than a real, paired sweep), and the standard error the run would attach to each point."""
    curve, se = {}, {}
    for x, p in truth.items():
        k = rng.binomial(n, p, size=tasks)
        ps = k / n
        curve[x] = 100 * ps.mean()
        se[x] = 100 * math.sqrt(sum(q * (1 - q) / (n - 1) for q in ps)) / tasks
    return curve, se


@pytest.mark.parametrize("shape", ["straight", "flat"])
def test_knee_reader_finds_no_knee_on_straight_and_flat_noisy_curves(shape):
    rng = np.random.default_rng(11)
    xs = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]
    truth = {x: (0.7 - 0.004 * x if shape == "straight" else 0.7) for x in xs}
    found = 0
    for _ in range(DRAWS):
        curve, se = _noisy_mean_curve(rng, truth, tasks=14, n=100)
        found += knee(curve, se) is not None
    assert 1 - found / DRAWS >= 0.90, (shape, found / DRAWS)


def test_allocation_is_the_least_cost_one_by_hand_and_by_search():
    from study.precision import allocate

    # two tasks, equal cost: n proportional to sd; sds 30 and 10, target 2 points on the mean of 2:
    # budget (2 / 1.96)^2 * 4 = sum s^2 / n with n1 = 3 n2  ->  n2 = (900 / 3 + 100) / budget
    budget = (2 / 1.959963984540054) ** 2 * 4
    n, width, reached = allocate([30.0, 10.0], [1.0, 1.0], [10_000, 10_000], 2.0)
    assert n == [math.ceil(3 * 400 / budget), math.ceil(400 / budget)] and reached and width <= 2.0
    # against a search over every feasible pair: none cheaper reaches the target
    sds, costs, caps = [40.0, 20.0], [1.0, 9.0], [400, 400]
    n, width, reached = allocate(sds, costs, caps, 4.0)
    best = min(a * costs[0] + b * costs[1] for a in range(1, 401) for b in range(1, 401)
               if 1.959963984540054 / 2 * math.sqrt(sds[0] ** 2 / a + sds[1] ** 2 / b) <= 4.0)
    assert n[0] * costs[0] + n[1] * costs[1] <= best + sum(costs)  # rounding up costs at most a unit each
    # a cap binds: the capped task is fixed and the rest re-solved; out of reach: every task at its cap
    # (budget (15 / 1.96)^2 * 4 = 234; task 0 wants 50 * 55 / 234 = 11.8 > 11; then 25 / (234 - 2500 / 11) = 3.7)
    n, _, reached = allocate([50.0, 5.0], [1.0, 1.0], [11, 10_000], 15.0)
    assert n == [11, 4] and reached
    n, width, reached = allocate([50.0, 50.0], [1.0, 1.0], [10, 10], 1.0)
    assert n == [10, 10] and not reached and width == pytest.approx(1.959963984540054 / 2 * math.sqrt(2 * 2500 / 10))
