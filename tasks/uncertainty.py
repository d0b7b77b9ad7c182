"""Standard errors of a task's metrics, and the per-document vector every interval is rebuilt from.

lm-evaluation-harness v0.3 writes `<metric>_stderr` beside every metric it can (metrics.stderr_for_metric):
    mean        (acc, acc_norm, ReCoRD em and f1)  mean_stderr = sample stddev (n - 1) / sqrt(n)
    acc_all     (MultiRC acc)                      mean_stderr of the per-question all-correct values
    perplexity  (LAMBADA ppl)                      bootstrap: sample stddev of the metric over resamples
lm-eval has no rule for CB's macro F1 (its aggregation is not on the bootstrappable list), so it
writes no stderr there; here F1 gets the bootstrap too, so every metric carries one. Two departures,
both on purpose: lm-eval's acc_all_stderr groups MultiRC rows by question index alone (merging equal
indices of different paragraphs); here the groups are the metric's own, (paragraph, question). And
lm-eval bootstraps 100,000 resamples from Python's random module seeded per chunk; here numpy's
default_rng(BOOTSTRAP_SEED) draws BOOTSTRAP_ITERS resamples, vectorised (same estimator; its
Monte-Carlo error at 1000 resamples is about 2% of the stderr). Both are recorded with the results.

The per-document vector: every primary metric the paper reads (acc; ReCoRD em) is a mean of 0/1
values per unit (a doc; a MultiRC question), so one string of "0"/"1" per evaluation holds all that
any paired interval, bootstrap or power calculation needs (prune/intervals.py), one byte per doc.

Intervals (`<metric>_ci95` in results.json, beside lm-eval's `_stderr`), which hold at any n:
    a proportion (acc, acc_norm, ReCoRD em, MultiRC questions)  Clopper-Pearson's exact interval: the
        p at which seeing k or more (k or fewer) of n has probability (1 - level) / 2; never outside
        [0, 1], never zero width (0 of 8 gives [0, 0.369]); coverage >= level at every p and n.
    a mean of values that are not 0/1 (ReCoRD f1), perplexity, macro F1: the percentile bootstrap,
        INTERVAL_ITERS resamples. Why 20,000: the Monte-Carlo sd of a 2.5% quantile is about
        2.7 / sqrt(B) standard errors, so at B = 20,000 each endpoint moves by under 1% of the
        half-width (1.96 standard errors) from one seed to another.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

BOOTSTRAP_ITERS = 1000
BOOTSTRAP_SEED = 1234
INTERVAL_ITERS = 20_000  # percentile-bootstrap resamples (module docstring: endpoints stable to 1%)
INTERVAL_RULES = {"proportion": "Clopper-Pearson exact (acc, acc_norm, em; MultiRC per question)",
                  "other": "percentile bootstrap over documents (ReCoRD f1, LAMBADA ppl, CB f1)"}
CHUNK_ELEMENTS = 1 << 24  # resampled values held at once (128 MiB of float64), whatever n and B
PER_DOC_KEY = "per_doc"  # key of the primary metric's 0/1 string beside the metrics of one evaluation
STDERR_RULES = {"mean": "mean_stderr", "acc_all": "mean_stderr of per-question values",
                "perplexity": "bootstrap", "f1_macro": "bootstrap (lm-eval writes none)"}


def sample_stddev(values: Sequence[float]) -> float:
    """Standard deviation with the n - 1 denominator (lm-eval's sample_stddev)."""
    n = len(values)
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1))


def mean_stderr(values: Sequence[float]) -> float | None:
    """lm-eval's mean_stderr; None for fewer than 2 values (undefined, never NaN)."""
    return sample_stddev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def question_units(values: Sequence[tuple[Any, float]]) -> list[float]:
    """MultiRC: (question key, row correct) per row -> 1.0/0.0 per question (all rows right), in the
    order questions first appear (the units acc_all averages)."""
    groups: dict[Any, bool] = {}
    for key, correct in values:
        key = tuple(key) if isinstance(key, list) else key
        groups[key] = groups.get(key, True) and bool(correct)
    return [float(v) for v in groups.values()]


def _bootstrap_perplexity(values: Sequence[float], idx: np.ndarray) -> np.ndarray:
    lls = np.asarray(values, dtype=np.float64)
    return np.exp(-lls[idx].mean(axis=1))  # (iters,)


def _bootstrap_f1_macro(values: Sequence[tuple[int, int]], idx: np.ndarray) -> np.ndarray:
    pairs = np.asarray(values, dtype=np.int64)  # (n, 2): pred, gold
    pred, gold = pairs[idx, 0], pairs[idx, 1]  # (iters, n) each
    scores = []
    for c in range(3):
        tp = ((pred == c) & (gold == c)).sum(1)
        fp = ((pred == c) & (gold != c)).sum(1)
        fn = ((pred != c) & (gold == c)).sum(1)
        denom = 2 * tp + fp + fn
        scores.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
    return np.mean(scores, axis=0)  # (iters,)


