"""Rank statistics in plain Python: Spearman's rho with its t-test p-value, Pearson, the paper's variant.

What is computed (docs/method.md, "SRCC"):

* `spearman(x, y)`: the true Spearman rank correlation = Pearson correlation of the *ranks* of x
  and y, ties given their average rank; the two-sided p-value is scipy.stats.spearmanr's
  t-approximation, t = rho * sqrt((n-2) / (1-rho^2)) with n-2 degrees of freedom, evaluated as
  p = I_{1-rho^2}((n-2)/2, 1/2) through a regularised incomplete beta function written here
  (continued fraction, modified Lentz; log-gamma from math.lgamma).
* `paper_argsort_correlation(x, y)`: what amazon-science/llm-interpret's
  scripts/plotting/spearman_rankings.py reports as "SRCC": Pearson on the *argsort* vectors (which
  head sits at rank k), i.e. on the inverse rank permutations. It measures whether the k-th least
  important heads have nearby flat indices (mostly layer-profile agreement), not head-level
  agreement. Reported only to match the paper's figures, always labelled as such.
* `top_fraction_overlap(x, y)`: share of the top-30% (most important) heads the two rankings have
  in common.

No scipy: scipy is a test-only reference (tests/test_stats.py checks against it).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence


_LENTZ_TINY = 1e-300  # replaces a zero denominator in Lentz's method (Numerical Recipes' FPMIN idea)
_LENTZ_EPS = 1e-16  # stop when a step changes the fraction by less than one double ulp
_LENTZ_MAX_STEPS = 100_000  # a safety cap: the fraction converges in O(sqrt(max(a, b))) steps


def _floats(values: Any, name: str) -> list[float]:
    """1-D sequence / numpy array / torch tensor -> list of finite floats (ValueError otherwise)."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (list, tuple)):
            raise ValueError(f"{name} must be 1-D; element {i} is a sequence (flatten (L, H) scores first)")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{name}[{i}] = {v} is not finite; rank statistics need finite scores")
        out.append(v)
    return out


def _pair(x: Any, y: Any) -> tuple[list[float], list[float]]:
    xs, ys = _floats(x, "x"), _floats(y, "y")
    if len(xs) != len(ys):
        raise ValueError(f"x and y must have the same length, got {len(xs)} and {len(ys)}")
    if len(xs) < 2:
        raise ValueError(f"a correlation needs at least 2 pairs, got {len(xs)}")
    return xs, ys


def argsort(values: Any) -> list[int]:
    """Indices that sort `values` ascending; stable (equal values keep index order)."""
    xs = _floats(values, "values")
    return sorted(range(len(xs)), key=xs.__getitem__)


def rankdata(values: Any) -> list[float]:
    """1-based ranks, ties get the average of the ranks they span: [10, 20, 20, 5] -> [2, 3.5, 3.5, 1]."""
    xs = _floats(values, "values")
    order = sorted(range(len(xs)), key=xs.__getitem__)
    ranks = [0.0] * len(xs)
    start = 0
    while start < len(order):
        end = start  # [start, end] is a run of equal values in sorted order
        while end + 1 < len(order) and xs[order[end + 1]] == xs[order[start]]:
            end += 1
        average = (start + end) / 2 + 1  # mean of the 1-based ranks start+1 .. end+1
        for k in range(start, end + 1):
            ranks[order[k]] = average
        start = end + 1
    return ranks


