"""What precision a run buys, priced for the quantity the paper reads: the drop of the mean over its
seen tasks at its own points (heads 70%, FFNs 20% / 10%, combined 70/20, 70/10, 60/20; prune/paper.py).

`--plan` prints, per task, the 95% half-width of its accuracy and of its paired drop at the planned
documents, and the half-width of the mean drop over the seen tasks. `--target-halfwidth X` finds the
documents per task that bring that mean's half-width to X points at the least cost:

    mean drop  D = (1/T) sum_t d_t,   Var D = (1/T^2) sum_t s_t^2 / n_t
    cost       sum_t c_t n_t          (c_t: FLOPs per unit of task t, from the plan's own work units)
    least cost at Var D = (X / 1.96)^2:  n_t proportional to s_t / sqrt(c_t)   (Lagrange), each capped at
               the task's N_t units; capped tasks are fixed and the rest re-solved; if every task is
               capped the target is out of reach and the best half-width, 1.96 / T sqrt(sum s_t^2 / N_t),
               is printed instead.

s_t is the sd of the per-unit paired difference d_i = base_i - pruned_i (points). From an earlier run in
--out: the largest sd over the paper's points that its sweep tables hold, per task. Else the PRIOR: a
third of the units change their answer at the paper's points with a net drop of 5 points (the paper's
combined drops are 4-6), s = 100 sqrt(q - drop^2) = 57 points: a stated guess, printed with the plan.
A unit is a document, except for MultiRC, whose metric is per question (acc_all): its units are
questions, its documents the answer rows of those questions. c_t is the FLOPs of every work unit of the
plan that grows with task t's evaluation documents (evaluation, FFN oracle, sweeps; study/plan.DOC_SCALED)
divided by its planned units. The knee's location is not priced (its precision depends on the curve's
shape, not only on the noise): the plan says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from opt66b.runs.layout import RunLayout, shots_name
from prune.intervals import Z95

PRIOR = {"changed_share": 1 / 3, "drop": 0.05}
PRIOR_SD = 100 * math.sqrt(PRIOR["changed_share"] - PRIOR["drop"] ** 2)


def allocate(sds: Sequence[float], costs: Sequence[float], caps: Sequence[int], target: float
             ) -> tuple[list[int], float, bool]:
    """(units per task, the half-width of the mean they give, reached): the least-cost units for a 95%
    half-width `target` (points) of the mean over the tasks (module docstring)."""
    t = len(sds)
    budget = (target / Z95) ** 2 * t * t  # sum_t s_t^2 / n_t may not exceed this
    capped: set[int] = set()
    while True:
        free = [i for i in range(t) if i not in capped]
        room = budget - sum(sds[i] ** 2 / caps[i] for i in capped)
        if not free or room <= 0:
            n = list(caps)
            break
        scale = sum(sds[i] * math.sqrt(costs[i]) for i in free) / room
        want = {i: sds[i] / math.sqrt(costs[i]) * scale for i in free}
        over = [i for i in free if want[i] >= caps[i]]
        if not over:
            n = [caps[i] if i in capped else max(1, math.ceil(want[i])) for i in range(t)]
            break
        capped.update(over)
    width = Z95 / t * math.sqrt(sum(s * s / k for s, k in zip(sds, n)))
    return n, width, width <= target * (1 + 1e-9)


def _units(task: Any, docs: Sequence[dict]) -> int:
    """The metric's units among `docs`: questions for MultiRC (acc_all), else documents."""
    if task.METRICS[task.PRIMARY_METRIC] == "acc_all":
        return len({(d["idx"]["paragraph"], d["idx"]["question"]) for d in docs})
    return len(docs)


