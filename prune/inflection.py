"""Where a pruning curve bends, and how much can be removed before it does (Bansal et al. 2023, §5, Figs. 5-7).

A curve is {percent pruned: metric in points (x100)}, from a sweep table (prune/sweeps.py). The
paper reads its headline from the curve of the *mean over tasks* ("about 70% of heads and 20% of
FFNs can be removed with little loss"), by eye; two written-down rules replace the eye here:

knee (the inflection point)
    slopes s_i = (y_{i+1} - y_i) / (x_{i+1} - x_i) in points per percentage point. The knee is the
    interior point x_i whose slope change s_{i-1} - s_i (how much steeper the curve falls after x_i
    than before it) is largest, provided that change is at least `min_bend`; otherwise the curve
    has no knee (flat, or bending less than the noise). Ties: the smaller percentage. Default
    min_bend 0.1 = the drop per 10% step grows by at least 1 point.
tolerance (a second reading)
    the largest percentage p such that every measured q <= p keeps the metric within `tolerance`
    points of the unpruned (0%) value: y(q) >= y(0) - tolerance. Default 1 point. The curve is
    walked from 0% upward and stops at the first failure, so a noisy recovery later never counts.

grid knee (the combined point)
    the paper reads one cell of the heads x FFN grid (70%/20% at 0 shots): here the cell (h, f) at
    which each axis is at its own knee given the other, h = knee of the heads curve at f FFNs pruned
    and f = knee of the FFN curve at h heads pruned, found by alternating from the heads knee.

`headline` reads the paper's way first (the knees of the mean-over-seen-tasks heads and FFN curves
and the grid knee), with the drop there in points, and the tolerance rule beside it as a second
reading; counts become parameters removed with opt66b.placement's per-unit counts (one head's q, k,
v rows and out_proj columns; one FFN's fc1 and fc2 with biases). For the grid's tolerance reading a
cell (h, f) counts when it and every measured cell (h', f') with h' <= h and f' <= f are within
tolerance of (0, 0); the cell removing the most parameters is reported. An earlier version read the
headline by the tolerance rule alone: that rule cannot give the paper's numbers (a 5-point drop at
70% of heads is far outside any 1-point tolerance), so it is now the second reading.
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
    "grid_knee": "the grid cell (h, f) where h is the knee of the heads curve at f% FFNs pruned and f the knee "
                 "of the FFN curve at h% heads pruned, found by alternating from the heads knee at 0% FFNs "
                 "(no knee counts as 0%)",
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


def grid_knee(grid: Mapping[Any, Mapping[Any, float]], min_bend: float = DEFAULT_MIN_BEND) -> tuple[float, float] | None:
    """The combined knee of grid[head %][FFN %] (the "grid knee" rule above): a cell (h, f) where h is
    the knee of the heads curve at f FFNs pruned and f the knee of the FFN curve at h heads pruned.
    Found by alternating the two from (knee of the heads curve at 0% FFNs, 0); a curve without a knee
    counts as 0%. None when neither axis bends. When the alternation cycles, the cycle's cell that
    removes the most units is taken (largest h + f, then h)."""
    cells = {(float(h), float(f)): float(v) for h, row in grid.items() for f, v in row.items()}

    def along_heads(f: float) -> float | None:
        return knee({h: v for (h, ff), v in cells.items() if ff == f}, min_bend)

    def along_ffn(h: float) -> float | None:
        return knee({f: v for (hh, f), v in cells.items() if hh == h}, min_bend)

    h0 = along_heads(0.0)
    f0 = along_ffn(h0 or 0.0)
    if h0 is None and f0 is None:
        return None
    path = [(h0 or 0.0, f0 or 0.0)]
    while True:
        h = along_heads(path[-1][1]) or 0.0
        nxt = (h, along_ffn(h) or 0.0)
        if nxt in path:
            cycle = path[path.index(nxt):]
            return max(cycle, key=lambda c: (c[0] + c[1], c[0]))
        path.append(nxt)


def headline(heads_curve: Mapping[Any, float] | None, ffn_curve: Mapping[Any, float] | None,
             grid: Mapping[Any, Mapping[Any, float]] | None, cfg: Any, min_bend: float = DEFAULT_MIN_BEND,
             tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """The headline of one shot from its mean-over-seen-tasks curves, read two ways, for model config `cfg`.

    {"heads" | "ffn" | "both": {"knee": point, "tolerance": point}}: "knee" is the paper's reading
    (where the mean curve bends; `knee`, and `grid_knee` for the combined grid), "tolerance" the
    second reading (the largest share within `tolerance` points). A point is {head_percent,
    ffn_percent, heads_removed, ffns_removed, params_removed, value, drop_points} (value and drop in
    points of the metric x100, drop = unpruned - value), or None where the rule finds none."""
    n_heads, n_ffn = cfg.num_layers * cfg.num_heads, cfg.num_layers
    per_head, per_ffn = attention_head_params(cfg), ffn_params(cfg)

    def point(head_pct: float | None, ffn_pct: float | None, source: Mapping[tuple[float, float], float]):
        if head_pct is None or ffn_pct is None:
            return None
        h, f = count_for_percent(head_pct, n_heads), count_for_percent(ffn_pct, n_ffn)
        value, base = source.get((head_pct, ffn_pct)), source.get((0.0, 0.0))
        return {"head_percent": head_pct, "ffn_percent": ffn_pct, "heads_removed": h, "ffns_removed": f,
                "params_removed": h * per_head + f * per_ffn, "value": value,
                "drop_points": None if value is None or base is None else base - value}

    out: dict[str, Any] = {"rule": "knee", "rules": {"knee": RULES["knee"], "grid_knee": RULES["grid_knee"],
                                                     "tolerance": RULES["tolerance"]},
                           "min_bend": min_bend, "tolerance_points": tolerance,
                           "params_per_head": per_head, "params_per_ffn": per_ffn}
    if heads_curve:
        src = {(float(x), 0.0): float(y) for x, y in heads_curve.items()}
        out["heads"] = {"knee": point(knee(heads_curve, min_bend), 0.0, src),
                        "tolerance": point(within_tolerance(heads_curve, tolerance), 0.0, src)}
    if ffn_curve:
        src = {(0.0, float(x)): float(y) for x, y in ffn_curve.items()}
        out["ffn"] = {"knee": point(0.0, knee(ffn_curve, min_bend), src),
                      "tolerance": point(0.0, within_tolerance(ffn_curve, tolerance), src)}
    if grid:
        src = {(float(h), float(f)): float(v) for h, row in grid.items() for f, v in row.items()}
        at = grid_knee(grid, min_bend)
        best = max((point(h, f, src) for h, f in grid_within_tolerance(grid, tolerance)),
                   key=lambda r: (r["params_removed"], r["head_percent"]), default=None)
        out["both"] = {"knee": point(*at, src) if at else None, "tolerance": best}
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
