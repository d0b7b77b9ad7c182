"""What precision a run buys: `--plan` prices the 95% half-width of each task's accuracy and of a paired
pruning drop, and `--target-halfwidth POINTS` finds the fewest documents per task that reach it.

For a task evaluated on n documents (MultiRC: rows; its metric groups them into questions, so its
half-widths are somewhat wider than printed) with primary-metric mean p:
    accuracy half-width  = 100 * 1.96 * sqrt(p (1 - p)) / sqrt(n)
    paired drop          = 100 * 1.96 * sd(d) / sqrt(n),   d_i = base_i - cell_i
With nothing run yet, p = 0.5 (the widest) and sd(d) = sqrt(2 p (1 - p)) = 0.71, the unpaired bound
(the paired sd is smaller whenever the two evaluations agree on documents more than chance, which
pruning does). With a previous run in --out, p comes from its eval/shots-K/results.json and sd(d)
from the largest paired standard error of its own-ranking head sweep (prune/heads-own.json), so the
numbers describe this model.
The documents needed for a target half-width h are n = ceil((100 * 1.96 * sd / h)^2), capped at the
full split. Every model step's cost grows linearly with the documents it scores, so the cost of a
choice is reported as the evaluated tokens relative to the full data (a sample of each task's first
documents sets its tokens per document).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Sequence

from opt66b.runs.layout import RunLayout
from prune.intervals import Z95

SAMPLE_DOCS = 32  # docs tokenised per task to price a document (tokens per doc, context + choices)


def _previous(out: Path | None, task: str, shots: Sequence[int]) -> tuple[float | None, float | None]:
    """(primary mean p, sd of the paired differences) of `task` from a previous run in `out`."""
    from opt66b.fileio import read_json
    from tasks.registry import ALL_TASKS

    if out is None:
        return None, None
    metric = ALL_TASKS[task].PRIMARY_METRIC
    ps = []
    for k in shots:
        path = RunLayout(out).results(k)
        if path.is_file():
            value = (read_json(path).get("results", {}).get(task) or {}).get(metric)
            if value is not None:
                ps.append(float(value))
    sds = []
    table = RunLayout(out).table("heads-own")
    if table.is_file():
        for rows in (read_json(table).get("paired", {}).get(task) or {}).values():
            for row in rows.values():
                for cell in row.values():
                    if cell and cell.get("n", 0) > 1:
                        sds.append(cell["se"] / 100 * math.sqrt(cell["n"]))
    return (sum(ps) / len(ps) if ps else None), (max(sds) if sds else None)


def _tokens_per_doc(task: Any, tokenizer: Any) -> float:
    """Mean tokens of context + continuations over the first SAMPLE_DOCS eval docs (0-shot prompts)."""
    docs = task.eval_docs()[:SAMPLE_DOCS]
    total = 0
    for doc in docs:
        ctx = task.fewshot_context(doc, 0, random.Random(0))  # 0 shots: the generator draws nothing
        total += sum(len(tokenizer.encode(r.context)) + len(tokenizer.encode(r.continuation))
                     for r in task.construct_requests(doc, ctx))
    return total / max(len(docs), 1)


def precision_plan(data: Path, tasks: Sequence[str], shots: Sequence[int], limit: int | None, tokenizer: Any,
                   out: Path | None = None, target: float | None = None) -> dict[str, Any]:
    """Per task: docs, expected 95% half-widths (points), and with `target` the docs that reach it."""
    from tasks.registry import get_task

    rows, cost, cost_full, cost_target = [], 0.0, 0.0, 0.0
    for name in tasks:
        task = get_task(name, data)
        full = len(task.eval_docs())
        n = min(limit, full) if limit else full
        p, sd_d = _previous(out, name, shots)
        source = "previous run" if p is not None else "p = 0.5 (nothing run yet)"
        p = 0.5 if p is None else min(max(p, 1e-3), 1 - 1e-3)
        sd_acc = math.sqrt(p * (1 - p))
        sd_d = math.sqrt(2 * p * (1 - p)) if sd_d is None else sd_d
        row = {"task": name, "docs": n, "full_docs": full, "p": p, "source": source,
               "acc_halfwidth": 100 * Z95 * sd_acc / math.sqrt(n), "drop_halfwidth": 100 * Z95 * sd_d / math.sqrt(n)}
        per_doc = _tokens_per_doc(task, tokenizer)
        cost += n * per_doc
        cost_full += full * per_doc
        if target is not None:
            need = min(full, math.ceil((100 * Z95 * sd_d / target) ** 2))
            row.update(target_docs=need, target_reached=need < full or 100 * Z95 * sd_d / math.sqrt(full) <= target)
            cost_target += need * per_doc
        rows.append(row)
    out_plan: dict[str, Any] = {"rows": rows, "tokens_chosen": cost, "tokens_full": cost_full,
                                "rule": "half-width = 100 * 1.96 * sd / sqrt(n); study/precision.py"}
    if target is not None:
        out_plan.update(target_halfwidth=target, tokens_target=cost_target,
                        single_limit=max(r["target_docs"] for r in rows))
    return out_plan


def format_precision(prec: dict[str, Any]) -> str:
    lines = ["", "precision (95% half-width in points; study/precision.py):",
             f"{'task':<16}{'docs':>7}{'of':>7}{'accuracy':>10}{'paired drop':>13}"
             + (f"{'docs for target':>22}" if "target_halfwidth" in prec else "") + "  source"]
    for r in prec["rows"]:
        extra = ""
        if "target_halfwidth" in prec:
            extra = f"{r['target_docs']:>22}" if r["target_reached"] else f"{str(r['target_docs']) + ' (all; short)':>22}"
        lines.append(f"{r['task']:<16}{r['docs']:>7}{r['full_docs']:>7}{r['acc_halfwidth']:>10.1f}"
                     f"{r['drop_halfwidth']:>13.1f}{extra}  {r['source']}")
    share = prec["tokens_chosen"] / prec["tokens_full"] if prec["tokens_full"] else 1.0
    lines.append(f"evaluated tokens at these docs: {share:.1%} of the full data")
    if "target_halfwidth" in prec:
        t = prec["tokens_target"] / prec["tokens_full"] if prec["tokens_full"] else 1.0
        lines.append(f"--target-halfwidth {prec['target_halfwidth']:g}: per-task docs above cost {t:.1%} of the full "
                     f"data's evaluated tokens (and of its time); `all --limit {prec['single_limit']}` gives every task at least its "
                     "count (capped at its data; `all` takes one --limit, run a task alone for a per-task count)")
    return "\n".join(lines)
