"""Cross-task transfer as the paper runs it (Bansal et al. 2023, §5, Figs. 9, 21, 22).

For each chosen task (COPA, Winogrande, ReCoRD in the paper) and each shot count, the task is pruned
with four head rankings: its own, the aggregate (mean over the seen tasks, prune/aggregate.py), and
the rankings of the two other seen tasks whose importance correlates highest and lowest with its own.
The unseen tasks (MathQA, LAMBADA) are pruned with their own ranking and the aggregate's; both curves
come from the ordinary `prune heads --ranking own|aggregate` sweeps.

Partners are read from the correlation output of `run.py correlate` (correlations.json), under both
statistics it holds:
    "spearman"               the true Spearman rho of the importance vectors
    "paper_argsort_pearson"  the paper's SRCC as its code computes it (Pearson of argsort vectors)
The paper's published partners (its crosstask_accuracy script) were picked from its own SRCC
figures, i.e. from the "paper_argsort_pearson" variant; the "spearman" partners say which tasks
really share important heads. Both are run when they differ.

Candidates are the seen tasks with importance at that shot, the task itself excluded. Ties: the
task listed first in correlations.json wins (its order is the importance files' sorted order).

Substitutes: a chosen task without importance at a shot (its data is missing, e.g. no ReCoRD eval
split) is replaced by the first seen task, in PAPER_SEEN_TASKS order, that has importance, is not
chosen already and is not itself a substitute; the substitution is recorded in the plan.
"""

from __future__ import annotations

from typing import Any, Sequence

from .aggregate import PAPER_SEEN_TASKS, PAPER_UNSEEN_TASKS

PAPER_TRANSFER_TASKS = ("copa", "winogrande", "record")
VARIANTS = ("paper_argsort_pearson", "spearman")
PAPER_CHOICE_VARIANT = "paper_argsort_pearson"
DEFAULT_PERCENTS = (0, 10, 30, 50, 70, 90)  # the paper's transfer points, plus the unpruned model


def _matrix(block: dict[str, Any], variant: str) -> list[list[float | None]]:
    if variant == "spearman":
        return block["spearman"]["rho"]
    if variant == "paper_argsort_pearson":
        return block["paper_argsort_pearson"]
    raise ValueError(f"unknown correlation variant {variant!r}; choose from {VARIANTS}")


def partners(block: dict[str, Any], task: str, variant: str, candidates: Sequence[str]) -> dict[str, Any]:
    """{"high": (task, value), "low": (task, value)} for `task` in one shot's correlation block.

    block: correlations.json["shots"][K] ({"tasks": [...], "spearman": {"rho": M}, "paper_argsort_pearson": M}).
    candidates: tasks allowed as partners (e.g. the seen tasks); `task` itself is never its own partner.
    """
    names = block["tasks"]
    if task not in names:
        raise KeyError(f"{task!r} has no importance at this shot (correlated tasks: {', '.join(names)})")
    row = _matrix(block, variant)[names.index(task)]
    pool = [(n, row[i]) for i, n in enumerate(names) if n != task and n in candidates and row[i] is not None]
    if not pool:
        raise ValueError(f"no partner candidates for {task!r} among {list(candidates)}")
    high = max(pool, key=lambda p: p[1])  # max/min keep the first of equal values: listed order
    low = min(pool, key=lambda p: p[1])
    return {"high": {"task": high[0], "value": high[1]}, "low": {"task": low[0], "value": low[1]}}


def choose_tasks(available: Sequence[str], wanted: Sequence[str] = PAPER_TRANSFER_TASKS,
                 seen: Sequence[str] = PAPER_SEEN_TASKS) -> list[dict[str, str]]:
    """[{"task", "instead_of"?}] for `wanted`, with the substitution rule in the module docstring."""
    chosen: list[dict[str, str]] = []
    used = set(w for w in wanted if w in available)
    for w in wanted:
        if w in available:
            chosen.append({"task": w})
            continue
        sub = next((t for t in seen if t in available and t not in used), None)
        if sub is not None:
            used.add(sub)
            chosen.append({"task": sub, "instead_of": w})
    return chosen


def transfer_plan(correlations: dict[str, Any], wanted: Sequence[str] = PAPER_TRANSFER_TASKS,
                  seen: Sequence[str] = PAPER_SEEN_TASKS, unseen: Sequence[str] = PAPER_UNSEEN_TASKS,
                  variants: Sequence[str] = VARIANTS) -> dict[str, Any]:
    """The whole transfer protocol from correlations.json: per shot, the chosen tasks with their
    rankings (own, aggregate, and the high / low partner under each variant), and the unseen tasks
    with own and aggregate. `runs` lists the distinct (shot, target, source) pruning runs the
    partners need (own and aggregate come from the ordinary sweeps)."""
    shots: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    for key, block in sorted(correlations["shots"].items(), key=lambda kv: int(kv[0])):
        available = [t for t in block["tasks"] if t in seen]
        entries = []
        for choice in choose_tasks(available, wanted, seen):
            task = choice["task"]
            entry: dict[str, Any] = {**choice, "rankings": {"own": task, "aggregate": "aggregate"}, "partners": {}}
            for variant in variants:
                entry["partners"][variant] = partners(block, task, variant, available)
                for side in ("high", "low"):
                    source = entry["partners"][variant][side]["task"]
                    if not any(r["shots"] == int(key) and r["task"] == task and r["ranking"] == source for r in runs):
                        runs.append({"shots": int(key), "task": task, "ranking": source})
            entries.append(entry)
        shots[key] = {"chosen": entries,
                      "unseen": [{"task": t, "rankings": {"own": t, "aggregate": "aggregate"}}
                                 for t in unseen if t in block["tasks"]]}
    return {"paper_choice_variant": PAPER_CHOICE_VARIANT, "variants": list(variants), "shots": shots, "runs": runs}
