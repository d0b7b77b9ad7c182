"""From flat per-request results to task metrics: split per doc, process_results, aggregate.

Mirrors lm-evaluation-harness v0.3 `evaluator.evaluate` (the part after `lm.loglikelihood`): results
come back in request order, each doc's slice goes to `task.process_results`, and the per-doc values
of each metric are combined by `task.aggregate` (tasks/base.py owns the aggregation rules: mean,
perplexity, acc_all, f1_macro). This module adds nothing numerical of its own.
"""

from __future__ import annotations

from typing import Any, Sequence

from .base import Instance, Result, Task
from .uncertainty import (BOOTSTRAP_ITERS, BOOTSTRAP_SEED, PER_DOC_KEY, encode_bits, metric_interval, metric_stderr,
                          primary_units)


def split_results(instances: Sequence[Instance], results: Sequence[Result]) -> list[list[Result]]:
    """Cut the flat request-ordered results into one list per instance (its requests, in order)."""
    need = sum(len(inst.requests) for inst in instances)
    if len(results) != need:
        raise ValueError(f"got {len(results)} results for {need} requests of {len(instances)} docs")
    out, start = [], 0
    for inst in instances:
        out.append(list(results[start:start + len(inst.requests)]))
        start += len(inst.requests)
    return out


def doc_metrics(task: Task, instances: Sequence[Instance], results: Sequence[Result]) -> list[dict[str, Any]]:
    """task.process_results per doc: one {metric: per-doc value} dict per instance."""
    per_doc = []
    for inst, res in zip(instances, split_results(instances, results)):
        values = task.process_results(inst.doc, res)
        missing = set(task.METRICS) - set(values)
        if missing:
            raise KeyError(f"{task.NAME}.process_results returned no {sorted(missing)} for doc {inst.doc_id}")
        per_doc.append(values)
    return per_doc


def aggregate(task: Task, per_doc: Sequence[dict[str, Any]]) -> dict[str, float]:
    """{metric: aggregated value} over the docs, in the task's METRICS order."""
    if not per_doc:
        raise ValueError(f"{task.NAME}: no docs to aggregate (empty eval split or --limit 0?)")
    return {m: float(task.aggregate(m, [d[m] for d in per_doc])) for m in task.METRICS}


def task_metrics(task: Task, instances: Sequence[Instance], results: Sequence[Result]) -> dict[str, float]:
    """Flat request-ordered results -> the task's aggregated metrics."""
    return aggregate(task, doc_metrics(task, instances, results))


def task_metrics_with_errors(task: Task, instances: Sequence[Instance], results: Sequence[Result],
                             iters: int = BOOTSTRAP_ITERS, seed: int = BOOTSTRAP_SEED,
                             intervals: bool = False) -> dict[str, Any]:
    """task_metrics plus `<metric>_stderr` for every metric (tasks/uncertainty.py: lm-eval's rules) and
    PER_DOC_KEY, the primary metric's per-unit 0/1 string (None if it is not 0/1 per unit); with
    `intervals`, `<metric>_ci95` [low, high] too (exact for proportions, else a 20,000-resample bootstrap:
    asked for by the evaluation step, not by the masked runs of a sweep, which read the 0/1 strings)."""
    per_doc = doc_metrics(task, instances, results)
    out: dict[str, Any] = aggregate(task, per_doc)
    for m, rule in task.METRICS.items():
        out[f"{m}_stderr"] = metric_stderr(rule, [d[m] for d in per_doc], iters, seed)
        if intervals:
            ci = metric_interval(rule, [d[m] for d in per_doc])
            out[f"{m}_ci95"] = None if ci is None else [ci[0], ci[1]]
    primary = task.PRIMARY_METRIC
    out[PER_DOC_KEY] = encode_bits(primary_units(task.METRICS[primary], [d[primary] for d in per_doc]))
    return out


def public_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics and their standard errors, as results.json holds them (the per-doc string apart)."""
    return {k: v for k, v in metrics.items() if k != PER_DOC_KEY}


def primary_points(metrics: dict[str, float], metric: str) -> float:
    """The task's primary metric in points (x100), as the paper's plots read results[task][metric]*100."""
    if metric not in metrics:
        raise KeyError(f"evaluation returned no {metric!r}; it has {sorted(metrics)}")
    return 100.0 * float(metrics[metric])
