"""`report.md` and the paper's figures, built from the files of a finished (or partial) run.

Reads only what the sub-commands wrote under RUN (eval/, importance/, ffn_importance/, prune/,
correlate/, induction/, capacity/, copytask/); a missing part is reported as missing, never
invented. `python run.py report --out DIR` redraws everything from a finished run. The report opens
with the list of tasks (the paper's 14 seen, its 2 unseen, and the synthetic copy task, which is not
the paper's), after what the run is (model, data, seeds, protocol, code, date, machine) and a summary of its
findings (study/report_summary.py), the headline numbers, and an index from each paper figure number to its file.

Task means follow the paper: the mean over its seen tasks present in the run (never the unseen ones
or the synthetic copy task). Inflection points and the headline use prune/inflection.py's rules.
Sections on correlations, transfer and the induction scores are in study/report_induction.py; the
protocol, the headline and the targets comparison in study/report_headline.py; shared helpers in
study/report_kit.py.
"""

from __future__ import annotations

from pathlib import Path

from opt66b.fileio import atomic_write_text
from opt66b.runs.results import read_tensors
from opt66b.runs.layout import SHOTS_PATTERN, RunLayout, eval_results, shot_dirs, shot_files, shot_of, shots_name
from prune.aggregate import aggregate_of
from prune.intervals import mean_interval, value_interval
from prune.inflection import (DEFAULT_MIN_BEND, DEFAULT_TOLERANCE, RULES, axis_errors, curve_points, knee, mean_curve,
                              mean_errors, mean_grid, sweep_curve)
from tasks.registry import ALL_TASKS, EXTRA_TASKS, PAPER_SEEN_TASKS, PAPER_UNSEEN_TASKS, paper_order, seen_in

from . import figures
from .report_headline import headline_section, protocol_lines, targets_section
from .report_kit import Figures, figure_at, md_table, pct, run_json, size_note, sweep_tables, xy


# -- tasks and accuracy -------------------------------------------------------------------------------
def tasks_section(run: Path, skipped: list[str]) -> list[str]:
    evals = {p.name: run_json(eval_results(p)) for p in shot_dirs(RunLayout(run).eval)}
    ran = {t for r in evals.values() if r for t in r["results"]}
    checks = {(r["task"], r["split"]): r for r in (run_json(RunLayout(run).data_check) or {}).get("rows", [])}
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
    return lines + md_table(["task", "role", "evaluated", "data notes (stand-ins: numbers not comparable)"], rows)


