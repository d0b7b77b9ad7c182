"""Where a pruning curve bends, and how much can be removed before it does (Bansal et al. 2023, §5, Figs. 5-7).

A curve is {percent pruned: metric in points (x100)}, from a sweep table (prune/sweeps.py). The
paper reads its headline from the curve of the *mean over tasks* ("about 70% of heads and 20% of
FFNs can be removed with little loss"), by eye; two written-down rules replace the eye here:

knee (the inflection point)
    the paper's knee is "the inflection point after which we observe a sharp decline in accuracy"
    (§5.2): flat (or rising) before, falling after. With slopes s_i = (y_{i+1} - y_i) / (x_{i+1} - x_i)
    in points per percentage point, an interior point x_i is a candidate when
      (a) the curve falls after it:        -s_i     > min_bend + z se(s_i)
      (b) it is flat or rising before it:  -s_{i-1} <= min_bend + z se(s_{i-1})
      (c) the bend is beyond the noise:    s_{i-1} - s_i > z se(s_{i-1} - s_i)
      (d) it never comes back: every later point lies below y_i.
    The knee is the candidate with the largest bend s_{i-1} - s_i (ties: the smaller percentage);
    with no candidate the curve has no knee (a straight line, a flat or a rising one never has one).
    min_bend (default 0.1 point per percentage point: 1 point per 10% step) is the least decline
    read as a decline. Without standard errors z = 0 and the rule is noise-free; with `se` (each
    point's standard error, same keys) the se of a slope or bend combines the points' errors as if
    independent (an upper bound: cells of one sweep share their documents, which only lowers it), and
    z is the one-sided normal quantile at 5% / m for the m interior points (Bonferroni: a straight or
    flat curve shows a knee in at most 5% of noisy draws, whatever the number of points).
tolerance (a second reading)
    the largest percentage p such that every measured q <= p keeps the metric within `tolerance`
    points of the unpruned (0%) value: y(q) >= y(0) - tolerance. Default 1 point. The curve is
    walked from 0% upward and stops at the first failure, so a noisy recovery later never counts.

grid knee (the combined point)
    the paper reads one cell of the heads x FFN grid (70%/20% at 0 shots): here the cell (h, f) at
    which each axis is at its own knee given the other, h = knee of the heads curve at f FFNs pruned
    and f = knee of the FFN curve at h heads pruned, found by alternating from the heads knee. The grid
    must reach past the point to read it: the default grid runs heads to 80% so 70% can be a knee.

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
from statistics import NormalDist
from typing import Any, Callable, Mapping, Sequence

from opt66b.placement import attention_head_params, ffn_params

from .intervals import KNEE_ITERS, KNEE_SEED, Cell, bootstrap_readings, interval_of, mean_se, per_task_cells
from .masks import count_for_percent

DEFAULT_MIN_BEND = 0.1  # points per percentage point
DEFAULT_TOLERANCE = 1.0  # points (metric x100)

RULES = {
    "knee": "the interior percentage where the curve, flat or rising before it (decline <= min_bend points per "
            "percentage point plus z standard errors), falls after it by more than min_bend plus z standard errors, "
            "bends by more than z standard errors and never comes back to its value; of several, the largest bend "
            "(ties: the smaller percentage); none otherwise (z = 0 without standard errors, else the one-sided "
            "normal quantile at 5% over the interior points)",
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


def _errors(pts: list[tuple[float, float]], se: Mapping[Any, float | None] | None) -> list[float]:
    """Each point's standard error from `se` (same keys as the curve; a missing one counts as 0)."""
    if se is None:
        return [0.0] * len(pts)
    by_x = {float(k): (0.0 if v is None else float(v)) for k, v in se.items()}
    if any(not math.isfinite(v) or v < 0 for v in by_x.values()):
        raise ValueError(f"standard errors must be finite and >= 0, got {sorted(by_x.items())}")
    return [by_x.get(x, 0.0) for x, _ in pts]


def knee_z(candidates: int, level: float = 0.05) -> float:
    """The one-sided normal quantile at level / candidates (Bonferroni over the interior points)."""
    return NormalDist().inv_cdf(1 - level / max(1, candidates))


