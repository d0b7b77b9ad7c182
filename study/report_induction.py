"""Report sections on rankings and induction: transfer, SRCC in both variants, prefix matching and
copying (every variant), their overlap with important heads over all heads, capacity, the copy task.

Part of `report.md` (study/report.py owns the page, the figure index and the task order).
"""

from __future__ import annotations

from pathlib import Path

from opt66b.runs.results import read_tensors
from opt66b.runs.layout import RunLayout, shot_dirs, shot_of, shots_name
from prune import stats
from prune.paper import PAPER_P_LEVEL
from tasks.registry import seen_in

from . import figures
from .report_kit import Figures, figure_at, md_table, run_json, xy

# The scores the paper's figures draw (its released code's), with the per-task capacity figure of each
# (Appendix A.9); every other variant is this study's and is indexed as not in the paper.
PAPER_SCORES = {"prefix_matching_paper": "23", "copying_paper": "24"}
INDUCTION_THRESHOLD = 0.5  # a head with prefix matching (or copying) >= 0.5 is counted as an induction head
TOP_FRACTION = 0.3  # "important heads": the top 30% of the aggregate ranking, as the paper's overlap

VARIANT_SENTENCES = {
    "prefix_matching_paper": "the paper's released code (Algorithm 1 as it runs): the attention summed over the keys "
                             "after earlier copies, with a spurious key at position 1 for the last token of repeats 2-4",
    "prefix_matching_corrected": "the released code's sum over only the positions that truly follow an earlier "
                                 "occurrence of the query's token",
    "prefix_matching_text": "Appendix A.8 as written: the average (not the sum) of the attention entries on the tokens "
                            "that followed the same token in earlier repeats",
    "copying_paper": "the paper's released code: embedding-level input to every layer, the head's OV output at the "
                     "query position (plus the output bias), full-vocabulary probabilities, no final layer norm",
    "copying_index_fix": "the released code with only its index fixed: the OV output of the attended source "
                         "position, everything else as the code's",
    "copying_attended_logits": "the attended token's OV output alone, as logits, without the output bias: both of the "
                               "code's departures from the text fixed, but narrower than the text",
    "copying_text": "Appendix A.8 as written: the direct path, the head's contribution to the logits (its "
                    "attention-weighted output through its slice of the output projection, with the output bias), "
                    "the attended token's logit against the other attendable tokens'",
    "copying_residual": "an extension, not the paper's measurement: the real forward pass on the residual stream, "
                        "the head's attention-weighted value vector through its slice of the output projection "
                        "(no bias) and the unembedding, as logits",
}


# -- transfer -------------------------------------------------------------------------------------------
def transfer_section(run: Path, figs: Figures) -> list[str]:
    lines = ["## Cross-task transfer (paper §6.1, Figs. 9, 21, 22)", ""]
    tr = run_json(RunLayout(run).table("transfer"))
    if not tr:
        return lines + ["(no prune/transfer.json)", ""]
    lines += [f"Partners chosen by: {', '.join(tr.get('variants', []))}. `published` = the paper's own pairs (its "
              f"plotting script); `{tr['paper_choice_variant']}` = the highest / lowest seen task under the paper's "
              "SRCC as its released code computes it (the published pairs are consistent with this statistic; which one the "
              "authors read them from is not stated); `spearman` = the same under "
              "the true Spearman rho.", ""]

    def side(s: dict) -> str:
        return s["task"] + ("" if s.get("value") is None else f" ({s['value']:.3f})")

    for key, block in tr["shots"].items():
        rows, panels, notes = [], {}, []
        for entry in block["chosen"]:
            sub = f" (instead of {entry['instead_of']})" if "instead_of" in entry else ""
            for variant, sides in entry["partners"].items():
                rows.append([entry["task"] + sub, variant, side(sides["high"]), side(sides["low"])])
            notes += entry.get("notes", [])
        lines += [f"### {shots_name(key)}", ""] + md_table(["task", "chosen by", "highest partner", "lowest partner"], rows)
        lines += [f"Note: {n}." for n in notes] + ([""] if notes else [])
        curve_rows = []
        for entry in block["chosen"] + block["unseen"]:
            series = {name: xy({float(x): y for x, y in c.items()}) for name, c in entry["curves"].items() if c}
            panels[entry["task"] + (" (unseen)" if entry in block["unseen"] else "")] = series
            for name, c in entry["curves"].items():
                if c:
                    curve_rows.append([entry["task"], name] + [c.get(p) for p in ("0", "10", "30", "50", "70", "90")])
        lines += md_table(["task", "ranking", "0%", "10%", "30%", "50%", "70%", "90%"], curve_rows)
        lines += transfer_gap_lines(block)
        figs.add(lines, figures.curve_panels(panels, figs.dir / f"transfer-{shots_name(key)}.png",
                                             f"cross-task transfer, {shots_name(key)}", "% heads pruned", "metric x100",
                                             dashed=[k for p in panels.values() for k in p if "spearman" in k]),
                 figure_at("transfer", int(key)), f"cross-task transfer, {shots_name(key)}")
    return lines


