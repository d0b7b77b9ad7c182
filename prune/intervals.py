"""Uncertainty of every pruning reading, from the per-document 0/1 vectors the evaluations store.

The paper's conclusions rest on differences of a few points measured on samples of a few hundred to
a few thousand documents, and it reports no uncertainty. Every number here gets one, all in points
(metric x100) and all from the per-unit strings of tasks/uncertainty.py (no model run):

value       the standard error of a cell's mean, sd(x) / sqrt(n) (the sample stddev, n - 1).
paired drop a cell against the unpruned evaluation on the same documents: d_i = base_i - cell_i,
            drop = mean(d), se = sd(d) / sqrt(n) (the knee rule's noise), and `drop_ci95` from
            paired_drop_interval. What sets its precision is not n but how many documents change: the
            drop is the share of documents the pruning breaks (a = n10 / n) minus the share it fixes
            (b = n01 / n). Each share gets Clopper-Pearson's exact interval (tasks/uncertainty.py) and
            the two are joined the way Newcombe and Zou join intervals of a difference (MOVER, "method
            of variance estimates recovery"), with the two shares' multinomial correlation
            r = -sqrt(a b / ((1 - a)(1 - b))):
                low  = (a - b) - sqrt((a - la)^2 + (ub - b)^2 - 2 r (a - la)(ub - b))
                high = (a - b) + sqrt((ua - a)^2 + (b - lb)^2 - 2 r (ua - a)(b - lb))
            With no changed document it is still [-ub, ua] (0 of 100 changed: [-3.6, 3.6] points),
            never zero width; a Wald interval there is [0, 0]. Simulated coverage (tests/
            test_coverage.py, 2,000 draws per case): at least 94.5% at n = 8, 50, 200 with 0 to 100
            changed documents, where Wald's falls to 86% with 2 changed documents.
task mean   the mean over T tasks of independent samples: se = sqrt(sum se_t^2) / T; its drop
            interval joins the tasks' intervals the same way (MOVER, independent tasks):
            mean -/+ sqrt(sum (drop_t - low_t)^2) / T and sqrt(sum (high_t - drop_t)^2) / T.
knee        a bootstrap over documents: each task's documents are resampled (the same draw for every
            cell of that task, so the curve keeps its pairing), the mean-over-tasks curve or grid is
            rebuilt and its knee read by prune/inflection.py; the 2.5% and 97.5% quantiles of the knee
            locations are its 95% interval (the knee moves in steps of the measured percentages).
transfer    a partner's curve against the task's own-ranking curve: the paired difference per
            percentage, own - partner, with its 95% interval; it "separates" the two only when the
            interval excludes 0.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tasks.uncertainty import decode_bits, mean_stderr, proportion_interval

Z95 = 1.959963984540054  # two-sided 95% normal quantile
KNEE_ITERS, KNEE_SEED = 200, 1234


def value_se(bits: str | None) -> float | None:
    """Standard error of a cell's mean in points (lm-eval's mean_stderr), or None (no vector, or one unit)."""
    se = mean_stderr(decode_bits(bits).tolist()) if bits else None
    return None if se is None else 100.0 * se


def _outcomes(values: str | Sequence[float]) -> np.ndarray:
    return decode_bits(values) if isinstance(values, str) else np.asarray(values, dtype=np.float64)


def _mover(estimate: float, lows: Sequence[float], highs: Sequence[float], r: float = 0.0) -> tuple[float, float]:
    """Join (estimate - low, high - estimate) distances of two parts (r: their correlation) or of many
    independent parts (r = 0): the MOVER interval of a sum or difference."""
    if len(lows) == 2:
        (dl1, dl2), (dh1, dh2) = lows, highs
        return (estimate - math.sqrt(max(0.0, dl1 ** 2 + dl2 ** 2 - 2 * r * dl1 * dl2)),
                estimate + math.sqrt(max(0.0, dh1 ** 2 + dh2 ** 2 - 2 * r * dh1 * dh2)))
    return estimate - math.sqrt(sum(d * d for d in lows)), estimate + math.sqrt(sum(d * d for d in highs))


def paired_drop_interval(base: str | Sequence[float], pruned: str | Sequence[float],
                         level: float = 0.95) -> tuple[float, float]:
    """The 95% interval of base - pruned in points (x100) over per-document 0/1 outcomes on the same
    documents: exact intervals of the broken and fixed shares joined by MOVER (module docstring)."""
    b, c = _outcomes(base), _outcomes(pruned)
    if len(b) != len(c) or len(b) == 0:
        raise ValueError(f"paired_drop_interval needs two outcome vectors of one length >= 1, got {len(b)} and {len(c)}")
    n = len(b)
    broken, fixed = int(((b == 1) & (c == 0)).sum()), int(((b == 0) & (c == 1)).sum())
    a, f = broken / n, fixed / n
    (la, ua), (lf, uf) = proportion_interval(broken, n, level), proportion_interval(fixed, n, level)
    r = -math.sqrt(a * f / ((1 - a) * (1 - f))) if 0 < a < 1 and 0 < f < 1 else 0.0
    low, high = _mover(a - f, (a - la, uf - f), (ua - a, f - lf), r)
    return 100.0 * max(low, -1.0), 100.0 * min(high, 1.0)


def mean_interval(values: Sequence[float], intervals: Sequence[Sequence[float]]) -> tuple[float, float]:
    """The interval of the mean over independent tasks of their values (drops, accuracies), from each
    task's interval (MOVER)."""
    low, high = _mover(sum(values), [v - iv[0] for v, iv in zip(values, intervals)],
                       [iv[1] - v for v, iv in zip(values, intervals)])
    return low / len(values), high / len(values)