def _bootstrap_mean(values: Sequence[float], idx: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)[idx].mean(axis=1)  # (iters,)


BOOTSTRAPPED: dict[str, Callable[[Sequence[Any], np.ndarray], np.ndarray]] = {
    "perplexity": _bootstrap_perplexity, "f1_macro": _bootstrap_f1_macro, "mean": _bootstrap_mean}


def bootstrap_stderr(aggregation: str, values: Sequence[Any], iters: int = BOOTSTRAP_ITERS,
                     seed: int = BOOTSTRAP_SEED) -> float | None:
    """Sample stddev of the aggregation over `iters` resamples of the docs (with replacement)."""
    if len(values) < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, len(values), size=(iters, len(values)))  # (iters, n)
    stats = BOOTSTRAPPED[aggregation](values, idx)
    return float(np.std(stats, ddof=1))


def metric_stderr(aggregation: str, values: Sequence[Any], iters: int = BOOTSTRAP_ITERS,
                  seed: int = BOOTSTRAP_SEED) -> float | None:
    """The standard error of one metric from its per-doc values, by the rule of its aggregation."""
    if aggregation == "mean":
        return mean_stderr([float(v) for v in values])
    if aggregation == "acc_all":
        return mean_stderr(question_units(values))
    if aggregation in BOOTSTRAPPED:
        return bootstrap_stderr(aggregation, values, iters, seed)
    raise KeyError(f"no standard-error rule for aggregation {aggregation!r}")


def primary_units(aggregation: str, values: Sequence[Any]) -> list[float]:
    """The per-unit values whose mean is the primary metric (docs; MultiRC: questions)."""
    return question_units(values) if aggregation == "acc_all" else [float(v) for v in values]


def encode_bits(units: Sequence[float]) -> str | None:
    """'0110...' for 0/1 values; None when some value is not 0 or 1 (no such primary metric today)."""
    if any(v not in (0.0, 1.0) for v in units):
        return None
    return "".join("1" if v else "0" for v in units)


def decode_bits(bits: str) -> np.ndarray:
    """(n,) float64 0/1 vector of a per-document string."""
    return (np.frombuffer(bits.encode("ascii"), dtype=np.uint8) - ord("0")).astype(np.float64)


# -- intervals that hold at any n ------------------------------------------------------------------
def _binomial_log_pmf(n: int, p: float) -> np.ndarray:
    """(n + 1,) log P(X = j), X ~ Binomial(n, p), 0 < p < 1 (log C(n, j) as a running sum of log ratios)."""
    j = np.arange(n, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log((n - j) / (j + 1)))])
    k = np.arange(n + 1, dtype=np.float64)
    return log_comb + k * math.log(p) + (n - k) * math.log1p(-p)


def _tail(n: int, p: float, k: int, upper: bool) -> float:
    """P(X >= k) (upper) or P(X <= k) under Binomial(n, p), summed in log space."""
    logs = _binomial_log_pmf(n, p)
    part = logs[k:] if upper else logs[:k + 1]
    top = part.max()
    return float(math.exp(top) * np.exp(part - top).sum())


def _solve(f: Callable[[float], float], target: float, increasing: bool) -> float:
    """p in (0, 1) with f(p) = target for monotone f, by bisection to float precision."""
    lo, hi = 0.0, 1.0
    for _ in range(64):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def proportion_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson's exact interval for k successes of n: (low, high) in [0, 1], coverage >= level."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"proportion_interval needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else _solve(lambda p: _tail(n, p, k, upper=True), tail, increasing=True)
    high = 1.0 if k == n else _solve(lambda p: _tail(n, p, k, upper=False), tail, increasing=False)
    return low, high


def bootstrap_interval(aggregation: str, values: Sequence[Any], level: float = 0.95, iters: int = INTERVAL_ITERS,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of an aggregation over its per-doc values (None below 2 docs), the
    resamples drawn in chunks of at most CHUNK_ELEMENTS values."""
    n = len(values)
    if n < 2:
        return None
    rng, stats = np.random.default_rng(seed), []
    per_chunk = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, iters, per_chunk):
        idx = rng.integers(0, n, size=(min(per_chunk, iters - start), n))  # (chunk, n)
        stats.append(BOOTSTRAPPED[aggregation](values, idx))
    low, high = np.quantile(np.concatenate(stats), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def metric_interval(aggregation: str, values: Sequence[Any], level: float = 0.95) -> tuple[float, float] | None:
    """The interval of one metric from its per-doc values: exact for a proportion, else the bootstrap."""
    units = question_units(values) if aggregation == "acc_all" else values
    if aggregation in ("mean", "acc_all") and units and all(float(v) in (0.0, 1.0) for v in units):
        return proportion_interval(int(sum(float(v) for v in units)), len(units), level)
    return bootstrap_interval(aggregation, units, level)
