"""prune/stats.py: hand-computed ranks and correlations, edge cases, and agreement with scipy (test-only)."""

from __future__ import annotations

import math

import pytest

from prune.stats import (argsort, betainc, correlation_pvalue, mean_and_variance, overlap_matrix,
                         paper_argsort_correlation, paper_argsort_matrix, pearson, rankdata, spearman,
                         spearman_matrix, student_t_two_sided_p, top_fraction_overlap)

EPS = 1e-14  # hand cases: a few double round-offs of values of order 1


def test_rankdata_averages_ties():
    # sorted: 5 (rank 1), 10 (rank 2), 20, 20 share ranks 3 and 4 -> 3.5 each.
    assert rankdata([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    # three-way tie at ranks 1..3 -> 2; then 4.
    assert rankdata([7, 7, 7, 9]) == [2.0, 2.0, 2.0, 4.0]
    assert rankdata([3.0, 1.0, 2.0]) == [3.0, 1.0, 2.0]


def test_spearman_hand_case_with_ties():
    # x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; y = [1, 3, 2, 4] -> ranks [1, 3, 2, 4]; both mean 2.5.
    # deviations dx = [-1.5, 0, 0, 1.5], dy = [-1.5, .5, -.5, 1.5]:
    #   Sxy = 2.25 + 2.25 = 4.5, Sxx = 4.5, Syy = 2.25 + .25 + .25 + 2.25 = 5 -> rho = 4.5 / sqrt(22.5) = 3/sqrt(10).
    # p: n = 4, df = 2, p = I_{1-rho^2}(1, 1/2) and I_x(1, b) = 1 - (1-x)^b -> p = 1 - sqrt(rho^2) = 1 - sqrt(0.9).
    rho, p = spearman([1, 2, 2, 3], [1, 3, 2, 4])
    assert abs(rho - 3 / math.sqrt(10)) < EPS
    assert abs(p - (1 - math.sqrt(0.9))) < EPS


def test_spearman_hand_case_without_ties():
    # x = [1, 2, 3], y = [1, 3, 2]: d = [0, -1, 1], sum d^2 = 2, rho = 1 - 6*2 / (3*(9-1)) = 0.5.
    # p: df = 1, p = I_{0.75}(1/2, 1/2) = (2/pi) arcsin(sqrt(0.75)) = (2/pi)(pi/3) = 2/3.
    rho, p = spearman([1, 2, 3], [1, 3, 2])
    assert abs(rho - 0.5) < EPS and abs(p - 2 / 3) < EPS


def test_edge_cases():
    assert spearman([1, 2, 3, 4], [2, 4, 6, 8]) == (1.0, 0.0)  # |rho| = 1 -> p = 0
    rho, p = spearman([1, 2, 3], [3, 2, 1])
    assert rho == -1.0 and p == 0.0
    rho, p = spearman([1, 1, 1], [1, 2, 3])  # constant input: no rank variance
    assert math.isnan(rho) and math.isnan(p)
    rho, p = spearman([1, 2], [2, 1])  # n = 2: rho defined, no degrees of freedom for p
    assert rho == -1.0 and math.isnan(p)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        spearman([1], [1])
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"y\[1\] = nan is not finite"):
        spearman([1, 2, 3], [1, float("nan"), 3])
    with pytest.raises(ValueError, match="1-D"):
        spearman([[1, 2], [3, 4]], [1, 2])
    assert math.isnan(correlation_pvalue(float("nan"), 10))


def test_betainc_closed_forms():
    for x in (0.0, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0):
        assert abs(betainc(1, 2.5, x) - (1 - (1 - x) ** 2.5)) < EPS  # I_x(1, b) = 1 - (1-x)^b
        assert abs(betainc(3, 1, x) - x ** 3) < EPS  # I_x(a, 1) = x^a
        assert abs(betainc(0.5, 0.5, x) - 2 / math.pi * math.asin(math.sqrt(x))) < EPS  # arcsine law
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        betainc(1, 1, 1.5)
    with pytest.raises(ValueError, match="a > 0 and b > 0"):
        betainc(0, 1, 0.5)


def test_student_t_matches_known_quantiles():
    # Two-sided 5% critical values: t_{0.975, df=10} = 2.228138851986274 (tables, 16 digits); for df = 1
    # (Cauchy) the quantile is exactly tan(pi * 0.475). 1e-12: the 16-digit quantile moves p by ~1e-17.
    assert abs(student_t_two_sided_p(2.228138851986274, 10) - 0.05) < 1e-12
    assert abs(student_t_two_sided_p(math.tan(math.pi * 0.475), 1) - 0.05) < 1e-12
    assert student_t_two_sided_p(0.0, 5) == 1.0 and student_t_two_sided_p(math.inf, 5) == 0.0


def test_paper_argsort_variant_hand_case():
    # x = [.3, .1, .2] -> argsort [1, 2, 0]; y = [.1, .3, .2] -> argsort [0, 2, 1].
    # Pearson of [1, 2, 0] and [0, 2, 1]: means 1, dx = [0, 1, -1], dy = [-1, 1, 0], Sxy = 1, Sxx = Syy = 2 -> 0.5.
    # The true Spearman of the scores: ranks [3, 1, 2] vs [1, 3, 2] -> exactly reversed on 2 of 3 -> -1.
    x, y = [0.3, 0.1, 0.2], [0.1, 0.3, 0.2]
    assert argsort(x) == [1, 2, 0] and argsort(y) == [0, 2, 1]
    assert abs(paper_argsort_correlation(x, y) - 0.5) < EPS
    assert abs(spearman(x, y)[0] - (-1.0)) < EPS


def test_top_fraction_overlap_hand_case():
    x = list(range(1, 11))  # top 30% (k = 3) = indices {7, 8, 9}
    assert top_fraction_overlap(x, x) == 1.0
    assert top_fraction_overlap(x, x[::-1]) == 0.0  # reversed: top = indices {0, 1, 2}
    y = [1, 2, 3, 4, 5, 6, 10, 8, 9, 7]  # top 3 values 10, 9, 8 at indices {6, 8, 7}: shares {7, 8}
    assert top_fraction_overlap(x, y) == 2 / 3
    assert overlap_matrix({"x": x, "y": y}) == [[1.0, 2 / 3], [2 / 3, 1.0]]
    with pytest.raises(ValueError, match="is empty"):
        top_fraction_overlap([1, 2, 3], [1, 2, 3], 0.2)


def test_matrices_and_summary():
    rows = {"a": [1, 2, 3, 4], "b": [1, 3, 2, 4], "c": [4, 3, 2, 1]}
    rho, p = spearman_matrix(rows)
    assert rho[0][2] == -1.0 and rho[0][0] == 1.0 and p[0][0] == 0.0
    assert abs(rho[0][1] - 0.8) < EPS and rho[0][1] == rho[1][0]  # d = [0, 1, -1, 0] -> 1 - 6*2/(4*15) = 0.8
    assert paper_argsort_matrix(rows)[1][2] == paper_argsort_correlation(rows["b"], rows["c"])
    mean, var = mean_and_variance([1.0, 2.0, 4.0, float("nan")])  # nan skipped: mean 7/3, var (16/9+1/9+25/9)/2
    assert abs(mean - 7 / 3) < EPS and abs(var - 7 / 3) < EPS
    assert math.isnan(mean_and_variance([1.0])[1])
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


# -- agreement with scipy (test-only reference) -------------------------------------------------
@pytest.mark.parametrize("n", [3, 4, 10, 57, 500, 5000])
@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(n, ties):
    np = pytest.importorskip("numpy")
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(n * 2 + ties)
    for coupling in (0.0, 0.1, 0.9):  # ~independent, weak (small p at large n), strong
        x = rng.normal(size=n)
        y = coupling * x + rng.normal(size=n)
        if ties:  # few distinct values -> many ties
            x, y = np.round(x * 2), np.round(y * 2)
        ref = scipy_stats.spearmanr(x, y)
        rho, p = spearman(x, y)
        if math.isnan(ref.statistic):  # constant after rounding (tiny n): both must say so
            assert math.isnan(rho)
            continue
        assert abs(rho - ref.statistic) < 1e-10  # float64 bound; observed ~1e-16
        assert abs(p - ref.pvalue) < 1e-8  # float64 bound; observed relative error < 1e-11
        if ref.pvalue > 1e-250:  # also relative, so tiny p-values are checked too
            assert abs(p - ref.pvalue) <= 1e-8 * ref.pvalue


def test_betainc_matches_scipy():
    np = pytest.importorskip("numpy")
    special = pytest.importorskip("scipy.special")
    rng = np.random.default_rng(7)
    cases = [(a, b, x) for a in (0.5, 1.0, 2.5, 30.0, 2499.0) for b in (0.5, 1.0, 7.0, 2499.0)
             for x in (1e-6, 0.01, 0.3, 0.5, 0.9, 0.999, 1 - 1e-6)]
    cases += [(float(a), float(b), float(x)) for a, b, x in zip(rng.uniform(0.1, 50, 30),
                                                                 rng.uniform(0.1, 50, 30), rng.uniform(0, 1, 30))]
    for a, b, x in cases:
        ref = float(special.betainc(a, b, x))
        got = betainc(a, b, x)
        # 1e-10 relative: exp(log x^a(1-x)^b/B) with lgamma terms up to ~2e4 in size keeps ~4e-12
        # relative accuracy (eps * |log term|); 1e-300 absolute where scipy underflows to ~0.
        assert abs(got - ref) <= 1e-10 * abs(ref) + 1e-300, (a, b, x, got, ref)