def value_interval(bits: str | None) -> tuple[float, float] | None:
    """A cell's exact 95% interval in points (Clopper-Pearson over its units), or None without a vector."""
    if not bits:
        return None
    low, high = proportion_interval(bits.count("1"), len(bits))
    return 100.0 * low, 100.0 * high


def paired_drop(base: str | None, cell: str | None) -> dict[str, Any] | None:
    """{drop, se, drop_ci95: [low, high], n}: the cell's drop from the unpruned evaluation on the same
    documents, in points (se: the knee rule's noise; drop_ci95: paired_drop_interval)."""
    if not base or not cell or len(base) != len(cell) or len(base) < 2:
        return None
    d = decode_bits(base) - decode_bits(cell)  # (n,) per-unit differences
    drop, se = 100.0 * float(d.mean()), 100.0 * float(np.std(d, ddof=1)) / math.sqrt(len(d))
    return {"drop": drop, "se": se, "drop_ci95": list(paired_drop_interval(base, cell)), "n": len(d)}


def mean_se(ses: Sequence[float | None]) -> float | None:
    """The se of a mean over independent tasks; None when any task lacks one."""
    if not ses or any(s is None for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses)) / len(ses)


# -- bootstrap over documents ----------------------------------------------------------------------
Cell = tuple[float, float]  # (head %, FFN %)


def _resampled_means(per_task: Mapping[str, Mapping[Cell, str]], iters: int, seed: int) -> dict[Cell, np.ndarray]:
    """{cell: (iters,) mean over tasks of the resampled cell means, points}, cells every task has."""
    rng = np.random.default_rng(seed)
    cells = set.intersection(*(set(c) for c in per_task.values()))
    total = {c: np.zeros(iters) for c in cells}
    for task in sorted(per_task):
        vectors = {c: decode_bits(per_task[task][c]) for c in cells}
        n = len(next(iter(vectors.values())))
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=iters).astype(np.float64)  # (iters, n)
        for c in cells:
            total[c] += 100.0 * (weights @ vectors[c]) / n  # (iters,)
    return {c: v / len(per_task) for c, v in total.items()}


def bootstrap_readings(per_task: Mapping[str, Mapping[Cell, str]], read: Callable[[dict[Cell, float]], Any],
                       iters: int = KNEE_ITERS, seed: int = KNEE_SEED) -> list[Any]:
    """`read` (e.g. a knee rule on the mean curve) applied to `iters` document resamples."""
    if not per_task:
        return []
    means = _resampled_means(per_task, iters, seed)
    return [read({c: float(v[i]) for c, v in means.items()}) for i in range(iters)]


def interval_of(values: Sequence[float | None]) -> dict[str, Any] | None:
    """{lo, hi, none_share, iters}: the 2.5% / 97.5% quantiles of the resampled readings (knees) that exist
    and the share of resamples with none (lo and hi None when no resample has one); None without readings."""
    if not values:
        return None
    found = sorted(v for v in values if v is not None)
    if not found:
        return {"lo": None, "hi": None, "none_share": 1.0, "iters": len(values)}
    lo = found[int(math.floor(0.025 * (len(found) - 1)))]
    hi = found[int(math.ceil(0.975 * (len(found) - 1)))]
    return {"lo": lo, "hi": hi, "none_share": 1 - len(found) / len(values), "iters": len(values)}


def per_task_cells(table: Mapping[str, Any], tasks: Sequence[str], shot: str) -> dict[str, dict[Cell, str]]:
    """{task: {(head %, FFN %): per-doc string}} of a sweep table's tasks at one shot (only tasks whose
    every cell has its vector)."""
    out = {}
    for t in tasks:
        grid = table.get("per_doc", {}).get(t, {}).get(shot, {})
        cells = {(float(h), float(f)): bits for h, row in grid.items() for f, bits in row.items()}
        if cells and all(cells.values()):
            out[t] = cells
    return out


# -- a run's reading against the paper's ---------------------------------------------------------------
# Beyond these widths an interval holds too much to compare with the paper's value: a drop interval
# wider than 10 points holds both "no drop" and twice the paper's 4-6 point drops; a knee interval
# wider than 20 percentage points spans the paper's 0-shot and few-shot FFN knees (20% and 10%) and
# more than two steps of the sweep grid.
MAX_WIDTH = {"drop": 10.0, "location": 20.0}


def against_paper(value: float, interval: Mapping[str, Any] | Sequence[float] | None, kind: str) -> str:
    """"consistent" (the paper's value inside this run's 95% interval), "differs" (outside), or "too
    imprecise to tell" (inside an interval wider than MAX_WIDTH[kind]). `interval`: (low, high), or a
    knee interval {lo, hi, none_share}, whose resamples without a knee count against it."""
    if interval is None:
        return "not measured"
    none_share = 0.0
    if isinstance(interval, Mapping):
        if interval.get("lo") is None:
            return "differs (no knee in any resample)"
        low, high, none_share = interval["lo"], interval["hi"], interval.get("none_share") or 0.0
    else:
        low, high = interval
    if not low <= value <= high:
        return "differs"
    if high - low > MAX_WIDTH[kind] or none_share >= 0.5:
        why = f"no knee in {none_share:.0%} of resamples" if none_share >= 0.5 else f"interval wider than {MAX_WIDTH[kind]:g}"
        return f"too imprecise to tell ({why})"
    return "consistent"
