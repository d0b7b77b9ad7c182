"""`report.md` and the paper's figures, built from the files of a finished (or partial) run.

Reads only what the sub-commands wrote under RUN (eval/, importance/, ffn_importance/, prune/,
correlate/, induction/, capacity/, copytask/); a missing part is reported as missing, never
invented. `python run.py report --run DIR` redraws everything from a finished run. The report opens
with the list of tasks (the paper's 14 seen, its 2 unseen, and the synthetic copy task, which is not
the paper's), the headline numbers, and an index from each paper figure number to its file.

Task means follow the paper: the mean over its seen tasks present in the run (never the unseen ones
or the synthetic copy task). Inflection points and the headline use prune/inflection.py's rules.
Sections on correlations, transfer and the induction scores are in study/report_induction.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from opt66b.io import atomic_write_text, read_json, read_tensors, write_json
from prune.aggregate import PAPER_SEEN_TASKS, PAPER_UNSEEN_TASKS, aggregate_of
from prune.inflection import DEFAULT_MIN_BEND, DEFAULT_TOLERANCE, RULES, curve_points, headline, mean_curve, mean_grid, \
    sweep_curve
from tasks.registry import EXTRA_TASKS

from . import figures

PRIMARY = {"record": "em"}  # the paper reads em for ReCoRD and acc for every other task


def _json(path: Path) -> Any | None:
    """A run's JSON file, None when absent; a damaged one is an error naming it."""
    return read_json(path, "rerun the step that writes it (its units resume)") if path.is_file() else None


def _shot_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("shots-*"), key=lambda p: int(p.name.split("-")[1])) if root.is_dir() else []


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _pct(v: float | None) -> str | None:
    """A percentage as 70 or 12.5, never 70.000."""
    return None if v is None else f"{v:g}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


class Figures:
    """Draws figures under RUN/figures and keeps the index: paper figure number -> file."""

    def __init__(self, run: Path):
        self.run, self.dir, self.index = run, run / "figures", []

    def add(self, lines: list[str], path: Path | None, paper: str, content: str) -> None:
        """Record a drawn figure (paper: its number(s) in the paper, or "" when it is not the paper's)."""
        if path is None:
            return
        rel = path.relative_to(self.run).as_posix()
        self.index.append((paper, content, rel))
        lines += [f"![{content}]({rel})", ""]

    def index_lines(self) -> list[str]:
        rows = [[f"Fig. {p}" if p else "not in the paper", c, f"[{f}]({f})"] for p, c, f in self.index]
        return ["## Figure index", "", "Paper figure number -> file; every PNG under figures/ is listed once.", ""] + \
            _table(["paper figure", "content", "file"], rows)


def paper_order(tasks: Any) -> list[str]:
    """Tasks in the paper's order (seen, unseen), then the study's extra tasks, then any other."""
    known = [*PAPER_SEEN_TASKS, *PAPER_UNSEEN_TASKS, *EXTRA_TASKS]
    tasks = set(tasks)
    return [t for t in known if t in tasks] + sorted(tasks - set(known))


def seen_in(tasks: Any) -> list[str]:
    return [t for t in PAPER_SEEN_TASKS if t in set(tasks)]


# -- tasks and accuracy -------------------------------------------------------------------------------
def tasks_section(run: Path, skipped: list[str]) -> list[str]:
    evals = {p.name: _json(p / "results.json") for p in _shot_dirs(run / "eval")}
    ran = {t for r in evals.values() if r for t in r["results"]}
    checks = {(r["task"], r["split"]): r for r in (_json(run / "data_check.json") or {}).get("rows", [])}
    rows = []
    for t in [*PAPER_SEEN_TASKS, *PAPER_UNSEEN_TASKS, *EXTRA_TASKS]:
        role = "seen (in the aggregate)" if t in PAPER_SEEN_TASKS else \
            "unseen (tested with the aggregate)" if t in PAPER_UNSEEN_TASKS else "NOT the paper's (synthetic copy)"
        shots = [s for s, r in evals.items() if r and t in r["results"]]
        why = next((s for s in skipped if s.startswith(t + " ") or s.startswith(t + ":") or f"/{t}/" in s), "")
        notes = "; ".join(f"{r['split']}: {r['status']} ({r['note']})" for (task, _), r in checks.items()
                          if task == t and r["status"] in ("stand-in", "fallback", "missing"))
        rows.append([t, role, ", ".join(shots) or ("skipped: " + why if why else "not run"), notes or "-"])
    lines = ["## Tasks", "", f"{len(ran)} tasks evaluated. The paper's 14 seen tasks make the aggregate ranking; "
             "its 2 unseen tasks are pruned with their own and the aggregate ranking; the synthetic copy task is "
             "the study's own check and takes no part in the paper's means.", ""]
    return lines + _table(["task", "role", "evaluated", "data notes (stand-ins: numbers not comparable)"], rows)