def transfer_gap_lines(block: dict) -> list[str]:
    """Own-ranking curve minus each other ranking's, paired on the same documents, with 95% intervals;
    a sentence for every ranking the run cannot tell apart from the task's own at any percentage."""
    rows, blurred = [], []
    for entry in block["chosen"] + block["unseen"]:
        for name, per_pct in (entry.get("vs_own") or {}).items():
            gaps = {p: g for p, g in per_pct.items() if g and float(p) > 0}
            if not gaps:
                continue
            rows.append([entry["task"], name] + [
                "-" if not gaps.get(p) else f"{gaps[p]['drop']:+.1f} [{gaps[p]['drop_ci95'][0]:+.1f}, {gaps[p]['drop_ci95'][1]:+.1f}]"
                for p in ("30", "50", "70")])
            if all(g["drop_ci95"][0] <= 0 <= g["drop_ci95"][1] for g in gaps.values()):
                blurred.append(f"{entry['task']} / {name}")
    if not rows:
        return []
    lines = ["Own-ranking curve minus the other ranking's, points, with the paired 95% interval (same documents):", ""]
    lines += md_table(["task", "ranking", "30%", "50%", "70%"], rows)
    if blurred:
        lines += [f"Not separable from the task's own ranking at this sample size (every interval holds 0): "
                  f"{', '.join(blurred)}.", ""]
    return lines


# -- SRCC -------------------------------------------------------------------------------------------------
def _correlation_tables(shot: str, block: dict) -> list[str]:
    """One shot's tables beside the matrices: against the aggregate, the unseen and synthetic tasks, and the
    last-layer denominator erratum."""
    lines: list[str] = []
    if block.get("matrix_tasks") == "all":
        lines += [f"{shot}: no seen task has importance here, so the matrices hold every task present.", ""]
    if block.get("vs_aggregate"):
        rows = [[t, v["rho"], v["paper_argsort_pearson"], v["top_overlap"]] for t, v in block["vs_aggregate"].items()]
        lines += ["Against the aggregate ranking:", ""]
        lines += md_table(["task", "Spearman rho", "paper's SRCC (argsort)", "top-30% overlap"], rows)
    other = block.get("other_tasks")
    if other:
        lines += ["Unseen and synthetic tasks, kept out of every number above (the paper's generalisation "
                  "question: does the aggregate of the seen tasks rank their heads too?):", ""]
        lines += md_table(["task", "Spearman rho vs aggregate", "paper's SRCC (argsort)", "top-30% overlap",
                         "mean rho vs the seen tasks"],
                        [[t, (other["vs_aggregate"].get(t) or {}).get("rho"),
                          (other["vs_aggregate"].get(t) or {}).get("paper_argsort_pearson"),
                          (other["vs_aggregate"].get(t) or {}).get("top_overlap"),
                          _mean([v["rho"] for v in other["vs_seen"][t].values()])] for t in other["tasks"]])
    if block.get("denominators"):
        lines += ["Erratum, last-layer denominator: the paper divides the last layer by target tokens and the "
                  "others by positions; `uniform` divides every layer by positions.", ""]
        lines += md_table(["ranking", "Spearman rho paper vs uniform", "last-layer share of top 30%: paper",
                         "uniform"],
                        [[t, d["rho"], d["last_layer_share_top"]["paper"], d["last_layer_share_top"]["uniform"]]
                         for t, d in block["denominators"].items()])
    return lines


