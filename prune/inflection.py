"""Where a pruning curve bends, and how much can be removed before it does (Bansal et al. 2023, §4, Figs. 5-7).

A curve is {percent pruned: metric in points (x100)}, from a sweep table (prune/sweeps.py). The
paper reads its headline from the curve of the *mean over tasks* ("about 70% of heads and 20% of
FFNs can be removed with little loss"), by eye; two written-down rules replace the eye here:

knee (the inflection point)
    slopes s_i = (y_{i+1} - y_i) / (x_{i+1} - x_i) in points per percentage point. The knee is the
    interior point x_i whose slope change s_{i-1} - s_i (how much steeper the curve falls after x_i
    than before it) is largest, provided that change is at least `min_bend`; otherwise the curve
    has no knee (flat, or bending less than the noise). Ties: the smaller percentage. Default
    min_bend 0.1 = the drop per 10% step grows by at least 1 point.
tolerance (the headline)
    the largest percentage p such that every measured q <= p keeps the metric within `tolerance`
    points of the unpruned (0%) value: y(q) >= y(0) - tolerance. Default 1 point. The curve is
    walked from 0% upward and stops at the first failure, so a noisy recovery later never counts.

`headline` applies the tolerance rule to the heads curve, the FFN curve and the combined grid of
the mean over tasks and converts the counts to parameters removed with opt66b.placement's per-unit
counts (one head's q, k, v rows and out_proj columns; one FFN's fc1 and fc2 with biases). For the
grid, a cell (h, f) counts when it and every measured cell (h', f') with h' <= h and f' <= f are
within tolerance of (0, 0); the cell removing the most parameters is reported.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from opt66b.placement import attention_head_params, ffn_params

from .masks import count_for_percent

DEFAULT_MIN_BEND = 0.1  # points per percentage point
DEFAULT_TOLERANCE = 1.0  # points (metric x100)

RULES = {
    "knee": "the interior percentage x_i maximising s_{i-1} - s_i (slope before minus slope after, points "
            "per percentage point), if that is >= min_bend; none otherwise; ties: the smaller percentage",
    "tolerance": "the largest percentage p with every measured q <= p at or above the 0% value minus "
                 "tolerance points (walked from 0% upward, stopping at the first failure)",
}


def _points(curve: Mapping[Any, float]) -> list[tuple[float, float]]:
    """{percent (str or number): value} -> [(percent, value)] sorted by percent, all finite."""
    pts = sorted((float(k), float(v)) for k, v in curve.items())
    for x, y in pts:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"pruning curve has a non-finite point ({x}, {y})")
    if len(set(x for x, _ in pts)) != len(pts):
        raise ValueError(f"pruning curve repeats a percentage: {[x for x, _ in pts]}")
    return pts


def knee(curve: Mapping[Any, float], min_bend: float = DEFAULT_MIN_BEND) -> float | None:
    """The knee of `curve` by the rule above; None with fewer than 3 points or no bend >= min_bend."""
    pts = _points(curve)
    if len(pts) < 3:
        return None
    slopes = [(y1 - y0) / (x1 - x0) for (x0, y0), (x1, y1) in zip(pts, pts[1:])]
    best, best_bend = None, -math.inf
    for i in range(1, len(pts) - 1):
        bend = slopes[i - 1] - slopes[i]
        if bend > best_bend:  # strict: ties keep the smaller percentage
            best, best_bend = pts[i][0], bend
    return best if best_bend >= min_bend else None


def within_tolerance(curve: Mapping[Any, float], tolerance: float = DEFAULT_TOLERANCE) -> float | None:
    """The tolerance rule above; None when the curve has no 0% point."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 points, got {tolerance}")
    pts = _points(curve)
    if not pts or pts[0][0] != 0:
        return None
    base, best = pts[0][1], 0.0
    for x, y in pts:
        if y < base - tolerance:
            break
        best = x
    return best


def grid_within_tolerance(grid: Mapping[Any, Mapping[Any, float]], tolerance: float = DEFAULT_TOLERANCE
                          ) -> list[tuple[float, float]]:
    """Cells (head %, FFN %) of grid[head %][FFN %] that pass the grid rule above, sorted."""
    cells = {(float(h), float(f)): float(v) for h, row in grid.items() for f, v in row.items()}
    if (0.0, 0.0) not in cells:
        return []
    base = cells[(0.0, 0.0)]
    ok = {c for c, v in cells.items() if v >= base - tolerance}
    return sorted(c for c in ok if all(d in ok for d in cells if d[0] <= c[0] and d[1] <= c[1]))