def accuracy_section(run: Path) -> list[str]:
    lines = ["## Accuracy per task and shot", "", "Primary metric as a fraction (ReCoRD: em).", ""]
    shots = {p.name: _json(p / "results.json") for p in _shot_dirs(run / "eval")}
    shots = {k: v for k, v in shots.items() if v}
    if not shots:
        return lines + ["(no evaluation results under eval/)", ""]
    rows = []
    for t in paper_order({t for r in shots.values() for t in r["results"]}):
        metric = PRIMARY.get(t, "acc")
        rows.append([t, metric] + [shots[s]["results"].get(t, {}).get(metric) for s in shots])
    return lines + _table(["task", "metric"] + list(shots), rows)


# -- importance ---------------------------------------------------------------------------------------
def importance_section(run: Path, figs: Figures) -> list[str]:
    lines = ["## Head importance (gradient-based, paper §3.2 / §4.1)", ""]
    found = False
    for shot in _shot_dirs(run / "importance"):
        files = {p.stem: p for p in sorted(shot.glob("*.safetensors"))}
        agg = files.pop("aggregate", None)
        if agg is not None:
            found = True
            members = aggregate_of(agg)
            lines += [f"{shot.name}: the aggregate averages {len(members or [])} seen tasks: "
                      f"{', '.join(members or ['(not recorded)'])}.", ""]
            tensors = read_tensors(agg)[0]
            figs.add(lines, figures.heatmap(tensors["importance"].tolist(), figs.dir / f"importance-aggregate-{shot.name}.png",
                                            f"aggregate head importance (seen tasks), {shot.name}", "head", "layer"),
                     "", f"aggregate head importance, {shot.name} (paper §4.1 heatmaps)")
            if "importance_uniform" in tensors:
                figs.add(lines, figures.heatmap(tensors["importance_uniform"].tolist(),
                                                figs.dir / f"importance-aggregate-uniform-{shot.name}.png",
                                                f"aggregate importance, uniform denominator, {shot.name}", "head", "layer"),
                         "", f"erratum: aggregate importance with one denominator for every layer, {shot.name}")
        per_task = {t: read_tensors(files[t])[0]["importance"].tolist() for t in paper_order(files)}
        if per_task:
            found = True
            figs.add(lines, figures.heatmap_panels(per_task, figs.dir / f"importance-tasks-{shot.name}.png",
                                                   f"head importance per task, {shot.name} (colour capped at max/10)",
                                                   "head", "layer", vmax_fraction=0.1),
                     "14-16", f"head importance per task, {shot.name}")
    if not found:
        lines += ["(no importance files under importance/)", ""]
    return lines + ffn_section(run, figs)


def ffn_section(run: Path, figs: Figures) -> list[str]:
    lines = ["## FFN importance (oracle knock-outs, paper §3.3 / §4.2)", ""]
    for shot in _shot_dirs(run / "ffn_importance"):
        agg = _json(shot / "aggregate.json")
        if agg:
            lines += [f"{shot.name}: mean drop (points) per layer when its FFN alone is removed: "
                      + ", ".join(f"L{i} {d:+.1f}" for i, d in enumerate(agg["drop"]))
                      + f"; ranking (least important first) {agg['ranking']}", ""]
            figs.add(lines, figures.bars(agg["drop"], figs.dir / f"ffn-importance-{shot.name}.png",
                                         f"FFN knock-out drop, mean over tasks, {shot.name}", "layer", "drop (points)"),
                     "", f"FFN importance, mean over tasks, {shot.name}")
        per_task = {p.stem: _json(p) for p in sorted(shot.glob("*.json")) if p.stem != "aggregate"}
        drops = {t: per_task[t]["drop"] for t in paper_order(per_task) if per_task[t] and "drop" in per_task[t]}
        figs.add(lines, figures.bar_panels(drops, figs.dir / f"ffn-importance-tasks-{shot.name}.png",
                                           f"FFN knock-out drop per task, {shot.name}", "layer", "drop (points)"),
                 "4, 13", f"FFN importance per task, {shot.name}")
    return lines


# -- pruning, inflection points, headline ---------------------------------------------------------------
def _sweep_tables(run: Path) -> dict[str, dict]:
    prune = run / "prune"
    tables = {p.stem: _json(p) for p in sorted(prune.glob("*.json"))} if prune.is_dir() else {}
    return {k: v for k, v in tables.items() if isinstance(v, dict) and "results" in v}