def accuracy_section(run: Path) -> list[str]:
    lines = ["## Accuracy per task and shot", "", "Primary metric as a fraction (ReCoRD: em) with its 95% interval "
             "`<metric>_ci95`: Clopper-Pearson's exact interval for a proportion (it holds at any number of documents "
             "and never leaves [0, 1]), a percentile bootstrap otherwise (tasks/uncertainty.py). lm-evaluation-"
             "harness's `<metric>_stderr` stays in results.json beside it.", ""]
    shots = {p.name: run_json(eval_results(p)) for p in shot_dirs(RunLayout(run).eval)}
    shots = {k: v for k, v in shots.items() if v}
    if not shots:
        return lines + ["(no evaluation results under eval/)", ""]
    rows = []
    for t in paper_order({t for r in shots.values() for t in r["results"]}):
        metric = ALL_TASKS[t].PRIMARY_METRIC if t in ALL_TASKS else "acc"  # the task class says
        cells = []
        for s in shots:
            res = shots[s]["results"].get(t, {})
            value, ci = res.get(metric), res.get(f"{metric}_ci95")
            cells.append(None if value is None else f"{value:.3f}" + ("" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"))
        rows.append([t, metric] + cells)
    return lines + md_table(["task", "metric"] + list(shots), rows)


# -- importance ---------------------------------------------------------------------------------------
PAPER_KEY, UNIFORM_KEY = "importance_paper_denominator", "importance_uniform"  # prune/importance.py's tensors


def _paper_tasks(names) -> tuple[list[str], list[str]]:
    """(the paper's seen tasks among `names`, the rest: unseen and synthetic), each in the paper's order.
    The paper's per-task figures draw its seen tasks; the others go to a figure of their own."""
    ordered = paper_order(names)
    seen = set(seen_in(ordered))
    return [t for t in ordered if t in seen], [t for t in ordered if t not in seen]


def importance_section(run: Path, figs: Figures) -> list[str]:
    lines = ["## Head importance (gradient-based, paper §4.1)", ""]
    found = False
    for shot in shot_dirs(RunLayout(run).importance):
        k = shot_of(shot.name)
        files = {p.stem: p for p in sorted(shot.glob("*.safetensors"))}
        agg = files.pop("aggregate", None)
        if agg is not None:
            found = True
            members = aggregate_of(agg)
            lines += [f"{shot.name}: the aggregate averages {len(members or [])} seen tasks: "
                      f"{', '.join(members or ['(not recorded)'])}.", ""]
            tensors = read_tensors(agg)[0]
            paper = tensors.get(PAPER_KEY, tensors["importance"])
            figs.add(lines, figures.heatmap(paper.tolist(), figs.dir / f"importance-aggregate-{shot.name}.png",
                                            f"aggregate head importance (seen tasks), {shot.name}", "head", "layer",
                                            cbar_label="importance (the paper's denominator)"),
                     figure_at("importance_aggregate", k), f"aggregate head importance (the paper's denominator), "
                                                          f"{shot.name}")
            if UNIFORM_KEY in tensors:
                figs.add(lines, figures.heatmap(tensors[UNIFORM_KEY].tolist(),
                                                figs.dir / f"importance-aggregate-uniform-{shot.name}.png",
                                                f"aggregate importance, uniform denominator, {shot.name}", "head", "layer",
                                                cbar_label="importance (one denominator for every layer)"),
                         "", f"erratum: aggregate importance with one denominator for every layer, {shot.name}")
        per_task = {t: read_tensors(files[t])[0] for t in paper_order(files)}
        per_task = {t: v.get(PAPER_KEY, v["importance"]).tolist() for t, v in per_task.items()}
        seen, others = _paper_tasks(per_task)
        found = found or bool(per_task)
        figs.add(lines, figures.heatmap_panels({t: per_task[t] for t in seen}, figs.dir / f"importance-tasks-{shot.name}.png",
                                               f"head importance per seen task, {shot.name}", "head", "layer",
                                               cbar_label="importance (log scale)", log=True),
                 figure_at("importance_tasks", k), f"head importance per seen task, {shot.name}")
        figs.add(lines, figures.heatmap_panels({t: per_task[t] for t in others},
                                               figs.dir / f"importance-other-tasks-{shot.name}.png",
                                               f"head importance, unseen and synthetic tasks, {shot.name}", "head",
                                               "layer", cbar_label="importance (log scale)", log=True),
                 "", f"head importance of the unseen and synthetic tasks, {shot.name}")
    if not found:
        lines += ["(no importance files under importance/)", ""]
    return lines + ffn_section(run, figs)


def ffn_section(run: Path, figs: Figures) -> list[str]:
    lines = ["## FFN importance (oracle knock-outs, paper §4.2)", ""]
    for shot in shot_dirs(RunLayout(run).ffn):
        k = shot_of(shot.name)
        agg = run_json(shot / "aggregate.json")
        if agg:
            lines += [f"{shot.name}: mean drop over the {len(agg.get('tasks', []))} seen tasks (points) per layer "
                      "when its FFN alone is removed: "
                      + ", ".join(f"L{i} {d:+.1f}" for i, d in enumerate(agg["drop"]))
                      + f"; ranking (least important first) {agg['ranking']}", ""]
            figs.add(lines, figures.bars(agg["drop"], figs.dir / f"ffn-importance-{shot.name}.png",
                                         f"FFN knock-out drop, mean over seen tasks, {shot.name}", "layer",
                                         "drop (points)"),
                     figure_at("ffn_importance", k), f"FFN importance, task-averaged, {shot.name}")
        per_task = {p.stem: run_json(p) for p in sorted(shot.glob("*.json")) if p.stem != "aggregate"}
        drops = {t: per_task[t]["drop"] for t in paper_order(per_task) if per_task[t] and "drop" in per_task[t]}
        seen, others = _paper_tasks(drops)
        figs.add(lines, figures.bar_panels({t: drops[t] for t in seen}, figs.dir / f"ffn-importance-tasks-{shot.name}.png",
                                           f"FFN knock-out drop per seen task, {shot.name}", "layer", "drop (points)"),
                 figure_at("ffn_importance", k), f"FFN importance, task-specific, {shot.name}")
        figs.add(lines, figures.bar_panels({t: drops[t] for t in others},
                                           figs.dir / f"ffn-importance-other-tasks-{shot.name}.png",
                                           f"FFN knock-out drop, unseen and synthetic tasks, {shot.name}", "layer",
                                           "drop (points)"),
                 "", f"FFN importance of the unseen and synthetic tasks, {shot.name}")
    return lines


# -- pruning, inflection points, headline ---------------------------------------------------------------
def pruning_section(run: Path, figs: Figures, tolerance: float, min_bend: float) -> list[str]:
    lines = ["## Pruning sweeps and inflection points (paper §5, Figs. 5-7, 17-19)", "",
             f"Rules (prune/inflection.py): knee = {RULES['knee']}, min_bend {min_bend:g}, read with each "
             f"point's standard error; within tolerance = {RULES['tolerance']}, tolerance {tolerance:g} points. "
             "The bold curve is the mean over the paper's seen tasks present; thin curves are single tasks; "
             "the paper's figures draw its seen tasks, the unseen and synthetic tasks are drawn apart.", ""]
    tables = sweep_tables(run)
    if not tables:
        return lines + ["(no sweep tables under prune/)", ""]
    for name, tab in tables.items():
        sweep, ranking = tab["sweep"], tab["ranking"]
        lines += [f"### {sweep}, ranking: {ranking}", ""]
        if tab.get("missing_units"):
            lines += [f"{len(tab['missing_units'])} units missing (run still in progress or killed).", ""]
        shots = sorted({s for per in tab["results"].values() for s in per}, key=lambda s: int(s.split("-")[1]))
        if sweep == "grid":
            lines += grid_lines(tab, shots, figs, tolerance)
            continue
        lines += _knee_table(tab, shots, min_bend, tolerance)
        lines += ["Error bars: 95% intervals of each point (per task: its standard error over documents; the "
                  "mean: the tasks' errors combined). Every cell's paired drop against the unpruned model, with its "
                  f"interval, is in `prune/{name}.json` (`paired`, `mean_over_tasks_ci`).", ""]
        for shot in shots:
            _curve_figures(tab, name, shot, figs, lines, min_bend)
    return lines


def _axis(tab: dict) -> str:
    return "ffn" if tab["sweep"] == "ffn" else "heads"


def _knee_table(tab: dict, shots: list[str], min_bend: float, tolerance: float) -> list[str]:
    """Per task and for the mean over the seen tasks: the knee and the tolerance reading at every shot."""
    axis, rows = _axis(tab), []
    for task in paper_order(tab["results"]):
        row = [task]
        for shot in shots:
            cells = tab["results"][task].get(shot)
            se = axis_errors(tab.get("stderr", {}).get(task, {}).get(shot, {}), axis) or None
            pts = curve_points(sweep_curve(cells, axis), min_bend, tolerance, se) if cells else {}
            row += [pct(pts.get("knee")) or ("no knee" if cells else None), pct(pts.get("within_tolerance"))]
        rows.append(row)
    mean_row = ["mean (seen tasks)"]
    for shot in shots:
        mean, used = mean_curve(tab, seen_in(tab["results"]), shot, axis)
        se = axis_errors(mean_errors(tab, used, shot), axis) or None
        pts = curve_points(mean, min_bend, tolerance, se) if mean else {}
        mean_row += [pct(pts.get("knee")) or ("no knee" if mean else None), pct(pts.get("within_tolerance"))]
    header = ["task"] + [f"{c} ({s})" for s in shots for c in ("knee %", "within tol. %")]
    return md_table(header, rows + [mean_row])


def _curve_figures(tab: dict, name: str, shot: str, figs: Figures, lines: list[str], min_bend: float) -> None:
    """One file per shot, one panel per task with its exact 95% interval bars, the mean over the seen tasks
    first with its knee marked: the seen tasks make the paper's figure (own ranking), the unseen and
    synthetic tasks a file of their own."""
    axis, ranking = _axis(tab), tab["ranking"]
    have = [t for t in paper_order(tab["results"]) if shot in tab["results"][t]]
    seen, others = _paper_tasks(have)
    series = {t: xy(sweep_curve(tab["results"][t][shot], axis)) for t in have}
    bars = {t: _bars(tab, [t], shot, series[t][0], axis) for t in have}
    mean, used = mean_curve(tab, seen_in(tab["results"]), shot, axis)
    panels, errs, marks = {}, {}, {}
    if mean:
        label = f"mean of {len(used)} seen tasks"
        panels[label] = {label: xy(mean)}
        errs[label] = {label: _bars(tab, used, shot, panels[label][label][0], axis)}
        at = knee(mean, axis_errors(mean_errors(tab, used, shot), axis) or None, min_bend)
        marks[label] = [(at, f"knee {at:g}%")] if at is not None else []
    for t in seen:
        panels[t], errs[t] = {t: series[t]}, {t: bars[t]}
    kind = "prune_heads" if axis == "heads" else "prune_ffn"
    paper = figure_at(kind, shot_of(shot)) if ranking == "own" else ""
    xlabel, ylabel = f"% {'heads' if axis == 'heads' else 'FFNs'} pruned", "metric x100 (exact 95% interval)"
    note = size_note(tab, (axis,), "the curves are flat there by construction")
    if note:
        lines += [note, ""]
    figs.add(lines, figures.curve_panels(panels, figs.dir / f"prune-{name}-{shot}.png",
                                         f"{tab['sweep']} pruning, ranking {ranking}, {shot}", xlabel, ylabel,
                                         bold=list(panels)[:1] if mean else [], marks=marks, errors=errs, note=note),
             paper, f"{tab['sweep']} pruning per seen task with their mean, ranking {ranking}, {shot}")
    if others:
        figs.add(lines, figures.curve_panels({t: {t: series[t]} for t in others},
                                             figs.dir / f"prune-{name}-other-tasks-{shot}.png",
                                             f"{tab['sweep']} pruning, ranking {ranking}, unseen and synthetic tasks, {shot}",
                                             xlabel, ylabel, errors={t: {t: bars[t]} for t in others}),
                 "", f"{tab['sweep']} pruning of the unseen and synthetic tasks, ranking {ranking}, {shot}")


def _bars(tab: dict, tasks: list[str], shot: str, xs: list[float], axis: str) -> list[tuple[float, float] | None]:
    """(low, high) in points at the curve's x values: a task's exact interval (prune/intervals.value_interval),
    or for several tasks the interval of their mean (mean_interval); None where a vector is missing."""
    per_doc = tab.get("per_doc", {})

    def at(x: float) -> tuple[float, float] | None:
        h, f = (f"{x:g}", "0") if axis == "heads" else ("0", f"{x:g}")
        bits = [per_doc.get(t, {}).get(shot, {}).get(h, {}).get(f) for t in tasks]
        if not all(bits):
            return None
        values = [100.0 * b.count("1") / len(b) for b in bits]
        return mean_interval(values, [value_interval(b) for b in bits])
    return [at(x) for x in xs]


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
        lines += md_table(["heads % \\ FFN %"] + fs, [[h] + row for h, row in zip(hs, matrix)])
        note = size_note(tab, ("heads", "ffn"), "their rows or columns are equal by construction")
        if note:
            lines += [note, ""]
        figs.add(lines, figures.heatmap(matrix, figs.dir / f"grid-{tab['ranking']}-{shot}.png",
                                        f"combined pruning, mean over seen tasks, {shot}", "FFN % pruned",
                                        "heads % pruned", xticks=fs, yticks=hs, annotate=True,
                                        cbar_label="mean metric x100", note=note),
                 figure_at("grid", shot_of(shot)) if tab["ranking"] == "own" else "",
                 f"combined heads x FFN pruning, mean over the seen tasks, ranking {tab['ranking']}, {shot}")
    return lines


# What a report is built from (relative to the run directory); none of them present is an error.
_RUN = RunLayout(Path("."))
REPORT_INPUTS = tuple(str(p) for p in (eval_results(_RUN.eval / SHOTS_PATTERN),
                                       _RUN.importance / SHOTS_PATTERN / "aggregate.safetensors",
                                       _RUN.ffn / SHOTS_PATTERN / "aggregate.json", _RUN.prune / "*.json",
                                       _RUN.correlations, _RUN.induction / "*.json", _RUN.capacity / "capacity.json",
                                       _RUN.copytask / "copytask.json"))


def require_results(run: Path) -> None:
    """FileNotFoundError listing what was looked for when `run` holds nothing to report."""
    if any(next(run.glob(pattern.replace(SHOTS_PATTERN, shots_name("*"))), None) for pattern in REPORT_INPUTS):
        return
    hint = ""
    if any(eval_results(d).is_file() for d in shot_dirs(run)) or shot_files(run, ".safetensors"):
        hint = (" It looks like the --out of a single command (eval/importance); report reads the run "
                "directory of `run.py all`, which holds eval/, importance/, ... below it.")
    raise FileNotFoundError(f"{run}: nothing to report; looked for {', '.join(REPORT_INPUTS)}.{hint} "
                            f"Run `python run.py all --out {run}` first")


def write_report(run: str | Path, skipped_tasks: list[str] | None = None, tolerance: float = DEFAULT_TOLERANCE,
                 min_bend: float = DEFAULT_MIN_BEND) -> Path:
    from .report_induction import copytask_section, correlation_section, induction_section, transfer_section
    from .report_paper import paper_numbers_section
    from .report_summary import header_lines, summary_lines

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run directory not found")
    require_results(run)
    if skipped_tasks is None:
        skipped_tasks = run_json(RunLayout(run).skipped_tasks) or []
    figs = Figures(run)
    for old in figs.dir.glob("*.png") if figs.dir.is_dir() else []:
        old.unlink()  # the index must match the files: drop figures of an earlier report
    head = ["# opt66b study report", "", f"Run directory: `{run}`. Commands: `commands.txt` (if written by `run.py all`).", ""]
    reading = tasks_section(run, skipped_tasks) + headline_section(run, tolerance, min_bend)  # writes headline.json
    head += protocol_lines(run) + header_lines(run) + summary_lines(run)  # the protocol first: it drove every number
    if not figures.have_matplotlib():
        head += ["Figures: matplotlib is not installed. `pip install -e \".[plots]\"` then "
                 f"`python run.py report --out {run}` draws them.", ""]
    if skipped_tasks:
        head += ["Tasks skipped for missing data: " + "; ".join(skipped_tasks), ""]
    head += reading
    body = accuracy_section(run)
    body += importance_section(run, figs)
    body += pruning_section(run, figs, tolerance, min_bend)
    body += transfer_section(run, figs)
    body += correlation_section(run, figs)
    body += targets_section(run)
    body += paper_numbers_section(run)
    body += induction_section(run, figs)
    body += copytask_section(run)
    return atomic_write_text(RunLayout(run).report, "\n".join(head + figs.index_lines() + body) + "\n")