def headline(heads_curve: Mapping[Any, float] | None, ffn_curve: Mapping[Any, float] | None,
             grid: Mapping[Any, Mapping[Any, float]] | None, cfg: Any,
             tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """The paper-style headline from mean-over-tasks curves of one shot, for model config `cfg`."""
    n_heads, n_ffn = cfg.num_layers * cfg.num_heads, cfg.num_layers
    per_head, per_ffn = attention_head_params(cfg), ffn_params(cfg)

    def removed(head_pct: float, ffn_pct: float) -> dict[str, Any]:
        h, f = count_for_percent(head_pct, n_heads), count_for_percent(ffn_pct, n_ffn)
        return {"head_percent": head_pct, "ffn_percent": ffn_pct, "heads_removed": h, "ffns_removed": f,
                "params_removed": h * per_head + f * per_ffn}

    out: dict[str, Any] = {"tolerance_points": tolerance, "rule": RULES["tolerance"],
                           "params_per_head": per_head, "params_per_ffn": per_ffn}
    if heads_curve:
        p = within_tolerance(heads_curve, tolerance)
        out["heads"] = None if p is None else removed(p, 0)
    if ffn_curve:
        p = within_tolerance(ffn_curve, tolerance)
        out["ffn"] = None if p is None else removed(0, p)
    if grid:
        cells = grid_within_tolerance(grid, tolerance)
        best = max((removed(h, f) for h, f in cells), key=lambda r: (r["params_removed"], r["head_percent"]),
                   default=None)
        out["both"] = best
    return out


def curve_points(curve: Mapping[Any, float], min_bend: float = DEFAULT_MIN_BEND,
                 tolerance: float = DEFAULT_TOLERANCE) -> dict[str, float | None]:
    """Both rules on one curve: {"knee": %, "within_tolerance": %}."""
    return {"knee": knee(curve, min_bend), "within_tolerance": within_tolerance(curve, tolerance)}


# -- curves from a sweep table (prune/sweeps.py merge_table layout) -----------------------------------
def sweep_curve(cells: Mapping[str, Mapping[str, float]], axis: str) -> dict[float, float]:
    """One task's curve from table["results"][task]["shots-K"] = {head %: {FFN %: value}}: axis "heads"
    reads FFN 0%, axis "ffn" reads heads 0%."""
    if axis == "heads":
        return {float(h): float(row["0"]) for h, row in cells.items() if "0" in row}
    if axis == "ffn":
        return {float(f): float(v) for f, v in cells.get("0", {}).items()}
    raise ValueError(f"axis must be 'heads' or 'ffn', got {axis!r}")


def mean_curve(table: Mapping[str, Any], tasks: Any, shot: str, axis: str) -> tuple[dict[float, float], list[str]]:
    """(mean over `tasks` of their curves at the percentages every one of them has, the tasks used).

    Tasks absent from the table at that shot are left out and so not listed; the paper's mean is over
    its 14 seen tasks, never the unseen ones or the synthetic copy task."""
    curves = {t: sweep_curve(table["results"][t][shot], axis) for t in tasks
              if shot in table.get("results", {}).get(t, {})}
    if not curves:
        return {}, []
    common = set.intersection(*(set(c) for c in curves.values()))
    return {x: sum(c[x] for c in curves.values()) / len(curves) for x in sorted(common)}, list(curves)


def mean_grid(table: Mapping[str, Any], tasks: Any, shot: str) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The grid analogue of mean_curve: {head %: {FFN %: mean}} over the tasks that have the shot."""
    grids = {t: table["results"][t][shot] for t in tasks if shot in table.get("results", {}).get(t, {})}
    if not grids:
        return {}, []
    out: dict[str, dict[str, float]] = {}
    for h in next(iter(grids.values())):
        for f in next(iter(grids.values()))[h]:
            vals = [g[h][f] for g in grids.values() if f in g.get(h, {})]
            if len(vals) == len(grids):
                out.setdefault(h, {})[f] = sum(vals) / len(vals)
    return out, list(grids)