def correlation_section(run: Path, figs: Figures) -> list[str]:
    lines = ["## Rank correlation of head importance (paper §6.1, Figs. 8, 20)", ""]
    corr = run_json(RunLayout(run).correlations)
    if not corr:
        return lines + ["(no correlate/correlations.json)", ""]
    lines += ["Both statistics are drawn: the true Spearman rho (p-values below) and the paper's SRCC as its released "
              "code computes it (Pearson of argsort vectors; the paper's figures' values fall in this statistic's range, "
              "but the text does not say which it drew). The matrices hold the "
              "paper's seen tasks present, with the aggregate ranking as their last task row and column, as the "
              "paper's Fig. 8; the last row of each figure is a random permutation of the heads (seeded, the "
              "paper's `--random` row): what no agreement looks like.", ""]
    for key, block in corr["shots"].items():
        shot = key if shot_of(key) is not None else shots_name(key)
        tasks = block["tasks"]
        rand = block.get("random_baseline", {})
        rows = tasks + (["random"] if rand else [])
        true = [list(r) for r in block["spearman"]["rho"]] + ([[rand[t]["rho"] for t in tasks]] if rand else [])
        arg = [list(r) for r in block["paper_argsort_pearson"]] + \
            ([[rand[t]["paper_argsort_pearson"] for t in tasks]] if rand else [])
        figs.add(lines, figures.matrix_panels({"true Spearman rho": (true, rows, tasks),
                                               "paper's SRCC (argsort Pearson)": (arg, rows, tasks)},
                                              figs.dir / f"srcc-{shot}.png", f"rank correlation of importance, {shot}",
                                              cbar_label="rank correlation of the importance rankings"),
                 figure_at("srcc", shot_of(shot)), f"SRCC in both variants with a random row, {shot}")
        p = block["spearman"]["p"]
        weak = [f"{a}/{b} p={p[i][j]:.2g}" for i, a in enumerate(tasks) for j, b in enumerate(tasks)
                if j > i and p[i][j] is not None and p[i][j] >= PAPER_P_LEVEL]
        lines += [f"{shot}: Spearman p-values (two-sided t, n = {block['n_heads']} heads), tested at the paper's "
                  f"p < {PAPER_P_LEVEL:g}: " + (f"{len(weak)} pairs not significant: {', '.join(weak)}" if weak else
                                                "every pair significant"), ""]
        if rand:
            lines += md_table(["task", "rho vs random", "p", "argsort vs random", "top-30% overlap vs random"],
                            [[t, rand[t]["rho"], rand[t]["p"], rand[t]["paper_argsort_pearson"], rand[t]["top_overlap"]]
                             for t in tasks])
        lines += _correlation_tables(shot, block)
    if corr.get("cross_shot"):
        lines += ["### Across shots (same task; mean and variance over the seen tasks, paper §6.2)", ""]
        rows = [[pair, v["mean"]["rho"], v["variance"]["rho"], v["mean"]["paper_argsort_pearson"],
                 v["mean"]["top_overlap"]] for pair, v in corr["cross_shot"].items()]
        lines += md_table(["shots", "mean Spearman rho", "variance", "mean paper's SRCC", "mean top-30% overlap"], rows)
    return lines


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# -- induction scores, overlap, capacity --------------------------------------------------------------------
def induction_section(run: Path, figs: Figures) -> list[str]:
    lines = ["## Induction heads: prefix matching and copying (paper §6.3, Fig. 10, Appendix A.8)", ""]
    ind = RunLayout(run).induction
    scores = {p.stem: read_tensors(p)[0]["mean"] for p in sorted(ind.glob("*.safetensors"))} if ind.is_dir() else {}
    scores = {k: scores[k] for k in VARIANT_SENTENCES if k in scores}
    if not scores:
        return lines + ["(no induction outputs)", ""]
    lines += md_table(["score", "definition", "top heads"],
                    [[name, VARIANT_SENTENCES[name], ", ".join(_top(mean, 3))] for name, mean in scores.items()])
    for name, mean in scores.items():
        figs.add(lines, figures.heatmap(mean.tolist(), figs.dir / f"{name}.png", name.replace("_", " "), "head", "layer",
                                        cbar_label=f"{name.split('_')[0].replace('prefix', 'prefix matching')} score "
                                                   "(mean over seeds)"),
                 "10" if name in PAPER_SCORES else "", f"{name.replace('_', ' ')} per head" +
                 {"prefix_matching_paper": " (10a)", "copying_paper": " (10b)"}.get(name, ""))
    lines += overlap_lines(run, scores)
    return lines + capacity_lines(run, figs)


