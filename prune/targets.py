"""What the choice of importance targets does to the rankings: this run's protocol against the other.

The paper's code builds the importance examples of seven tasks differently from lm-eval (ARC-Easy,
ARC-Challenge, OpenBookQA, HellaSwag, PIQA and MathQA score the gold choice without its leading space;
WSC keeps only its positive rows; `Task.PAPER_TARGETS_DIFFER`). `run.py all` computes those tasks'
importance under the other protocol's targets too (OUT/importance-<other>/), and this module says how
far that moves every ranking the study uses, so no reader has to guess:

    per task   Spearman rho between the task's ranking under the two targets, and the share of its
               top 30% heads the two keep in common;
    aggregate  the same for the aggregate ranking, rebuilt with the other targets: the mean over the
               seen tasks present, each from the other run where it has a file there, else this run's
               (the tasks whose targets do not differ have identical examples, so identical importance).

Both sides use the same denominator (the one this run's "importance" holds), so only the targets
differ. Written into correlations.json["targets"] by `run.py correlate --compare-importance DIR`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opt66b.runs.results import read_tensors
from opt66b.runs.layout import shots_dir
from tasks.registry import PAPER_SEEN_TASKS

from . import stats
from .masks import IMPORTANCE_KEY, aggregate_importance, read_importance


def _ranking_key(path: Path) -> str:
    """The explicit key holding what this file's "importance" is (older files: "importance" itself)."""
    meta = read_tensors(path)[1]
    key = meta.get("importance_is", IMPORTANCE_KEY)
    return key if key in read_tensors(path)[0] else IMPORTANCE_KEY


def compare_targets(main_dir: Path, other_dir: Path, shots: list[int], top_fraction: float,
                    seen: tuple[str, ...] = PAPER_SEEN_TASKS) -> dict[str, Any]:
    """{"other_dir", "shots": {K: {"tasks": {task: {rho, p, top_overlap}}, "aggregate": {...,
    "members", "from_other"}}}} for every shot both directories have (see the module docstring)."""
    main_dir, other_dir = Path(main_dir), Path(other_dir)
    out: dict[str, Any] = {"other_dir": other_dir.name, "top_fraction": top_fraction, "shots": {}}
    for k in shots:
        mdir, odir = shots_dir(main_dir, k), shots_dir(other_dir, k)
        main_files = {p.stem: p for p in sorted(mdir.glob("*.safetensors")) if p.stem != "aggregate"}
        other_files = {p.stem: p for p in sorted(odir.glob("*.safetensors")) if p.stem != "aggregate"}
        if not main_files or not other_files:
            continue
        key = _ranking_key(next(iter(main_files.values())))
        mine = {t: read_importance(p) for t, p in main_files.items()}
        theirs = {t: read_importance(p, key=key) for t, p in other_files.items() if t in main_files}
        per_task = {}
        for t, other in theirs.items():
            a, b = mine[t].reshape(-1).tolist(), other.reshape(-1).tolist()  # (L*H,) layer-major
            rho, p = stats.spearman(a, b)
            per_task[t] = {"rho": rho, "p": p, "top_overlap": stats.top_fraction_overlap(a, b, top_fraction)}
        members = [t for t in seen if t in mine]
        block: dict[str, Any] = {"key": key, "tasks": per_task}
        if members:
            agg_mine = aggregate_importance([mine[t] for t in members]).reshape(-1).tolist()
            agg_other = aggregate_importance([theirs.get(t, mine[t]) for t in members]).reshape(-1).tolist()
            rho, p = stats.spearman(agg_mine, agg_other)
            block["aggregate"] = {"rho": rho, "p": p,
                                  "top_overlap": stats.top_fraction_overlap(agg_mine, agg_other, top_fraction),
                                  "members": members, "from_other": [t for t in members if t in theirs]}
        out["shots"][str(k)] = block
    return out