def pearson(x: Any, y: Any) -> float:
    """Pearson's r of two equal-length vectors (two-pass, math.fsum); nan if either is constant."""
    xs, ys = _pair(x, y)
    n = len(xs)
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    dx = [v - mx for v in xs]
    dy = [v - my for v in ys]
    sxx = math.fsum(d * d for d in dx)
    syy = math.fsum(d * d for d in dy)
    if sxx == 0.0 or syy == 0.0:
        return math.nan
    r = math.fsum(a * b for a, b in zip(dx, dy)) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))  # round-off can push |r| a hair above 1


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), valid and fast for x < (a+1)/(a+b+2).

    I_x(a, b) = x^a (1-x)^b / (a B(a, b)) * 1 / (1 + d1 / (1 + d2 / (1 + ...))) with
        d_{2m}   =  m (b - m) x / ((a + 2m - 1)(a + 2m))
        d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
    Lentz evaluates G = 1 + d1 / (1 + d2 / (1 + ...)) front to back as f_j = f_{j-1} C_j D_j with
    C_j = 1 + d_j / C_{j-1}, D_j = 1 / (1 + d_j D_{j-1}), from f_0 = C_0 = 1, D_0 = 0; returns 1 / G.
    """
    def guard(v: float) -> float:
        return v if abs(v) > _LENTZ_TINY else _LENTZ_TINY

    f, c, d = 1.0, 1.0, 0.0
    for j in range(1, 2 * _LENTZ_MAX_STEPS):
        m = j // 2  # j = 2m (even) or 2m + 1 (odd; j = 1 is m = 0)
        if j % 2 == 0:
            coef = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            coef = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 / guard(1.0 + coef * d)
        c = guard(1.0 + coef / c)
        step = c * d
        f *= step
        if abs(step - 1.0) < _LENTZ_EPS:
            return 1.0 / f  # f is the denominator 1 + d1 / (1 + ...); the fraction is its reciprocal
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def _betainc_split(a: float, b: float, x: float, one_minus_x: float) -> float:
    """I_x(a, b) given x and 1-x separately, so a caller that knows 1-x exactly loses no digits."""
    if x <= 0.0:
        return 0.0
    if one_minus_x <= 0.0:
        return 1.0
    log_front = (a * math.log(x) + b * math.log(one_minus_x)
                 + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b))  # log of x^a (1-x)^b / B(a, b)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    # The fraction converges slowly past its mean: use I_x(a, b) = 1 - I_{1-x}(b, a).
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, one_minus_x) / b


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
    return _betainc_split(a, b, x, 1.0 - x)


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2)."""
    if not df > 0:
        raise ValueError(f"Student's t needs df > 0, got {df}")
    if math.isinf(t):
        return 0.0
    t2 = t * t
    return _betainc_split(df / 2, 0.5, df / (df + t2), t2 / (df + t2))


def correlation_pvalue(r: float, n: int) -> float:
    """Two-sided p of a correlation r over n pairs (t-test, n-2 df), as scipy's spearmanr/pearsonr.

    t = r sqrt((n-2)/(1-r^2)) gives df/(df+t^2) = 1-r^2 exactly, so p = I_{1-r^2}((n-2)/2, 1/2),
    with 1-r^2 computed as (1-r)(1+r). |r| = 1 -> 0.0; nan r or n < 3 (no degrees of freedom) -> nan.
    """
    if math.isnan(r) or n < 3:
        return math.nan
    if abs(r) >= 1.0:
        return 0.0
    return _betainc_split((n - 2) / 2, 0.5, (1.0 - r) * (1.0 + r), r * r)


def spearman(x: Any, y: Any) -> tuple[float, float]:
    """Spearman's (rho, two-sided p) of two equal-length score vectors; ties get average ranks.

    rho in [-1, 1]: 1 = the same order, -1 = reversed, ~0 = unrelated. p is the t-approximation
    with n-2 df (scipy.stats.spearmanr's). Edge cases, as scipy: a constant input (all ties) has no
    rank variance -> (nan, nan); n = 2 -> (+-1, nan); |rho| = 1 with n >= 3 -> p = 0.0; n < 2 or
    different lengths -> ValueError. With n = 4608 heads any |rho| > ~0.03 has p < 0.05.
    """
    xs, ys = _pair(x, y)
    rho = pearson(rankdata(xs), rankdata(ys))
    return rho, correlation_pvalue(rho, len(xs))


