"""The report section that sets every number the paper quotes about its rankings (§6) beside this run's.

The paper's pruning points (§5) are in the headline table (study/report_headline.py); this section has
the rest: ReCoRD's SRCC with COPA and Winogrande, their top-30% overlaps and the cross-shot SRCC with its
variance and p-value, from OUT/correlate/correlations.json (prune/correlate.py). The paper's values and
their wording live in prune/paper.py. Each row says which statistic it compares: the paper's SRCC is the
Pearson correlation of argsort vectors its released code computes, shown beside the true Spearman rho.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opt66b.runs.layout import RunLayout, shots_name
from prune.paper import PAPER_CORRELATIONS, PAPER_P_LEVEL

from .report_kit import md_table, run_json


def _pair(block: dict[str, Any], a: str, b: str, key: str) -> float | None:
    """block[key][i][j] for tasks a, b of one shot's correlation block (key "paper_argsort_pearson",
    "top_overlap", or "spearman" for rho), None when either task is absent."""
    tasks = block.get("tasks", [])
    if a not in tasks or b not in tasks:
        return None
    matrix = block["spearman"]["rho"] if key == "spearman" else block.get(key)
    return None if matrix is None else matrix[tasks.index(a)][tasks.index(b)]


def _lowest_in_row(block: dict[str, Any], task: str, partner: str) -> str:
    """'yes' when `partner` has the lowest paper's SRCC with `task` among the seen tasks, else its rank."""
    tasks = [t for t in block.get("tasks", []) if t != "aggregate"]
    if task not in tasks or partner not in tasks:
        return "-"
    row = {t: _pair(block, task, t, "paper_argsort_pearson") for t in tasks if t != task}
    order = sorted(row, key=lambda t: row[t])
    return "yes" if order[0] == partner else f"no (lowest: {order[0]})"


def _record_rows(corr: dict[str, Any]) -> list[list[Any]]:
    srcc, overlap = PAPER_CORRELATIONS["record_srcc"], PAPER_CORRELATIONS["record_top_overlap"]
    rows = []
    for key, block in corr["shots"].items():
        for partner in srcc["tasks"]:
            value = _pair(block, "record", partner, "paper_argsort_pearson")
            if value is None:
                continue
            rows.append([shots_name(key), f"SRCC ReCoRD-{partner} (paper's statistic)", srcc["value"], value,
                         _pair(block, "record", partner, "spearman"), _lowest_in_row(block, partner, "record")])
            rows.append([shots_name(key), f"top-{overlap['fraction']:.0%} overlap ReCoRD-{partner}",
                         overlap["values"][partner], _pair(block, "record", partner, "top_overlap"), "-", "-"])
    return rows


def _cross_shot_rows(corr: dict[str, Any]) -> list[list[Any]]:
    paper = PAPER_CORRELATIONS["cross_shot"]
    rows = []
    for pair, value in zip(paper["pairs"], paper["values"]):
        got = (corr.get("cross_shot") or {}).get(pair)
        if not got:
            continue
        ps = [v["p"] for v in got["per_task"].values() if v.get("p") is not None]
        below = sum(p < PAPER_P_LEVEL for p in ps)
        rows.append([pair, value, got["mean"]["paper_argsort_pearson"], paper["variance"],
                     got["variance"]["paper_argsort_pearson"], got["mean"]["rho"],
                     f"{below} of {len(ps)}" + (f" (largest p {max(ps):.2g})" if ps else "")])
    return rows


def paper_numbers_section(run: Path) -> list[str]:
    """'## The paper's numbers beside this run's': §6's quoted values and this run's same quantities."""
    lines = ["## The paper's numbers beside this run's (§6)", "",
             "The pruning points of §5 (70% of heads, the FFN knees, the combined points and their drops) are in the "
             "headline table above. Here are the numbers §6 quotes about the rankings, each beside this run's value "
             "of the same quantity. The paper's SRCC is the statistic its released code computes (Pearson of "
             "argsort vectors); the true Spearman rho is beside it. These are the paper's numbers for OPT-66B with "
             "its full data: a smaller model or the bundled samples are not expected to match them. Intervals: "
             "the rankings come from one importance pass; their sampling variation is not resampled here.", ""]
    corr = run_json(RunLayout(run).correlations)
    if not corr:
        return lines + ["(no correlate/correlations.json)", ""]
    rows = _record_rows(corr)
    lines += ["ReCoRD against COPA and Winogrande (" + PAPER_CORRELATIONS["record_srcc"]["quote"] + "; "
              + PAPER_CORRELATIONS["record_top_overlap"]["quote"] + "):", ""]
    lines += md_table(["shots", "quantity", "paper", "this run", "this run: Spearman rho", "ReCoRD lowest in the row?"],
                      rows) if rows else ["(ReCoRD and COPA or Winogrande are not both in this run)", ""]
    cross = _cross_shot_rows(corr)
    lines += ["The same task across shot counts, mean over the seen tasks (" + PAPER_CORRELATIONS["cross_shot"]["quote"]
              + "; the paper's three values set beside the pairs in the order it lists them), tested at "
              f"p < {PAPER_P_LEVEL:g} as the paper does:", ""]
    lines += md_table(["shots", "paper SRCC", "this run SRCC", "paper variance", "this run variance",
                       "this run Spearman rho", f"tasks with p < {PAPER_P_LEVEL:g}"], cross) if cross else \
        ["(fewer than two shot counts in this run)", ""]
    return lines
