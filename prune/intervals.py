"""Uncertainty of every pruning reading, from the per-document 0/1 vectors the evaluations store.

The paper's conclusions rest on differences of a few points measured on samples of a few hundred to
a few thousand documents, and it reports no uncertainty. Every number here gets one, all in points
(metric x100) and all from the per-unit strings of tasks/uncertainty.py (no model run):

value       the standard error of a cell's mean, sd(x) / sqrt(n) (the sample stddev, n - 1).
paired drop a cell against the unpruned evaluation on the same documents: d_i = base_i - cell_i,
            drop = mean(d), se = sd(d) / sqrt(n), 95% interval drop -/+ 1.96 se (normal; n is hundreds
            or more in the paper's tasks). The documents' shared difficulty cancels, so the paired se
            is at most the unpaired sqrt(se_base^2 + se_cell^2) when the two correlate (they do).
task mean   the mean over T tasks of independent samples: se = sqrt(sum se_t^2) / T.
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

from tasks.uncertainty import decode_bits, mean_stderr

Z95 = 1.959963984540054  # two-sided 95% normal quantile
KNEE_ITERS, KNEE_SEED = 200, 1234


def value_se(bits: str | None) -> float | None:
    """Standard error of a cell's mean in points (lm-eval's mean_stderr), or None (no vector, or one unit)."""
    se = mean_stderr(decode_bits(bits).tolist()) if bits else None
    return None if se is None else 100.0 * se


def paired_drop(base: str | None, cell: str | None) -> dict[str, float] | None:
    """{drop, se, lo, hi, n}: the cell's drop from the unpruned evaluation on the same documents."""
    if not base or not cell or len(base) != len(cell) or len(base) < 2:
        return None
    d = decode_bits(base) - decode_bits(cell)  # (n,) per-unit differences
    drop, se = 100.0 * float(d.mean()), 100.0 * float(np.std(d, ddof=1)) / math.sqrt(len(d))
    return {"drop": drop, "se": se, "lo": drop - Z95 * se, "hi": drop + Z95 * se, "n": len(d)}


def unpaired_se(a: str, b: str) -> float:
    """What the drop's se would be if the two evaluations had used independent documents."""
    return math.sqrt(value_se(a) ** 2 + value_se(b) ** 2)


def mean_se(ses: Sequence[float | None]) -> float | None:
    """The se of a mean over independent tasks; None when any task lacks one."""
    if not ses or any(s is None for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses)) / len(ses)


def difference(a: str | None, b: str | None) -> dict[str, float] | None:
    """Paired a - b in points with its 95% interval (same documents): a transfer curve's gap."""
    return paired_drop(a, b)


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