def paper_argsort_correlation(x: Any, y: Any) -> float:
    """THE PAPER'S VARIANT, not Spearman: Pearson on the ascending argsort vectors of x and y.

    llm-interpret's spearman_rankings.py feeds torch.sort(...)[1] rows to spearmanr; the rows are
    permutations, so this equals Pearson of the argsorts (inverse rank permutations), ~0.45 for two
    score sets that share only a layer profile and ~0 for head-level agreement without one
    (docs/method.md, "SRCC").
    Our argsort is stable (torch.sort's tie order is unspecified).
    """
    xs, ys = _pair(x, y)
    return pearson(argsort(xs), argsort(ys))


def top_count(fraction: float, n: int) -> int:
    """How many items the top `fraction` of n holds: floor(fraction * n), exact (0.3 of 4608 -> 1382)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = math.floor(Fraction(str(fraction)) * n)
    if k < 1:
        raise ValueError(f"the top {fraction:g} of {n} items is empty; use a larger fraction")
    return k


def top_fraction_overlap(x: Any, y: Any, fraction: float = 0.3) -> float:
    """|top_k(x) & top_k(y)| / k with k = floor(fraction * n): shared share of the most important items.

    top_k = the last k of the stable ascending order, i.e. the heads a (1-fraction) prune would keep
    when k is exact; among equal scores the higher index counts as more important. 1 = same top set;
    two independent random rankings give fraction on average.
    """
    xs, ys = _pair(x, y)
    k = top_count(fraction, len(xs))
    top_x, top_y = set(argsort(xs)[-k:]), set(argsort(ys)[-k:])
    return len(top_x & top_y) / k


def mean_and_variance(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample variance with n-1 denominator) of finite values, skipping nan; nan when too few."""
    vals = [float(v) for v in values if not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan
    mean = math.fsum(vals) / len(vals)
    if len(vals) < 2:
        return mean, math.nan
    return mean, math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1)


# -- matrices over named vectors ----------------------------------------------------------------
def pairwise_matrix(rows: Mapping[str, Any], fn: Callable[[Any, Any], float]) -> list[list[float]]:
    """[[fn(rows[a], rows[b]) for b] for a] in the mapping's order; fn is assumed symmetric."""
    names = list(rows)
    out = [[math.nan] * len(names) for _ in names]
    for i, a in enumerate(names):
        for j in range(i, len(names)):
            out[i][j] = out[j][i] = fn(rows[a], rows[names[j]])
    return out


def spearman_matrix(rows: Mapping[str, Any]) -> tuple[list[list[float]], list[list[float]]]:
    """(rho, p) matrices of every pair of named vectors; each vector is ranked once."""
    ranks = {name: rankdata(v) for name, v in rows.items()}
    lengths = {len(r) for r in ranks.values()}
    if len(lengths) > 1:
        raise ValueError(f"vectors to correlate have different lengths: "
                         f"{ {name: len(r) for name, r in ranks.items()} }")
    rho = pairwise_matrix(ranks, pearson)
    n = lengths.pop() if lengths else 0
    p = [[correlation_pvalue(r, n) for r in row] for row in rho]
    return rho, p


def paper_argsort_matrix(rows: Mapping[str, Any]) -> list[list[float]]:
    """Matrix of `paper_argsort_correlation` (THE PAPER'S VARIANT) over named vectors."""
    orders = {name: argsort(v) for name, v in rows.items()}
    return pairwise_matrix(orders, pearson)


def overlap_matrix(rows: Mapping[str, Any], fraction: float = 0.3) -> list[list[float]]:
    """Matrix of `top_fraction_overlap` over named vectors (each top set is computed once)."""
    lengths = {name: len(_floats(v, name)) for name, v in rows.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"vectors to compare have different lengths: {lengths}")
    k = top_count(fraction, next(iter(lengths.values()))) if lengths else 1
    tops = {name: set(argsort(v)[-k:]) for name, v in rows.items()}
    return pairwise_matrix(tops, lambda a, b: len(a & b) / k)
