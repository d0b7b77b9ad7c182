"""Error bars: lm-eval's standard errors by hand, the bootstrap against an independently written one,
paired intervals by hand, and a knee interval that covers the true knee of a noisy curve."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from prune.inflection import knee_intervals
from prune.intervals import bootstrap_readings, interval_of, mean_se, paired_drop, value_se
from tasks.uncertainty import (bootstrap_stderr, decode_bits, encode_bits, mean_stderr, metric_stderr,
                               question_units)


def test_mean_stderr_is_lm_evals_formula_by_hand():
    # [1, 0, 1, 1]: mean 0.75, sample variance (3 * 0.0625 + 0.5625) / 3 = 0.25, sd 0.5, se 0.5 / 2
    assert mean_stderr([1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.25)
    assert metric_stderr("mean", [1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.25)
    assert mean_stderr([1.0]) is None  # one doc: undefined, never NaN
    # MultiRC: the metric's own groups (paragraph, question); question (0, 1) has a wrong row
    rows = [((0, 0), 1.0), ((0, 0), 1.0), ((0, 1), 1.0), ((0, 1), 0.0), ((1, 0), 1.0)]
    assert question_units(rows) == [1.0, 0.0, 1.0]
    assert metric_stderr("acc_all", rows) == pytest.approx(math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2) / math.sqrt(3))


def _python_bootstrap(f, xs, iters, seed):
    """A separately written bootstrap: Python's random.choices, the sample stddev of f over resamples."""
    rnd = random.Random(seed)
    stats = [f(rnd.choices(xs, k=len(xs))) for _ in range(iters)]
    mu = sum(stats) / iters
    return math.sqrt(sum((s - mu) ** 2 for s in stats) / (iters - 1))


def _macro_f1(pairs):
    scores = []
    for c in range(3):
        tp = sum(p == c and g == c for p, g in pairs)
        fp = sum(p == c and g != c for p, g in pairs)
        fn = sum(p != c and g == c for p, g in pairs)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / 3


def test_bootstrap_stderrs_agree_with_an_independent_bootstrap_within_monte_carlo_error():
    rng = random.Random(0)
    gold = [rng.randrange(3) for _ in range(56)]  # CB-sized
    pairs = [(g if rng.random() < 0.6 else rng.randrange(3), g) for g in gold]
    lls = [-abs(rng.gauss(3.0, 1.5)) for _ in range(300)]
    iters = 4000
    # the relative sd of a sample sd from k draws is about 1 / sqrt(2k) (1.1% at 4000); two independent
    # estimates differ by about 1.6%: 6% is four of those
    ours, ref = bootstrap_stderr("f1_macro", pairs, iters, seed=1), _python_bootstrap(_macro_f1, pairs, iters, 2)
    assert ours == pytest.approx(ref, rel=0.06)
    ppl = lambda xs: math.exp(-sum(xs) / len(xs))  # noqa: E731
    ours, ref = bootstrap_stderr("perplexity", lls, iters, seed=1), _python_bootstrap(ppl, lls, iters, 2)
    assert ours == pytest.approx(ref, rel=0.06)
    assert bootstrap_stderr("f1_macro", pairs, 100, 7) == bootstrap_stderr("f1_macro", pairs, 100, 7)  # seeded


def test_bits_round_trip_and_refuse_non_binary_values():
    assert encode_bits([1.0, 0.0, 1.0]) == "101" and list(decode_bits("101")) == [1.0, 0.0, 1.0]
    assert encode_bits([0.5]) is None


def test_paired_drop_by_hand():
    base = "1101101110"  # mean 0.7
    cell = "1001101100"  # mean 0.5; differences 0,1,0,0,0,0,0,0,1,0
    got = paired_drop(base, cell)
    d = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    se = 100 * math.sqrt(sum((x - 0.2) ** 2 for x in d) / 9) / math.sqrt(10)
    assert got["drop"] == pytest.approx(20.0) and got["se"] == pytest.approx(se) and got["n"] == 10
    # 2 of 10 broken, none fixed: exact bounds 1 - 0.025 ** (1/10) for 0 of 10, and for 2 of 10 the
    # Clopper-Pearson values (scipy's beta quantiles, checked in test_coverage.py); no correlation term
    up0, lo2, up2 = 1 - 0.025 ** 0.1, 0.0252107263, 0.5560954623
    assert got["drop_ci95"][0] == pytest.approx(100 * (0.2 - math.hypot(0.2 - lo2, up0)), abs=1e-6)
    assert got["drop_ci95"][1] == pytest.approx(100 * up2, abs=1e-6)
    assert value_se(base) == pytest.approx(100 * math.sqrt(0.7 * 0.3 * 10 / 9) / math.sqrt(10))
    assert paired_drop(base, cell[:5]) is None  # other documents: no pairing
    assert mean_se([3.0, 4.0]) == pytest.approx(2.5) and mean_se([3.0, None]) is None


def _noisy_tasks(knee_at: float, n_docs: int, seed: int) -> dict[str, dict[tuple[float, float], str]]:
    """Three tasks whose docs are right while their difficulty u_i is below p(cell): p flat (0.8, -0.1 point
    per 10%) up to knee_at, then -12 points per 10% step. Cells of one task share the docs (paired)."""
    rng = np.random.default_rng(seed)

    def p(h: float) -> float:
        return 0.8 - 0.0001 * min(h, knee_at) - 0.012 * max(h - knee_at, 0)

    out = {}
    for t in ("a", "b", "c"):
        u = rng.random(n_docs)
        out[t] = {(float(h), 0.0): encode_bits((u < p(h)).astype(float)) for h in range(0, 100, 10)}
    return out


def test_the_knee_interval_of_a_noisy_curve_covers_the_true_knee():
    from prune.inflection import knee

    per_task = _noisy_tasks(70.0, 2000, seed=3)
    readings = bootstrap_readings(per_task, lambda m: knee({c[0]: v for c, v in m.items()}), iters=200, seed=5)
    iv = interval_of(readings)
    assert iv["lo"] <= 70.0 <= iv["hi"] and iv["none_share"] == 0.0
    assert iv["hi"] - iv["lo"] <= 20  # 2000 docs per task place it within a step or two


def test_headline_intervals_read_a_sweep_tables_vectors():
    per_task = _noisy_tasks(60.0, 1500, seed=4)
    table = {"per_doc": {t: {"shots-0": {f"{h:g}": {"0": bits} for (h, _), bits in cells.items()}}
                         for t, cells in per_task.items()}}
    got = knee_intervals(table, None, None, lambda tab: sorted(tab["per_doc"]), "shots-0", 0.1, iters=100)
    assert got["heads"]["knee"]["lo"] <= 60.0 <= got["heads"]["knee"]["hi"]
    assert got["ffn"]["knee"] is None and got["both"]["knee"] is None