def knee(curve: Mapping[Any, float], se: Mapping[Any, float | None] | None = None,
         min_bend: float = DEFAULT_MIN_BEND) -> float | None:
    """The knee of `curve` by the rule above; None with fewer than 3 points or no candidate."""
    pts = _points(curve)
    if len(pts) < 3:
        return None
    err = _errors(pts, se)
    z = knee_z(len(pts) - 2) if se is not None else 0.0
    best, best_bend = None, -math.inf
    for i in range(1, len(pts) - 1):
        (x0, y0), (x1, y1), (x2, y2) = pts[i - 1:i + 2]
        e0, e1, e2 = err[i - 1:i + 2]
        d1, d2 = x1 - x0, x2 - x1
        before, after = (y1 - y0) / d1, (y2 - y1) / d2  # slopes, points per percentage point
        bend = before - after
        se_bend = math.sqrt((e0 / d1) ** 2 + (e1 * (1 / d1 + 1 / d2)) ** 2 + (e2 / d2) ** 2)
        falls = -after > min_bend + z * math.hypot(e1, e2) / d2
        flat_before = -before <= min_bend + z * math.hypot(e0, e1) / d1
        stays_down = all(y < y1 for _, y in pts[i + 1:])
        if falls and flat_before and bend > z * se_bend and stays_down and bend > best_bend:
            best, best_bend = x1, bend  # strict: ties keep the smaller percentage
    return best


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


def grid_knee(grid: Mapping[Any, Mapping[Any, float]], se: Mapping[Any, Mapping[Any, float | None]] | None = None,
              min_bend: float = DEFAULT_MIN_BEND) -> tuple[float, float] | None:
    """The combined knee of grid[head %][FFN %] (the "grid knee" rule above): a cell (h, f) where h is
    the knee of the heads curve at f FFNs pruned and f the knee of the FFN curve at h heads pruned.
    Found by alternating the two from (knee of the heads curve at 0% FFNs, 0); a curve without a knee
    counts as 0%. None when neither axis has a knee. When the alternation cycles, the cycle's cell that
    removes the most units is taken (largest h + f, then h). se: each cell's standard error, same keys."""
    cells = {(float(h), float(f)): float(v) for h, row in grid.items() for f, v in row.items()}
    errs = {(float(h), float(f)): v for h, row in (se or {}).items() for f, v in row.items()}

    def along(fixed: float, axis: int) -> float | None:
        line = [c for c in cells if c[1 - axis] == fixed]
        return knee({c[axis]: cells[c] for c in line}, {c[axis]: errs.get(c) for c in line} if se else None, min_bend)

    h0 = along(0.0, 0)
    f0 = along(h0 or 0.0, 1)
    if h0 is None and f0 is None:
        return None
    path = [(h0 or 0.0, f0 or 0.0)]
    while True:
        h = along(path[-1][1], 0) or 0.0
        nxt = (h, along(h, 1) or 0.0)
        if nxt in path:
            cycle = path[path.index(nxt):]
            return max(cycle, key=lambda c: (c[0] + c[1], c[0]))
        path.append(nxt)


def headline(heads_curve: Mapping[Any, float] | None, ffn_curve: Mapping[Any, float] | None,
             grid: Mapping[Any, Mapping[Any, float]] | None, cfg: Any, min_bend: float = DEFAULT_MIN_BEND,
             tolerance: float = DEFAULT_TOLERANCE, errors: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The headline of one shot from its mean-over-seen-tasks curves, read two ways, for model config `cfg`.

    {"heads" | "ffn" | "both": {"knee": point, "tolerance": point}}: "knee" is the paper's reading
    (where the mean curve bends; `knee`, and `grid_knee` for the combined grid), "tolerance" the
    second reading (the largest share within `tolerance` points). A point is {head_percent,
    ffn_percent, heads_removed, ffns_removed, params_removed, value, drop_points} (value and drop in
    points of the metric x100, drop = unpruned - value), or None where the rule finds none.
    errors: {"heads": se curve, "ffn": se curve, "grid": se grid}, each point's standard error (the
    knee rule's noise; absent: noise-free)."""
    n_heads, n_ffn = cfg.num_layers * cfg.num_heads, cfg.num_layers
    per_head, per_ffn = attention_head_params(cfg), ffn_params(cfg)
    errors = errors or {}

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
                           "min_bend": min_bend, "tolerance_points": tolerance, "noise": bool(errors),
                           "params_per_head": per_head, "params_per_ffn": per_ffn}
    if heads_curve:
        src = {(float(x), 0.0): float(y) for x, y in heads_curve.items()}
        out["heads"] = {"knee": point(knee(heads_curve, errors.get("heads"), min_bend), 0.0, src),
                        "tolerance": point(within_tolerance(heads_curve, tolerance), 0.0, src)}
    if ffn_curve:
        src = {(0.0, float(x)): float(y) for x, y in ffn_curve.items()}
        out["ffn"] = {"knee": point(0.0, knee(ffn_curve, errors.get("ffn"), min_bend), src),
                      "tolerance": point(0.0, within_tolerance(ffn_curve, tolerance), src)}
    if grid:
        src = {(float(h), float(f)): float(v) for h, row in grid.items() for f, v in row.items()}
        at = grid_knee(grid, errors.get("grid"), min_bend)
        best = max((point(h, f, src) for h, f in grid_within_tolerance(grid, tolerance)),
                   key=lambda r: (r["params_removed"], r["head_percent"]), default=None)
        out["both"] = {"knee": point(*at, src) if at else None, "tolerance": best}
    return out