def pruning_section(run: Path, figs: Figures, tolerance: float, min_bend: float) -> list[str]:
    lines = ["## Pruning sweeps and inflection points (paper §4, Figs. 5-7)", "",
             f"Rules (prune/inflection.py): knee = {RULES['knee']}, min_bend {min_bend:g}; "
             f"within tolerance = {RULES['tolerance']}, tolerance {tolerance:g} points. The bold curve is the "
             "mean over the paper's seen tasks present; thin curves are single tasks.", ""]
    tables = _sweep_tables(run)
    if not tables:
        return lines + ["(no sweep tables under prune/)", ""]
    paper_fig = {"heads-own": "5, 17", "ffn-own": "6, 18"}
    for name, tab in tables.items():
        sweep, ranking = tab["sweep"], tab["ranking"]
        lines += [f"### {sweep}, ranking: {ranking}", ""]
        if tab.get("missing_units"):
            lines += [f"{len(tab['missing_units'])} units missing (run still in progress or killed).", ""]
        shots = sorted({s for per in tab["results"].values() for s in per}, key=lambda s: int(s.split("-")[1]))
        if sweep == "grid":
            lines += grid_lines(tab, shots, figs, tolerance)
            continue
        axis = "ffn" if sweep == "ffn" else "heads"
        panels, marks, rows = {}, {}, []
        for task in paper_order(tab["results"]):
            row = [task]
            for shot in shots:
                cells = tab["results"][task].get(shot)
                pts = curve_points(sweep_curve(cells, axis), min_bend, tolerance) if cells else {}
                row += [_pct(pts.get("knee")), _pct(pts.get("within_tolerance"))]
            rows.append(row)
        mean_row = ["mean (seen tasks)"]
        for shot in shots:
            mean, used = mean_curve(tab, seen_in(tab["results"]), shot, axis)
            series = {t: _xy(sweep_curve(tab["results"][t][shot], axis)) for t in paper_order(tab["results"])
                      if shot in tab["results"][t]}
            pts = curve_points(mean, min_bend, tolerance) if mean else {}
            mean_row += [_pct(pts.get("knee")), _pct(pts.get("within_tolerance"))]
            if mean:
                series[f"mean of {len(used)} seen"] = _xy(mean)
                marks[shot] = [(pts["knee"], "knee")] if pts.get("knee") is not None else []
            panels[shot] = series
        rows.append(mean_row)
        header = ["task"] + [f"{c} ({s})" for s in shots for c in ("knee %", "within tol. %")]
        lines += _table(header, rows)
        bold = [k for p in panels.values() for k in p if k.startswith("mean of")]
        figs.add(lines, figures.curve_panels(panels, figs.dir / f"prune-{name}.png", f"{sweep} pruning, ranking {ranking}",
                                             f"% {axis} pruned", "metric x100", bold=bold, marks=marks),
                 paper_fig.get(name, ""), f"{sweep} pruning per task with the task mean, ranking {ranking}")
    return lines


def _xy(curve: dict[float, float]) -> tuple[list[float], list[float]]:
    xs = sorted(curve)
    return xs, [curve[x] for x in xs]


def grid_lines(tab: dict, shots: list[str], figs: Figures, tolerance: float) -> list[str]:
    lines = []
    for shot in shots:
        grid, used = mean_grid(tab, seen_in(tab["results"]), shot)
        if not grid:
            lines += [f"{shot}: no seen task in the grid", ""]
            continue
        hs = sorted(grid, key=float)
        fs = sorted({f for h in hs for f in grid[h]}, key=float)
        matrix = [[grid[h].get(f, float("nan")) for f in fs] for h in hs]
        lines += [f"{shot}, mean over {len(used)} seen tasks (rows: heads %, columns: FFN %)", ""]
        lines += _table(["heads % \\ FFN %"] + fs, [[h] + row for h, row in zip(hs, matrix)])
        figs.add(lines, figures.heatmap(matrix, figs.dir / f"grid-{tab['ranking']}-{shot}.png",
                                        f"combined pruning, mean over seen tasks, {shot}", "FFN % pruned",
                                        "heads % pruned", xticks=fs, yticks=hs, annotate=True),
                 "7", f"combined heads x FFN pruning, {shot}")
    return lines


def model_config(run: Path) -> Any | None:
    """The model config of the run, from the model recorded in a sweep table (None if unknown)."""
    from opt66b.config import config_for_size, config_from_hf

    for tab in _sweep_tables(run).values():
        model = (tab.get("meta") or {}).get("model") or {}
        name = str(model.get("model", ""))
        if name.startswith("random:"):
            return config_for_size(name.split(":", 1)[1])
        if name and (Path(name) / "config.json").is_file():
            return config_from_hf(Path(name))
    return None