def _previous(out: Path | None, task: str, shots: Sequence[int]) -> tuple[float | None, float | None]:
    """(primary mean p, largest sd of the per-unit paired differences at the paper's points, in points) of
    `task` from an earlier run in `out`."""
    import numpy as np

    from opt66b.fileio import read_json
    from prune.paper import PAPER_HEADLINE
    from tasks.registry import ALL_TASKS
    from tasks.uncertainty import decode_bits

    if out is None:
        return None, None
    layout, metric = RunLayout(out), ALL_TASKS[task].PRIMARY_METRIC
    ps = [(read_json(layout.results(k)).get("results", {}).get(task) or {}).get(metric)
          for k in shots if layout.results(k).is_file()]
    ps = [float(p) for p in ps if p is not None]
    sds = []
    for name in ("heads-own", "ffn-own", "grid-own"):
        if not layout.table(name).is_file():
            continue
        cells = read_json(layout.table(name)).get("per_doc", {}).get(task, {})
        for k in shots:
            grid = cells.get(shots_name(k), {})
            base = grid.get("0", {}).get("0")
            for point in PAPER_HEADLINE.get(k, {}).values():
                bits = grid.get(f"{point.get('head_percent', 0):g}", {}).get(f"{point.get('ffn_percent', 0):g}")
                if base and bits and len(bits) == len(base) > 1:
                    sds.append(100 * float(np.std(decode_bits(base) - decode_bits(bits), ddof=1)))
    return (sum(ps) / len(ps) if ps else None), (max(sds) if sds else None)


def precision_plan(data: Path, tasks: Sequence[str], shots: Sequence[int], limit: int | None,
                   doc_flops: dict[str, float], out: Path | None = None, target: float | None = None) -> dict[str, Any]:
    """Per task: units, half-widths at the planned documents, sd and FLOPs per unit; the mean drop's
    half-width over the seen tasks; with `target` the least-cost allocation that reaches it."""
    from tasks.registry import get_task, seen_in

    members = seen_in(list(tasks)) or list(tasks)
    rows = []
    for name in tasks:
        task = get_task(name, data)
        docs = task.eval_docs()
        planned = docs[:limit] if limit else docs
        n, full = _units(task, planned), _units(task, docs)
        p, sd = _previous(out, name, shots)
        source = "earlier run in --out" if sd is not None else "prior (study/precision.PRIOR)"
        p = 0.5 if p is None else min(max(p, 1e-3), 1 - 1e-3)
        sd = PRIOR_SD if sd is None else max(sd, 1.0)  # a measured 0 (nothing changed) would price 1 unit
        rows.append({"task": name, "unit": "question" if task.METRICS[task.PRIMARY_METRIC] == "acc_all" else "document",
                     "units": n, "full_units": full, "docs": len(planned), "full_docs": len(docs),
                     "p": p, "sd_points": sd, "source": source, "in_mean": name in members,
                     "acc_halfwidth": 100 * Z95 * math.sqrt(p * (1 - p)) / math.sqrt(n),
                     "drop_halfwidth": Z95 * sd / math.sqrt(n),
                     "flops": doc_flops.get(name, 0.0), "flops_per_unit": doc_flops.get(name, 0.0) / max(n, 1)})
    mean = [r for r in rows if r["in_mean"]]
    plan: dict[str, Any] = {"rows": rows, "mean_of": [r["task"] for r in mean], "prior": PRIOR,
                            "prior_sd_points": PRIOR_SD, "knee": "not priced",
                            "mean_halfwidth": Z95 / len(mean) * math.sqrt(sum(r["sd_points"] ** 2 / r["units"]
                                                                                for r in mean)) if mean else None}
    if target is not None and mean:
        plan["target"] = _target(mean, target)
    return plan


