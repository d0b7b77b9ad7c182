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


# The paper's figures 3-24 (1 and 2 are its prompt example and its method sketch).
PAPER_FIGURES = {
    3: "aggregate head importance heatmap", 4: "FFN oracle importance per task",
    5: "head pruning per task (own ranking)", 6: "FFN pruning per task (own ranking)",
    7: "combined heads x FFN pruning, 5-shot", 8: "SRCC of head importance across tasks",
    9: "cross-task transfer of rankings", 10: "prefix-matching and copying scores per head",
    11: "capacity retained under aggregate-ranked pruning", 12: "aggregate head importance, other shots",
    13: "FFN oracle importance, other shots", 14: "head importance per task, 0-shot",
    15: "head importance per task, 1-shot", 16: "head importance per task, 5-shot",
    17: "head pruning, other shots", 18: "FFN pruning, other shots", 19: "combined pruning, 0- and 1-shot",
    20: "SRCC across tasks, other shots", 21: "cross-task transfer, other shots", 22: "cross-task transfer, other shots",
    23: "capacity retained per task ranking (prefix matching)", 24: "capacity retained per task ranking (copying)",
}


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