def _top(mean, k: int) -> list[str]:
    flat, heads = mean.flatten().tolist(), mean.shape[1]
    order = sorted(range(len(flat)), key=lambda i: -flat[i])[:k]
    return [f"L{i // heads}H{i % heads} {flat[i]:.3f}" for i in order]


def overlap_lines(run: Path, scores: dict) -> list[str]:
    """Induction heads among the important heads, over ALL heads (no top-N cut), for every score."""
    lines = ["This study's own measure of the overlap the paper shows by figure (Fig. 10 beside Fig. 3), not a number "
             "the paper reports: "
             f"overlap with the aggregate ranking, over all heads: induction heads = score >= "
             f"{INDUCTION_THRESHOLD:g}; important = top {TOP_FRACTION:.0%} of the aggregate; rho = Spearman "
             "between the score and the aggregate importance.", ""]
    rows = []
    for shot in shot_dirs(RunLayout(run).importance):
        agg = shot / "aggregate.safetensors"
        if not agg.is_file():
            continue
        imp = read_tensors(agg)[0]["importance"]
        heads = imp.shape[1]
        flat_imp = imp.flatten().tolist()
        k = stats.top_count(TOP_FRACTION, len(flat_imp))
        top = set(stats.argsort(flat_imp)[-k:])
        for name, mean in scores.items():
            flat = mean.flatten().tolist()
            induction = [i for i, v in enumerate(flat) if v >= INDUCTION_THRESHOLD]
            shared = sorted(set(induction) & top)
            rows.append([shot.name, name, len(induction), f"{len(shared)}/{len(induction)}",
                         ", ".join(f"L{i // heads}H{i % heads}" for i in shared) or "-",
                         stats.spearman(flat, flat_imp)[0], stats.top_fraction_overlap(flat, flat_imp, TOP_FRACTION)])
    if not rows:
        return lines + ["(no aggregate importance)", ""]
    return lines + md_table(["shots", "score", "induction heads", "among important", "which", "rho",
                           "top-30% overlap"], rows) + denominator_lines(run, scores)


DENOMINATORS = {"importance_uniform": "every layer over positions (the corrected protocol's ranking)",
                "importance_paper_denominator": "the last layer over target tokens (the paper's released code)"}


def denominator_lines(run: Path, scores: dict) -> list[str]:
    """Where the induction heads (prefix_matching_paper >= threshold) rank under each importance denominator of the
    aggregate: the two differ only in the last layer, which moves a small model's last-layer heads as a block."""
    if "prefix_matching_paper" not in scores:
        return []
    flat = scores["prefix_matching_paper"].flatten().tolist()
    induction = [i for i, v in enumerate(flat) if v >= INDUCTION_THRESHOLD]
    rows = []
    for shot in shot_dirs(RunLayout(run).importance):
        agg = shot / "aggregate.safetensors"
        tensors = read_tensors(agg)[0] if agg.is_file() else {}
        for key, what in DENOMINATORS.items():
            if key not in tensors:
                continue
            imp = tensors[key].flatten().tolist()
            top = set(stats.argsort(imp)[-stats.top_count(TOP_FRACTION, len(imp)):])
            rows.append([shot.name, what, f"{len(top & set(induction))}/{len(induction)}"])
    if not rows:
        return []
    return ([f"The induction heads (prefix_matching_paper >= {INDUCTION_THRESHOLD:g}) among the top "
             f"{TOP_FRACTION:.0%} of the aggregate under each importance denominator:", ""]
            + md_table(["shots", "denominator", "among important"], rows))


