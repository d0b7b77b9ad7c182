"""`report.md` and the paper-style figures, built from the files of a finished (or partial) run.

Reads only what the sub-commands wrote under RUN (eval/, importance/, ffn_importance/, prune/,
correlate/, induction/, capacity/, copytask/); a missing part is reported as missing, never
invented. `python run.py report --run DIR` redraws everything from a finished run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from opt66b.io import atomic_write_text, read_tensors

from . import figures

PRIMARY = {"record": "em"}  # the paper reads em for ReCoRD and acc for every other task
INFLECTION_POINTS = 1.0  # a sweep "holds" while the metric stays within 1 point (x100) of unpruned


def _json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _shot_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("shots-*"), key=lambda p: int(p.name.split("-")[1])) if root.is_dir() else []


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _figure(lines: list[str], path: Path | None, run: Path, caption: str) -> None:
    if path is not None:
        lines += [f"![{caption}]({path.relative_to(run).as_posix()})", ""]


def accuracy_section(run: Path) -> list[str]:
    lines = ["## Accuracy per task and shot", "", "Primary metric as a fraction (ReCoRD: em).", ""]
    shots = {p.name: _json(p / "results.json") for p in _shot_dirs(run / "eval")}
    shots = {k: v for k, v in shots.items() if v}
    if not shots:
        return lines + ["(no evaluation results under eval/)", ""]
    tasks = sorted({t for r in shots.values() for t in r["results"]})
    rows = []
    for t in tasks:
        metric = PRIMARY.get(t, "acc")
        rows.append([t, metric] + [shots[s]["results"].get(t, {}).get(metric) for s in shots])
    return lines + _table(["task", "metric"] + list(shots), rows)


def importance_section(run: Path, figs: Path) -> list[str]:
    lines = ["## Head importance (gradient-based; docs/method.md §2)", ""]
    found = False
    for shot in _shot_dirs(run / "importance"):
        agg = shot / "aggregate.safetensors"
        if not agg.is_file():
            continue
        found = True
        imp = read_tensors(agg)[0]["importance"]
        path = figures.heatmap(imp.tolist(), figs / f"importance-aggregate-{shot.name}.png",
                               f"aggregate head importance, {shot.name}", "head", "layer")
        _figure(lines, path, run, f"aggregate head importance {shot.name}")
    if not found:
        lines += ["(no importance files under importance/)", ""]
    lines += ["## FFN importance (oracle knockouts; docs/method.md §3)", ""]
    for shot in _shot_dirs(run / "ffn_importance"):
        agg = _json(shot / "aggregate.json")
        if not agg:
            continue
        lines += [f"{shot.name}: mean drop (points) per layer when its FFN alone is removed: "
                  + ", ".join(f"L{i} {d:+.1f}" for i, d in enumerate(agg["drop"]))
                  + f"; ranking (least important first) {agg['ranking']}", ""]
        _figure(lines, figures.bars(agg["drop"], figs / f"ffn-importance-{shot.name}.png",
                                    f"FFN knockout drop, mean over tasks, {shot.name}", "layer", "drop (points)"),
                run, f"FFN importance {shot.name}")
    return lines


def _inflection(curve: dict[str, float]) -> float | None:
    """Largest pruned % up to which the metric stays within INFLECTION_POINTS of the 0% value."""
    if "0" not in curve:
        return None
    base, best = curve["0"], 0.0
    for pct in sorted(curve, key=float):
        if curve[pct] < base - INFLECTION_POINTS:
            break
        best = float(pct)
    return best


def pruning_section(run: Path, figs: Path) -> list[str]:
    lines = ["## Pruning sweeps (docs/method.md §4)", "",
             f"Inflection point: the largest % pruned at which the metric stays within {INFLECTION_POINTS:g} "
             "point of the unpruned model (metric x100).", ""]
    tables = sorted((run / "prune").glob("*.json")) if (run / "prune").is_dir() else []
    tables = [t for t in tables if t.name != "fingerprint.json"]
    if not tables:
        return lines + ["(no sweep tables under prune/)", ""]
    for path in tables:
        tab = _json(path)
        if not isinstance(tab, dict) or "results" not in tab:
            continue
        sweep, ranking = tab["sweep"], tab["ranking"]
        lines += [f"### {sweep}, ranking: {ranking}", ""]
        if tab.get("missing_units"):
            lines += [f"{len(tab['missing_units'])} units missing (run still in progress or killed).", ""]
        axis = "ffn" if sweep == "ffn" else "heads"
        for shot, grid in sorted(tab["mean_over_tasks"].items()):
            if sweep == "grid":
                hs = sorted(grid, key=float)
                fs = sorted({f for h in hs for f in grid[h]}, key=float)
                matrix = [[grid[h].get(f, float("nan")) for f in fs] for h in hs]
                lines += [f"{shot}, mean over tasks (rows: heads %, columns: FFN %)", ""]
                lines += _table(["heads % \\ FFN %"] + fs, [[h] + row for h, row in zip(hs, matrix)])
                _figure(lines, figures.heatmap(matrix, figs / f"grid-{ranking}-{shot}.png",
                                               f"combined pruning, mean metric, {shot}", "FFN % pruned",
                                               "heads % pruned", xticks=fs, yticks=hs, annotate=True),
                        run, f"grid {shot}")
        if sweep == "grid":
            continue
        series, rows = {}, []
        for task, per_shot in sorted(tab["results"].items()):
            row = [task]
            for shot in sorted(tab["mean_over_tasks"]):
                cells = per_shot.get(shot, {})
                curve = ({h: v["0"] for h, v in cells.items() if "0" in v} if axis == "heads"
                         else {f: v for f, v in cells.get("0", {}).items()})
                row.append(_inflection(curve))
            rows.append(row)
        for shot, cells in sorted(tab["mean_over_tasks"].items()):  # the paper plots the mean over tasks
            curve = ({h: v["0"] for h, v in cells.items() if "0" in v} if axis == "heads"
                     else dict(cells.get("0", {})))
            xs = sorted(curve, key=float)
            series[f"mean over tasks, {shot}"] = ([float(x) for x in xs], [curve[x] for x in xs])
        lines += _table(["task"] + [f"inflection % ({s})" for s in sorted(tab["mean_over_tasks"])], rows)
        _figure(lines, figures.curves(series, figs / f"prune-{sweep}-{ranking}.png",
                                      f"{sweep} pruning, ranking {ranking}", f"% {axis} pruned", "mean metric x100"),
                run, f"{sweep} pruning {ranking}")
    return lines


def correlation_section(run: Path, figs: Path) -> list[str]:
    lines = ["## Spearman rank correlation of head importance (docs/method.md §5)", ""]
    corr = _json(run / "correlate" / "correlations.json")
    if not corr:
        return lines + ["(no correlate/correlations.json)", ""]
    for key, block in corr["shots"].items():
        shot = key if key.startswith("shots-") else f"shots-{key}"
        tasks = block["tasks"]
        lines += [f"### {shot}: true Spearman rho (p-values in correlations.json)", ""]
        lines += _table(["task"] + tasks, [[t] + row for t, row in zip(tasks, block["spearman"]["rho"])])
        _figure(lines, figures.heatmap(block["spearman"]["rho"], figs / f"srcc-{shot}.png", f"SRCC, {shot}",
                                       "task", "task", xticks=tasks, yticks=tasks, vmin=-1, vmax=1,
                                       cmap="coolwarm", annotate=len(tasks) <= 8), run, f"SRCC {shot}")
        if block.get("vs_aggregate"):
            rows = [[t, v["rho"], v["paper_argsort_pearson"], v["top_overlap"]] for t, v in block["vs_aggregate"].items()]
            lines += ["Against the aggregate ranking (the paper's argsort-Pearson variant shown for comparison):", ""]
            lines += _table(["task", "Spearman rho", "paper_argsort_pearson", "top-30% overlap"], rows)
    if corr.get("cross_shot"):
        lines += ["### Across shots (same task)", ""]
        rows = [[pair, v["mean"]["rho"], v["variance"]["rho"], v["mean"]["top_overlap"]]
                for pair, v in corr["cross_shot"].items()]
        lines += _table(["shots", "mean Spearman rho over tasks", "variance", "mean top-30% overlap"], rows)
    return lines


def induction_section(run: Path, figs: Path) -> list[str]:
    lines = ["## Induction heads: prefix matching and copying (docs/method.md §7-8)", ""]
    ind = run / "induction"
    found = sorted(ind.glob("*.json")) if ind.is_dir() else []
    if not found:
        return lines + ["(no induction outputs)", ""]
    top_prefix = None
    for path in found:
        summary = _json(path)
        if not summary or "top_heads" not in summary:
            continue
        name = path.stem
        tops = summary["top_heads"][:5]
        lines += [f"Top heads, {name}: " + ", ".join(f"L{h['layer']}H{h['head']} {h['score']:.3f}" for h in tops), ""]
        if name == "prefix_matching_paper":
            top_prefix = summary["top_heads"]
        mean = read_tensors(ind / f"{name}.safetensors")[0]["mean"]
        _figure(lines, figures.heatmap(mean.tolist(), figs / f"{name}.png", name.replace("_", " "), "head", "layer"),
                run, name)
    if top_prefix:
        lines += overlap_lines(run, top_prefix)
    cap = _json(run / "capacity" / "capacity.json")
    if cap:
        lines += ["## Capacity retained under head pruning (docs/method.md §9)", ""]
        # The report keeps the aggregate rankings and the random reference; capacity.json has every task.
        table = {k: v for k, v in cap["retained_at_pruned_percent"].items()
                 if k.endswith("/aggregate") or k.endswith("random_expected")}
        if table:
            pcts = list(next(iter(table.values())))
            lines += ["% of the total score kept when the given % of heads is pruned least-important-first:", ""]
            lines += _table(["scores / ranking"] + pcts,
                            [[k.replace("|", " / ")] + [v[p] for p in pcts] for k, v in sorted(table.items())])
        tensors = read_tensors(run / "capacity" / "capacity.safetensors")[0]
        x = tensors["x"].tolist()
        for score in sorted({k.split("|")[0] for k in tensors if k != "x"}):
            # the aggregate rankings against the random reference, as the table; per-task curves stay in
            # capacity.safetensors (dozens of lines would hide the comparison)
            series = {k.split("|")[1]: (x, tensors[k].tolist()) for k in sorted(tensors)
                      if k.startswith(score + "|") and (k.endswith("/aggregate") or "|random" in k)}
            _figure(lines, figures.curves(series, figs / f"capacity-{score}.png", f"capacity retained: {score}",
                                          "% heads pruned", "% of total score kept",
                                          dashed=[k for k in series if k.startswith("random")]),
                    run, f"capacity {score}")
    return lines


def overlap_lines(run: Path, top_prefix: list[dict]) -> list[str]:
    """How many induction heads (prefix matching >= 0.5) are among the top-30% important heads."""
    induction = {(h["layer"], h["head"]) for h in top_prefix if h["score"] >= 0.5}
    lines = [f"Induction heads (paper prefix matching >= 0.5): {sorted(induction) or 'none'}", ""]
    rows = []
    for shot in _shot_dirs(run / "importance"):
        agg = shot / "aggregate.safetensors"
        if not agg.is_file() or not induction:
            continue
        imp = read_tensors(agg)[0]["importance"]
        n_heads = imp.shape[1]
        k = max(1, int(0.3 * imp.numel()))
        top = {(int(i) // n_heads, int(i) % n_heads) for i in imp.flatten().argsort(descending=True)[:k].tolist()}
        rows.append([shot.name, f"{len(induction & top)}/{len(induction)}"])
    if rows:
        lines += ["Induction heads among the top-30% aggregate-important heads:", ""] + _table(["shots", "overlap"], rows)
    return lines


def copytask_section(run: Path) -> list[str]:
    res = _json(run / "copytask" / "copytask.json")
    if not res:
        return []
    heads = lambda hs: ", ".join(f"L{layer}H{head}" for layer, head in hs) or "none"
    rows = [["all heads", "-", res["accuracy_full"]],
            ["induction heads (prefix matching >= 0.5)", heads(res["induction_heads"]), res["accuracy_induction_pruned"]],
            ["control: least important by copy-task gradient importance", heads(res["control_heads"]),
             res["accuracy_control_pruned"]]]
    if "accuracy_control_prefix_matching_pruned" in res:
        rows.append(["control: lowest prefix matching", heads(res.get("control_heads_prefix_matching", [])),
                     res["accuracy_control_prefix_matching_pruned"]])
    return (["## Synthetic in-context copying (the organism check)", "",
             f"Accuracy of predicting each token of the second repeat ({res.get('seeds', '?')} sequences of "
             f"{res.get('length', '?')} random tokens), with heads pruned:", ""]
            + _table(["pruned", "heads", "copy accuracy"], rows))


def write_report(run: str | Path, skipped_tasks: list[str] | None = None) -> Path:
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: run directory not found")
    if skipped_tasks is None:
        skipped_tasks = _json(run / "skipped_tasks.json") or []
    figs = run / "figures"
    lines = ["# opt66b study report", "", f"Run directory: `{run}`. Commands: `commands.txt` (if written by `run.py all`).", ""]
    if not figures.have_matplotlib():
        lines += ["Figures: matplotlib is not installed. `pip install -e \".[plots]\"` then "
                  f"`python run.py report --run {run}` draws them.", ""]
    if skipped_tasks:
        lines += ["Tasks skipped for missing data: " + "; ".join(skipped_tasks), ""]
    lines += accuracy_section(run)
    lines += importance_section(run, figs)
    lines += pruning_section(run, figs)
    lines += correlation_section(run, figs)
    lines += induction_section(run, figs)
    lines += copytask_section(run)
    return atomic_write_text(run / "report.md", "\n".join(lines) + "\n")