def headline_section(run: Path, tolerance: float) -> list[str]:
    """The paper's headline (about 70% of heads and 20% of FFNs removable) from this run's mean curves."""
    tables, cfg = _sweep_tables(run), model_config(run)
    lines = ["## Headline (paper abstract and §4)", "",
             f"Largest share removable while the mean over the seen tasks stays within {tolerance:g} point(s) "
             f"of the unpruned model ({RULES['tolerance']}). The paper reads about 70% of heads (about 15.7B "
             "parameters of OPT-66B) and 20% of FFNs (about 8.5B) from its curves.", ""]
    heads, ffn, grid = tables.get("heads-own"), tables.get("ffn-own"), tables.get("grid-own")
    if cfg is None or not (heads or ffn):
        return lines + ["(no own-ranking sweeps, or the model config is unknown)", ""]
    shots = sorted({s for tab in (heads, ffn, grid) if tab for per in tab["results"].values() for s in per},
                   key=lambda s: int(s.split("-")[1]))
    rows, out = [], {}
    for shot in shots:
        h = mean_curve(heads, seen_in(heads["results"]), shot, "heads")[0] if heads else None
        f = mean_curve(ffn, seen_in(ffn["results"]), shot, "ffn")[0] if ffn else None
        g = mean_grid(grid, seen_in(grid["results"]), shot)[0] if grid else None
        out[shot] = res = headline(h, f, g, cfg, tolerance)
        for key in ("heads", "ffn", "both"):
            r = res.get(key)
            if r:
                rows.append([shot, key, _pct(r["head_percent"]), _pct(r["ffn_percent"]), r["heads_removed"],
                             r["ffns_removed"],
                             f"{r['params_removed'] / 1e9:.3f}B" if r["params_removed"] >= 1e8 else f"{r['params_removed']:,}"])
    write_json(run / "headline.json", {"tolerance_points": tolerance, "rule": RULES["tolerance"], "shots": out})
    return lines + _table(["shots", "pruned", "heads %", "FFN %", "heads", "FFNs", "parameters removed"], rows)


# What a report is built from (relative to the run directory); none of them present is an error.
REPORT_INPUTS = ("eval/shots-K/results.json", "importance/shots-K/aggregate.safetensors",
                 "ffn_importance/shots-K/aggregate.json", "prune/*.json", "correlate/correlations.json",
                 "induction/*.json", "capacity/capacity.json", "copytask/copytask.json")


def require_results(run: Path) -> None:
    """FileNotFoundError listing what was looked for when `run` holds nothing to report."""
    if any(next(run.glob(pattern.replace("shots-K", "shots-*")), None) for pattern in REPORT_INPUTS):
        return
    hint = ""
    if next(run.glob("shots-*/results.json"), None) or next(run.glob("shots-*/*.safetensors"), None):
        hint = (" It looks like the --out of a single command (eval/importance); report reads the run "
                "directory of `run.py all`, which holds eval/, importance/, ... below it.")
    raise FileNotFoundError(f"{run}: nothing to report; looked for {', '.join(REPORT_INPUTS)}.{hint} "
                            f"Run `python run.py all --out {run}` first")


def write_report(run: str | Path, skipped_tasks: list[str] | None = None, tolerance: float = DEFAULT_TOLERANCE,
                 min_bend: float = DEFAULT_MIN_BEND) -> Path:
    from .report_induction import copytask_section, correlation_section, induction_section, transfer_section

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run directory not found")
    require_results(run)
    if skipped_tasks is None:
        skipped_tasks = _json(run / "skipped_tasks.json") or []
    figs = Figures(run)
    for old in figs.dir.glob("*.png") if figs.dir.is_dir() else []:
        old.unlink()  # the index must match the files: drop figures of an earlier report
    head = ["# opt66b study report", "", f"Run directory: `{run}`. Commands: `commands.txt` (if written by `run.py all`).", ""]
    if not figures.have_matplotlib():
        head += ["Figures: matplotlib is not installed. `pip install -e \".[plots]\"` then "
                 f"`python run.py report --run {run}` draws them.", ""]
    if skipped_tasks:
        head += ["Tasks skipped for missing data: " + "; ".join(skipped_tasks), ""]
    head += tasks_section(run, skipped_tasks) + headline_section(run, tolerance)
    body = accuracy_section(run)
    body += importance_section(run, figs)
    body += pruning_section(run, figs, tolerance, min_bend)
    body += transfer_section(run, figs)
    body += correlation_section(run, figs)
    body += induction_section(run, figs)
    body += copytask_section(run)
    return atomic_write_text(run / "report.md", "\n".join(head + figs.index_lines() + body) + "\n")