def capacity_lines(run: Path, figs: Figures) -> list[str]:
    cap = run_json(RunLayout(run).capacity / "capacity.json")
    if not cap:
        return []
    lines = ["## Capacity retained under head pruning (paper §6.3.1, Fig. 11; per task Appendix A.9, Figs. 23, 24)", ""]
    table = {k: v for k, v in cap["retained_at_pruned_percent"].items()
             if k.endswith("/aggregate") or k.endswith("random_expected")}
    heads_at, n = cap.get("heads_at_percent", {}), cap.get("heads")
    if table:
        pcts = list(next(iter(table.values())))
        header = [f"{p} ({heads_at[p]} of {n} heads, {100 * heads_at[p] / n:.3g}%)" if p in heads_at and n else p
                  for p in pcts]
        lines += ["% of the total score kept when the given % of heads is pruned least-important-first (a "
                  "percentage prunes the nearest whole number of heads: the share removed is in brackets, and is "
                  "where the figure's ticks are):", ""]
        lines += md_table(["scores / ranking"] + header,
                        [[k.replace("|", " / ")] + [v[p] for p in pcts] for k, v in sorted(table.items())])
    tensors = read_tensors(RunLayout(run).capacity / "capacity.safetensors")[0]
    x = tensors["x"].tolist()
    ticks = sorted({100 * k / n for k in heads_at.values()}) if heads_at and n else None
    for score in sorted({k.split("|")[0] for k in tensors if k != "x"}):
        keys = [k for k in sorted(tensors) if k.startswith(score + "|")]
        series = {k.split("|")[1]: (x, tensors[k].tolist()) for k in keys
                  if k.endswith("/aggregate") or "|random" in k}
        figs.add(lines, figures.curves(series, figs.dir / f"capacity-{score}.png", f"capacity retained: {score}",
                                       "% of heads pruned (heads removed / all heads)", "% of total score kept",
                                       dashed=[k for k in series if k.startswith("random")], xticks=ticks,
                                       xticklabels=None if ticks is None else [f"{t:.3g}" for t in ticks]),
                 "11" if score in PAPER_SCORES else "", f"capacity retained, aggregate rankings, {score}")
        if score in PAPER_SCORES:  # the paper's per-task figures (A.9): its own scores, its seen tasks
            panels: dict[str, dict] = {}
            for k in keys:
                ranking = k.split("|")[1]
                if "/" in ranking and not ranking.endswith("/aggregate"):
                    shot, task = ranking.split("/", 1)
                    panels.setdefault(shot, {})[task] = (x, tensors[k].tolist())
            for shot in panels:
                panels[shot] = {t: panels[shot][t] for t in seen_in(panels[shot])}
                panels[shot]["random (expected)"] = (x, tensors[f"{score}|random_expected"].tolist())
            figs.add(lines, figures.curve_panels(panels, figs.dir / f"capacity-tasks-{score}.png",
                                                 f"capacity retained per task ranking: {score}",
                                                 "% of heads pruned (heads removed / all heads)",
                                                 "% of total score kept", dashed=["random (expected)"]),
                     PAPER_SCORES[score], f"capacity retained per task ranking, {score}")
    return lines


# -- the synthetic copy task (organism check) -------------------------------------------------------------
def copytask_section(run: Path) -> list[str]:
    res = run_json(RunLayout(run).copytask / "copytask.json")
    if not res:
        return []

    def heads(hs):
        return ", ".join(f"L{layer}H{head}" for layer, head in hs) or "none"

    rows = [["all heads", "-", res["accuracy_full"]],
            ["induction heads (prefix matching >= 0.5)", heads(res["induction_heads"]), res["accuracy_induction_pruned"]],
            ["control: least important by copy-task gradient importance", heads(res["control_heads"]),
             res["accuracy_control_pruned"]]]
    if "accuracy_control_prefix_matching_pruned" in res:
        rows.append(["control: lowest prefix matching", heads(res.get("control_heads_prefix_matching", [])),
                     res["accuracy_control_prefix_matching_pruned"]])
    return (["## Synthetic in-context copying (the organism check, not in the paper)", "",
             f"Accuracy of predicting each token of the second repeat ({res.get('seeds', '?')} sequences of "
             f"{res.get('length', '?')} random tokens), with heads pruned:", ""]
            + md_table(["pruned", "heads", "copy accuracy"], rows))
