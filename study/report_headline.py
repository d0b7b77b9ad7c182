"""The report's opening statements: which protocol drove the run, the headline read the paper's way
(knees of the mean-over-seen-tasks curves beside the paper's own points and the tolerance reading),
and what the other protocol's importance targets change."""

from __future__ import annotations

from pathlib import Path

from opt66b.runs.results import write_json
from opt66b.runs.layout import RunLayout, eval_results, shot_dirs, shots_name
from prune.inflection import (DEFAULT_MIN_BEND, RULES, axis_errors, headline, knee_intervals, mean_curve, mean_errors,
                              mean_grid)
from prune.intervals import KNEE_ITERS, KNEE_SEED, MAX_WIDTH, against_paper
from prune.paper import PAPER_HEADLINE
from tasks.registry import seen_in

from .report_kit import count_groups, md_table, model_config, pct, run_json, sweep_tables


def _span(iv: dict | None) -> str:
    if not iv or iv["lo"] is None:
        return ""
    where = f"{pct(iv['lo'])}-{pct(iv['hi'])}%" if iv["lo"] != iv["hi"] else f"{pct(iv['lo'])}%"
    none = f"; no knee in {iv['none_share']:.0%} of resamples" if iv.get("none_share") else ""
    return f" (95% interval {where}{none})"


def _drop(p: dict) -> str:
    """'drop 5.1 (95% interval 2.0 to 8.3)'; a negative drop as a gain, its interval still the drop's."""
    drop, ci = p.get("drop_points"), p.get("drop_ci95")
    said = f"drop {drop:.1f}" if drop >= 0 else f"gain {-drop:.1f} above the unpruned model"
    if not ci:
        return said
    return said + f" (drop's 95% interval {ci[0]:.1f} to {ci[1]:.1f})"


def point_text(p: dict | None, axis: str, rule: str = "knee") -> str:
    """'70% (95% interval 60-80%), drop 5.1 (95% interval ...)' for a headline point of one axis ('heads',
    'ffn' or 'both'), 'no knee' / '-' where the rule finds none."""
    if not p:
        return "no knee" if rule == "knee" else "-"
    iv = p.get("interval") or {}
    if axis == "both":
        where = (f"{pct(p.get('head_percent'))}%{_span(iv.get('heads'))} / "
                 f"{pct(p.get('ffn_percent'))}%{_span(iv.get('ffn'))}")
    else:
        where = f"{pct(p.get('head_percent' if axis == 'heads' else 'ffn_percent'))}%{_span(iv)}"
    return where if p.get("drop_points") is None else f"{where}, {_drop(p)}"


def _cell_ci(ci: dict, head: float, ffn: float) -> dict:
    return ci.get(f"{head:g}", {}).get(f"{ffn:g}", {}) or {}


def _attach_intervals(reading: dict, knee_interval: dict | None, ci: dict) -> None:
    """Put the knee's bootstrap interval and each point's paired drop (se and 95% interval of the mean over
    tasks, from the sweep table's mean_over_tasks_ci at this shot) into one axis's headline reading."""
    for rule, point in reading.items():
        if point:
            cell = _cell_ci(ci, point["head_percent"], point["ffn_percent"])
            point["drop_se"], point["drop_ci95"] = cell.get("drop_se"), cell.get("drop_ci95")
            if rule == "knee":
                point["interval"] = knee_interval


def paper_verdicts(paper: dict, knee_interval: dict | None, ci: dict) -> dict[str, str]:
    """This run against the paper's point of one axis: where the knee is (the paper's percentage against
    the knee's bootstrap interval, whether or not the measured curve has a knee) and, for the combined
    point, the drop there (the paper's points against this run's paired interval at the paper's own
    cell). prune/intervals.against_paper says how."""
    out = {}
    if "head_percent" in paper and "ffn_percent" in paper:  # the combined point
        for axis, key in (("heads", "head_percent"), ("ffn", "ffn_percent")):
            out[f"{axis} location"] = against_paper(paper[key], (knee_interval or {}).get(axis), "location")
    else:
        key = "head_percent" if "head_percent" in paper else "ffn_percent"
        out["location"] = against_paper(paper[key], knee_interval, "location")
    if paper.get("drop_points") is not None:
        cell = _cell_ci(ci, paper["head_percent"], paper["ffn_percent"])
        out["drop"] = against_paper(paper["drop_points"], cell.get("drop_ci95"), "drop")
    return out


def _params(p: dict | None) -> str:
    if not p:
        return "-"
    n = p["params_removed"]
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n:,}"