def curve_points(curve: Mapping[Any, float], min_bend: float = DEFAULT_MIN_BEND,
                 tolerance: float = DEFAULT_TOLERANCE, se: Mapping[Any, float | None] | None = None
                 ) -> dict[str, float | None]:
    """Both rules on one curve: {"knee": %, "within_tolerance": %}."""
    return {"knee": knee(curve, se, min_bend), "within_tolerance": within_tolerance(curve, tolerance)}


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


def mean_errors(table: Mapping[str, Any], tasks: Any, shot: str) -> dict[str, dict[str, float | None]]:
    """{head %: {FFN %: standard error of the mean over `tasks`}} from a sweep table's per-cell errors
    (prune/intervals.mean_se: independent tasks), the `se` the knee rule reads beside mean_curve/mean_grid."""
    stderr = table.get("stderr", {})
    have = [t for t in tasks if shot in stderr.get(t, {})]
    if not have:
        return {}
    first = stderr[have[0]][shot]
    return {h: {f: mean_se([stderr[t][shot].get(h, {}).get(f) for t in have]) for f in row} for h, row in first.items()}


def axis_errors(grid_errors: Mapping[str, Mapping[str, float | None]], axis: str) -> dict[float, float | None]:
    """One axis of mean_errors (heads at FFN 0%, FFNs at heads 0%), keyed like sweep_curve."""
    if axis == "heads":
        return {float(h): row.get("0") for h, row in grid_errors.items() if "0" in row}
    return {float(f): v for f, v in grid_errors.get("0", {}).items()}


def knee_intervals(heads: Mapping[str, Any] | None, ffn: Mapping[str, Any] | None, grid: Mapping[str, Any] | None,
                   tasks: Callable[[Mapping[str, Any]], Sequence[str]], shot: str, min_bend: float = DEFAULT_MIN_BEND,
                   iters: int = KNEE_ITERS, seed: int = KNEE_SEED) -> dict[str, Any]:
    """{"heads" | "ffn" | "both": {"knee": {lo, hi, none_share, iters}}} for one shot: the 95% bootstrap
    interval of each knee of the mean over `tasks(table)` (the seen tasks) of the own-ranking sweeps. Each
    resample's knee is read with the measured curve's standard errors (the rule's noise threshold stays put
    while the documents move)."""
    out: dict[str, Any] = {}
    for name, table in (("heads", heads), ("ffn", ffn)):
        per_task = per_task_cells(table, tasks(table), shot) if table else {}
        se = axis_errors(mean_errors(table, tasks(table), shot), name) if table else None
        axis = 0 if name == "heads" else 1
        readings = bootstrap_readings(per_task, lambda m, a=axis: knee(
            {c[a]: v for c, v in m.items() if c[1 - a] == 0.0}, se or None, min_bend), iters, seed)
        out[name] = {"knee": interval_of(readings)}
    per_task = per_task_cells(grid, tasks(grid), shot) if grid else {}
    grid_se = mean_errors(grid, tasks(grid), shot) if grid else None

    def read_grid(m: dict[Cell, float]):
        g: dict[float, dict[float, float]] = {}
        for (h, f), v in m.items():
            g.setdefault(h, {})[f] = v
        return grid_knee(g, grid_se or None, min_bend)
    cells = bootstrap_readings(per_task, read_grid, iters, seed)
    out["both"] = {"knee": {"heads": interval_of([c[0] if c else None for c in cells]),
                            "ffn": interval_of([c[1] if c else None for c in cells])} if cells else None}
    return out
