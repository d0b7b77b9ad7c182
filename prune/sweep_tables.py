"""A sweep's merged table: every unit file of a pruning sweep read back into one JSON, with each cell's
standard error, its paired drop against the task's unpruned cell and the mean over the seen tasks
(prune/intervals.py). Written by rank 0 once every process's units are on disk (prune/sweeps.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from opt66b.fileio import read_json
from opt66b.runs.layout import shots_name
from opt66b.runs.results import write_json
from tasks.registry import seen_in
from tasks.uncertainty import PER_DOC_KEY

from .intervals import mean_interval, mean_se, paired_drop, value_se
from .masks import count_for_percent


def cell_intervals(per_doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stderr, paired) in the table's layout [task][shots-K][head %][ffn %]: each cell's standard error
    and its paired drop against the task's unpruned cell (0, 0) (prune/intervals.py), None where a
    vector is missing (units written before vectors were stored)."""
    stderr: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    for task, shots in per_doc.items():
        for shot, rows in shots.items():
            base = rows.get("0", {}).get("0")
            for h, row in rows.items():
                for f, bits in row.items():
                    stderr.setdefault(task, {}).setdefault(shot, {}).setdefault(h, {})[f] = value_se(bits)
                    paired.setdefault(task, {}).setdefault(shot, {}).setdefault(h, {})[f] = paired_drop(base, bits)
    return stderr, paired


def merge_table(root: Path, table: Path, sweep: str, ranking: str, units: Sequence[Any], cfg: Any,
                settings: dict[str, Any]) -> dict[str, Any] | None:
    """Merge unit files into {results: {task: {shots-K: {head%: {ffn%: points}}}}, stderr, paired (drop
    against the unpruned cell with its paired 95% interval), per_doc (the 0/1 strings every interval is
    rebuilt from), mean_over_tasks (over the seen tasks) with mean_over_tasks_ci, counts}.

    Units still missing (another process still running, or a killed run) are listed, not invented.
    """
    from opt66b.runs.results import run_metadata

    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    per_doc: dict[str, dict[str, dict[str, dict[str, str | None]]]] = {}
    missing = []
    for u in units:
        if not u.path(root).is_file():
            missing.append(str(u.path(root)))
            continue
        rec = read_json(u.path(root))
        shot, h, f = shots_name(u.shots), f"{u.head_percent:g}", f"{u.ffn_percent:g}"
        results.setdefault(u.task, {}).setdefault(shot, {}).setdefault(h, {})[f] = rec["value"]
        per_doc.setdefault(u.task, {}).setdefault(shot, {}).setdefault(h, {})[f] = rec.get(PER_DOC_KEY)
    stderr, paired = cell_intervals(per_doc)
    # the mean over the paper's seen tasks (all tasks when none is seen), as its figures draw it
    members = seen_in(results) or sorted(results)
    mean: dict[str, dict[str, dict[str, float]]] = {}
    mean_ci: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    for shot in sorted({shots_name(u.shots) for u in units}):
        cells = {(f"{u.head_percent:g}", f"{u.ffn_percent:g}") for u in units}
        for h, f in sorted(cells, key=lambda c: (float(c[0]), float(c[1]))):
            have = [t for t in members if f in results.get(t, {}).get(shot, {}).get(h, {})]
            if have and len(have) == len([t for t in members if t in {u.task for u in units}]):
                mean.setdefault(shot, {}).setdefault(h, {})[f] = sum(results[t][shot][h][f] for t in have) / len(have)
                drops = [paired.get(t, {}).get(shot, {}).get(h, {}).get(f) for t in have]
                whole = None not in drops
                mean_ci.setdefault(shot, {}).setdefault(h, {})[f] = {
                    "se": mean_se([stderr.get(t, {}).get(shot, {}).get(h, {}).get(f) for t in have]),
                    "drop": sum(d["drop"] for d in drops) / len(drops) if whole else None,
                    "drop_se": mean_se([d["se"] for d in drops]) if whole else None,
                    "drop_ci95": list(mean_interval([d["drop"] for d in drops], [d["drop_ci95"] for d in drops]))
                    if whole else None}
    hp = sorted({u.head_percent for u in units})
    fp = sorted({u.ffn_percent for u in units})
    out = {"sweep": sweep, "ranking": ranking, "layout": "results[task][shots-K][head %][ffn %] = primary metric x100",
           "head_percents": hp, "ffn_percents": fp,
           "counts": {"heads": {f"{p:g}": count_for_percent(p, cfg.num_layers * cfg.num_heads) for p in hp},
                      "ffn": {f"{p:g}": count_for_percent(p, cfg.num_layers) for p in fp}},
           "results": results, "mean_over_tasks": mean, "mean_over_tasks_of": members,
           "stderr": stderr, "paired": paired, "mean_over_tasks_ci": mean_ci, PER_DOC_KEY: per_doc,
           "missing_units": missing, "meta": run_metadata(**settings)}
    write_json(table, out)
    return out