def _limits(shot: str, res: dict) -> list[str]:
    """Sentences where an interval spans a distinction the paper draws, or where the grid of percentages
    or the model's FFN count, not the documents, sets the knee interval's width."""
    out = []
    iv = ((res.get("ffn") or {}).get("knee") or {}).get("interval")
    if iv and iv["lo"] is not None and iv["lo"] <= 10 and iv["hi"] >= 20:
        out.append(f"{shot}: the FFN knee's interval ({pct(iv['lo'])}-{pct(iv['hi'])}%) holds both 10% and 20%: at "
                   "this sample size the run cannot tell the paper's 1/5-shot knee from its 0-shot one.")
    iv = ((res.get("heads") or {}).get("knee") or {}).get("interval")
    if iv and iv["lo"] is not None and iv["hi"] - iv["lo"] >= 30:
        out.append(f"{shot}: the heads knee moves over {pct(iv['lo'])}-{pct(iv['hi'])}% under resampling of the "
                   "documents: more documents are needed to place it.")
    return out


def _ffn_count_limit(tables: dict, cfg) -> list[str]:
    """A sentence when several FFN percentages remove the same number of FFNs (a small model): there the
    FFN knee and its interval are set by the model's size, not by the documents."""
    ffn = tables.get("ffn-own")
    shared = count_groups(ffn, "ffn") if ffn else []
    if not shared:
        return []
    return [f"This model has {cfg.num_layers} FFNs: {'; '.join(shared)} of them, so the FFN knee and its interval "
            "are set by the model's size there, not by the documents."]


def _shot_reading(shot: str, tables: dict, cfg, min_bend: float, tolerance: float) -> dict:
    """headline() of one shot with its knee intervals, each point's drop interval, and the paper verdicts."""
    heads, ffn, grid = tables.get("heads-own"), tables.get("ffn-own"), tables.get("grid-own")
    h = mean_curve(heads, seen_in(heads["results"]), shot, "heads")[0] if heads else None
    f = mean_curve(ffn, seen_in(ffn["results"]), shot, "ffn")[0] if ffn else None
    g = mean_grid(grid, seen_in(grid["results"]), shot)[0] if grid else None
    errors = {"heads": axis_errors(mean_errors(heads, seen_in(heads["results"]), shot), "heads") if heads else None,
              "ffn": axis_errors(mean_errors(ffn, seen_in(ffn["results"]), shot), "ffn") if ffn else None,
              "grid": mean_errors(grid, seen_in(grid["results"]), shot) if grid else None}
    res = headline(h, f, g, cfg, min_bend, tolerance, {k: v for k, v in errors.items() if v})
    ivs = knee_intervals(heads, ffn, grid, lambda t: seen_in(t["results"]), shot, min_bend)
    paper = PAPER_HEADLINE.get(int(shot.split("-")[1]), {})
    for key, tab in (("heads", heads), ("ffn", ffn), ("both", grid)):
        if key in res and tab:
            ci = (tab.get("mean_over_tasks_ci") or {}).get(shot, {})
            _attach_intervals(res[key], ivs[key]["knee"], ci)
            if key in paper:
                res[key]["against_paper"] = paper_verdicts(paper[key], ivs[key]["knee"], ci)
    return res


def _verdicts(v: dict | None) -> str:
    return "; ".join(f"{k}: {s}" for k, s in (v or {}).items()) or "-"


def headline_section(run: Path, tolerance: float, min_bend: float = DEFAULT_MIN_BEND) -> list[str]:
    """The paper's headline read the paper's way (knees of the mean-over-seen-tasks curves), beside the
    paper's own points, this run's verdict against them, and the tolerance reading; writes headline.json."""
    tables, cfg = sweep_tables(run), model_config(run)
    lines = ["## Headline (paper abstract and §5)", "",
             "Read as the paper reads it: where the mean over the seen tasks bends (the knee of the heads and "
             "the FFN curves, and the grid's combined knee; prune/inflection.py), with the drop there in points "
             f"of the metric x100. Beside it the paper's own points for OPT-66B, whether this run agrees with them "
             f"given its intervals, and a second reading, the largest share whose drop's point estimate is within "
             f"{tolerance:g} point(s) of the unpruned model (its interval printed beside it). Rules: knee = "
             f"{RULES['knee']} (min_bend {min_bend:g}); grid knee = {RULES['grid_knee']}.", ""]
    if cfg is None or not (tables.get("heads-own") or tables.get("ffn-own")):
        return lines + ["(no own-ranking sweeps, or the model config is unknown)", ""]
    shots = sorted({s for name in ("heads-own", "ffn-own", "grid-own") if tables.get(name)
                    for per in tables[name]["results"].values() for s in per}, key=lambda s: int(s.split("-")[1]))
    rows, out, notes = [], {}, _ffn_count_limit(tables, cfg)
    for shot in shots:
        out[shot] = res = _shot_reading(shot, tables, cfg, min_bend, tolerance)
        notes += _limits(shot, res)
        paper = PAPER_HEADLINE.get(int(shot.split("-")[1]), {})
        for key, label in (("heads", "heads"), ("ffn", "FFNs"), ("both", "heads + FFNs")):
            if key in res:
                r = res[key]
                rows.append([shot, label, point_text(paper.get(key), key), point_text(r["knee"], key),
                             _verdicts(r.get("against_paper")), _params(r["knee"]),
                             point_text(r["tolerance"], key, "tolerance")])
    write_json(RunLayout(run).headline, {
        "rule": "knee", "rules": {k: RULES[k] for k in ("knee", "grid_knee", "tolerance")}, "min_bend": min_bend,
        "tolerance_points": tolerance, "max_width": MAX_WIDTH,
        "intervals": {"knee": f"bootstrap over evaluation documents, {KNEE_ITERS} resamples, seed {KNEE_SEED}, "
                              "2.5-97.5% quantiles; ranking and demonstrations held fixed",
                      "drop_ci95": "paired exact interval per task joined over the seen tasks (prune/intervals.py)"},
        "paper_opt66b": {shots_name(k): v for k, v in PAPER_HEADLINE.items()}, "shots": out})
    lines += [INTERVALS_SENTENCE.format(iters=KNEE_ITERS, drop=MAX_WIDTH["drop"], location=MAX_WIDTH["location"]), ""]
    return lines + md_table(["shots", "pruned", "paper (OPT-66B)", "this run: knee", "against the paper",
                             "parameters removed at the knee", f"within {tolerance:g} point(s)"], rows) + [
        n + "\n" for n in notes]