def _target(mean: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The allocation for `target` over the mean's tasks, with its FLOPs beside the full data's."""
    costs = [max(r["flops_per_unit"], 1.0) for r in mean]
    units, width, reached = allocate([r["sd_points"] for r in mean], costs, [r["full_units"] for r in mean], target)
    per = []
    for r, k, c in zip(mean, units, costs):
        docs = k if r["unit"] == "document" else math.ceil(k * r["full_docs"] / r["full_units"])
        per.append({"task": r["task"], "units": k, "docs": min(docs, r["full_docs"]), "flops": k * c,
                    "full_flops": r["full_units"] * c, "halfwidth": Z95 * r["sd_points"] / math.sqrt(k)})
    return {"halfwidth": target, "reached": reached, "achieved_halfwidth": width, "tasks": per,
            "flops": sum(p["flops"] for p in per), "full_flops": sum(p["full_flops"] for p in per),
            "planned_flops": sum(r["flops"] for r in mean)}


def format_precision(prec: dict[str, Any], plan: dict[str, Any] | None = None) -> str:
    """The plan's precision block: per task, the mean over the seen tasks, and the --target-halfwidth allocation."""
    lines = ["", "precision (95% half-widths in points; study/precision.py):",
             f"{'task':<16}{'units':>7}{'of':>7}{'accuracy':>10}{'paired drop':>13}{'sd(d)':>7}  source"]
    for r in prec["rows"]:
        unit = "" if r["unit"] == "document" else " (questions)"
        lines.append(f"{r['task']:<16}{r['units']:>7}{r['full_units']:>7}{r['acc_halfwidth']:>10.1f}"
                     f"{r['drop_halfwidth']:>13.1f}{r['sd_points']:>7.1f}  {r['source']}{unit}")
    if prec["mean_halfwidth"] is not None:
        lines.append(f"mean drop over {len(prec['mean_of'])} task(s) ({', '.join(prec['mean_of'])}): 95% half-width "
                     f"{prec['mean_halfwidth']:.2f} points at these documents")
    if any(r["source"].startswith("prior") for r in prec["rows"]):
        lines.append(f"prior sd of a paired difference: {prec['prior_sd_points']:.1f} points (a third of the units change "
                     "at the paper's points, net drop 5 points); a run in --out replaces it with its own")
    lines.append("knee location: not priced (its precision depends on the curve's shape; the report's bootstrap "
                 "interval measures it)")
    t = prec.get("target")
    if t:
        lines += _target_lines(t, plan)
    return "\n".join(lines)


def _target_lines(t: dict[str, Any], plan: dict[str, Any] | None) -> list[str]:
    from .plan import duration_text, flops_text
    lines = ["", f"--target-halfwidth {t['halfwidth']:g} on the mean drop over the seen tasks: least-cost documents "
                 "(n_t proportional to sd_t / sqrt(FLOPs per unit), capped at the data):",
             f"{'task':<16}{'units':>7}{'docs':>7}{'task half-width':>17}{'FLOPs':>11}{'full data':>11}"]
    lines += [f"{p['task']:<16}{p['units']:>7}{p['docs']:>7}{p['halfwidth']:>17.1f}{flops_text(p['flops']):>11}"
              f"{flops_text(p['full_flops']):>11}" for p in t["tasks"]]
    if t["reached"]:
        lines.append(f"reached: half-width {t['achieved_halfwidth']:.2f} points; the tasks' document-scaled FLOPs "
                     f"{flops_text(t['flops'])} against {flops_text(t['full_flops'])} on the full data ({t['flops'] / max(t['full_flops'], 1):.1%})")
    else:
        lines.append(f"out of reach with the documents there are: all of them give a half-width of "
                     f"{t['achieved_halfwidth']:.2f} points at best")
    if plan and plan["total"].get("flops"):
        total = plan["total"]["flops"] - t["planned_flops"] + t["flops"]
        span = plan["total"].get("makespan_seconds")
        scaled = "" if not span else (f", makespan about {duration_text(span * total / plan['total']['flops'])} "
                                      "(the plan's makespan scaled by FLOPs)")
        lines.append(f"the whole study at these documents (other tasks as planned): {flops_text(total)} FLOPs against the plan's "
                     f"{flops_text(plan['total']['flops'])}{scaled}. `all` takes one --limit, a plain cap: --limit "
                     f"{max(p['docs'] for p in t['tasks'])} gives every task at least its count; or run a task with its own")
    return lines
