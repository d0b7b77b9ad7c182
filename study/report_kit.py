"""What every part of report.md shares: reading a run's files, markdown tables, the figure index.

study/report.py (tasks, accuracy, importance, pruning), study/report_headline.py (protocol, headline,
targets) and study/report_induction.py (transfer, correlations, induction) build their sections
from these; none imports another's private helpers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from opt66b.fileio import read_json
from opt66b.runs.layout import RunLayout



def run_json(path: Path) -> Any | None:
    """A run's JSON file, None when absent; a damaged one is an error naming it."""
    return read_json(path, "rerun the step that writes it (its units resume)") if path.is_file() else None


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def pct(v: float | None) -> str | None:
    """A percentage as 70 or 12.5, never 70.000."""
    return None if v is None else f"{v:g}"


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


class Figures:
    """Draws figures under RUN/figures and keeps the index: paper figure number -> file."""

    def __init__(self, run: Path):
        self.run, self.dir, self.index = run, RunLayout(run).figures, []

    def add(self, lines: list[str], path: Path | None, paper: str, content: str) -> None:
        """Record a drawn figure (paper: its number(s) in the paper, or "" when it is not the paper's)."""
        if path is None:
            return
        rel = path.relative_to(self.run).as_posix()
        self.index.append((paper, content, rel))
        lines += [f"![{content}]({rel})", ""]

    def index_lines(self) -> list[str]:
        """Every paper figure from 3 to 24 with the files drawn for it (or why none is), then the figures
        this study draws that the paper does not have; every PNG under figures/ is listed."""
        by_fig: dict[int, list[str]] = {n: [] for n in PAPER_FIGURES}
        extra = []
        for paper, content, rel in self.index:
            numbers = figure_numbers(paper)
            for n in numbers:
                by_fig.setdefault(n, []).append(f"[{rel}]({rel})")
            if not numbers:
                extra.append([content, f"[{rel}]({rel})"])
        rows = [[f"Fig. {n}", PAPER_FIGURES.get(n, ""), ", ".join(files) or "not drawn (its step has no output here)"]
                for n, files in sorted(by_fig.items())]
        lines = ["## Figure index", "", "Each figure of the paper from 3 to 24 and the file(s) drawn for it, then the "
                 "figures the paper does not have.", ""] + md_table(["paper figure", "content", "files"], rows)
        if extra:
            lines += ["Not in the paper:", ""] + md_table(["content", "file"], extra)
        return lines


# The paper's figures 3-24 (1 and 2 are its prompt example and its method sketch), each at its own shot
# counts, as the paper's captions give them.
PAPER_FIGURES = {
    3: "aggregate head importance, 5-shot", 4: "FFN importance, task-specific and task-averaged, 5-shot",
    5: "head pruning per task (own ranking), 5-shot", 6: "FFN pruning per task (own ranking), 0-shot",
    7: "combined heads x FFN pruning, 5-shot", 8: "SRCC of head importance across tasks, 5-shot",
    9: "cross-task transfer, 5-shot (a-c: COPA, Winogrande, ReCoRD; d, e: MathQA, LAMBADA by the aggregate)",
    10: "prefix matching (a) and copying (b) per head", 11: "capacity retained under aggregate-ranked pruning",
    12: "aggregate head importance, 0- and 1-shot", 13: "FFN importance, 0- and 1-shot",
    14: "head importance per task, 0-shot", 15: "head importance per task, 1-shot",
    16: "head importance per task, 5-shot", 17: "head pruning per task, 0- and 1-shot",
    18: "FFN pruning per task, 1- and 5-shot", 19: "combined pruning, 0- and 1-shot",
    20: "SRCC across tasks, 0- and 1-shot", 21: "cross-task transfer, 0-shot", 22: "cross-task transfer, 1-shot",
    23: "capacity retained per task ranking, prefix matching (Appendix A.9)",
    24: "capacity retained per task ranking, copying (Appendix A.9)",
}

# kind of figure -> {shot count: the paper's figure number}; a shot count absent here is not the paper's.
FIGURE_AT_SHOT = {
    "importance_aggregate": {5: 3, 0: 12, 1: 12}, "ffn_importance": {5: 4, 0: 13, 1: 13},
    "importance_tasks": {0: 14, 1: 15, 5: 16}, "prune_heads": {5: 5, 0: 17, 1: 17},
    "prune_ffn": {0: 6, 1: 18, 5: 18}, "grid": {5: 7, 0: 19, 1: 19}, "srcc": {5: 8, 0: 20, 1: 20},
    "transfer": {5: 9, 0: 21, 1: 22},
}


def figure_at(kind: str, shots: int | None) -> str:
    """The paper's figure number for a figure of `kind` at `shots` in-context examples, "" when the paper
    has no such figure (e.g. 2 shots)."""
    n = FIGURE_AT_SHOT[kind].get(shots) if shots is not None else None
    return "" if n is None else str(n)


def figure_shots(number: int) -> set[int]:
    """The shot counts the paper's figure `number` shows (empty for the induction figures 10, 11, 23, 24)."""
    return {k for at in FIGURE_AT_SHOT.values() for k, n in at.items() if n == number}


def figure_numbers(label: str) -> list[int]:
    """'5, 17' -> [5, 17]; '14-16' -> [14, 15, 16]; '' -> []."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in label.split(","))):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def sweep_tables(run: Path) -> dict[str, dict]:
    prune = RunLayout(run).prune
    tables = {p.stem: run_json(p) for p in sorted(prune.glob("*.json"))} if prune.is_dir() else {}
    return {k: v for k, v in tables.items() if isinstance(v, dict) and "results" in v}


def xy(curve: dict[float, float]) -> tuple[list[float], list[float]]:
    xs = sorted(curve)
    return xs, [curve[x] for x in xs]


def model_config(run: Path) -> Any | None:
    """The model config of the run, from the model recorded in a sweep table (None if unknown)."""
    from opt66b.config import config_for_size, config_from_hf

    for tab in sweep_tables(run).values():
        model = (tab.get("meta") or {}).get("model") or {}
        name = str(model.get("model", ""))
        if name.startswith("random:"):
            return config_for_size(name.split(":", 1)[1])
        if name and (Path(name) / "config.json").is_file():
            return config_from_hf(Path(name))
    return None


def count_groups(tab: dict, axis: str) -> list[str]:
    """'0-40% remove 0' for every run of a sweep table's percentages ('heads' or 'ffn') that remove the same number
    of heads or FFNs: on a small model several percentages are one and the same pruning."""
    groups: dict[int, list[float]] = {}
    for p in tab.get("head_percents" if axis == "heads" else "ffn_percents", []):
        groups.setdefault(tab["counts"][axis][f"{p:g}"], []).append(p)
    return [f"{pct(ps[0])}-{pct(ps[-1])}% remove {n}" for n, ps in sorted(groups.items()) if len(ps) > 1]


def size_note(tab: dict, axes: tuple[str, ...], consequence: str) -> str | None:
    """A sentence for a figure and its text when this model's size makes several percentages of a sweep table one
    pruning along `axes` ('heads', 'ffn'), ending with what that does to the figure; None when none do."""
    parts = [f"{'heads' if a == 'heads' else 'FFNs'}: {', '.join(g)}" for a in axes if (g := count_groups(tab, a))]
    if not parts:
        return None
    return f"On this model's size some percentages are one pruning ({'; '.join(parts)}): {consequence}."