INTERVALS_SENTENCE = (
    "Intervals. The knee's 95% interval is a bootstrap over the evaluation documents ({iters} resamples of each "
    "task's documents, the mean curve rebuilt and its knee read again); it includes the documents' sampling only: "
    "the head ranking (from the importance documents) and the in-context demonstrations are held fixed, so the "
    "run's ranking variability is not in it. A drop's interval is the paired exact interval of each task joined "
    "over the seen tasks (prune/intervals.py). Against the paper: \"consistent\" when the paper's value is inside "
    "this run's interval, \"differs\" when outside, \"too imprecise to tell\" when inside an interval wider than "
    "{drop:g} points (a drop) or {location:g} percentage points (a knee), or when most resamples have no knee.")


PROTOCOL_SENTENCES = {
    "corrected": "the corrected choices: lm-eval's importance targets (with the leading space), every WSC row, "
                 "one importance denominator for every layer, transfer partners by the true Spearman rho (and the "
                 "paper's SRCC beside it)",
    "paper": "the paper's released code: importance targets without the leading space (ARC, OpenBookQA, HellaSwag, PIQA, "
             "MathQA), WSC's positive rows only, its last-layer denominator, MathQA demos without the space, its "
             "published transfer partners (and its SRCC beside them)",
}


def protocol_lines(run: Path) -> list[str]:
    """The report's first statement: which protocol drove the run (`run.py all --protocol`)."""
    study = run_json(RunLayout(run).study) or {}
    protocol = study.get("protocol")
    if protocol is None:  # a run of single commands: read it from the evaluation's settings
        res = next((r for r in (run_json(eval_results(p)) for p in shot_dirs(RunLayout(run).eval)) if r), None)
        if res is not None:
            protocol = "paper" if (res.get("config") or {}).get("paper_quirks") else "corrected"
    if protocol not in PROTOCOL_SENTENCES:
        return []
    other = "paper" if protocol == "corrected" else "corrected"
    return [f"**Protocol: {protocol}** ({PROTOCOL_SENTENCES[protocol]}). `run.py all --protocol {other}` runs the "
            f"other; what its importance targets change is measured below (\"What the importance targets change\").",
            ""]


def targets_section(run: Path) -> list[str]:
    """How far the other protocol's importance targets move each ranking (correlations.json["targets"])."""
    corr = run_json(RunLayout(run).correlations) or {}
    tg = corr.get("targets")
    lines = ["## What the importance targets change", ""]
    if not tg:
        return lines + ["(not measured: no task of this run builds other importance examples under the other "
                        "protocol, or the run predates it)", ""]
    lines += [f"Each ranking of this run against the same task's ranking under the other protocol's targets "
              f"({tg['other_dir']}/; same denominator). Spearman rho, and the share of the top "
              f"{tg['top_fraction']:.0%} heads both keep; the aggregate is rebuilt with the other targets.", ""]
    rows = []
    for k, block in tg["shots"].items():
        agg = block.get("aggregate")
        if agg:
            rows.append([shots_name(k), f"aggregate ({len(agg['from_other'])} of {len(agg['members'])} tasks change)",
                         agg["rho"], agg["top_overlap"], 1 - agg["top_overlap"]])
        rows += [[shots_name(k), t, v["rho"], v["top_overlap"], 1 - v["top_overlap"]] for t, v in block["tasks"].items()]
    return lines + md_table(["shots", "ranking", "Spearman rho", "top-30% kept", "top-30% moved"], rows)
