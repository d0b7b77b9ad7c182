"""The top of report.md: what the run is about and what it found.

The header names the model and its content identity (the digest of config.json, every shard's bytes and the
tokenizer files, opt66b/runs/identity.py), the data directory and the digest of the files the tasks read (from
data_check.json), the seeds by role, the protocol, the code version, the date and the machine, read from the files
the run wrote (study.json, eval's results.json), so a report is traceable to what produced it.

The summary is written from the run's numbers, each with its 95% interval: the mean accuracy over the seen tasks,
how many task accuracies cannot be told from chance (the rate of guessing among each document's choices), where the
mean pruning curves bend (or that they do not), the induction heads and, when the copy task ran, what pruning them
does. Nothing in it is typed by hand: a run that lacks a part says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from opt66b.fileio import read_json
from opt66b.runs.layout import RunLayout, eval_requests, shot_dirs
from opt66b.runs.store import fingerprint_sha256
from prune.intervals import mean_interval
from tasks.registry import ALL_TASKS, seen_in

from .report_kit import md_table, run_json

INTERVALS_NOTE = ("Every interval in this report is a 95% interval, written [low, high] or \"95% interval low to "
                  "high\"; no ± is used. Accuracies use Clopper-Pearson's exact interval, drops the paired exact "
                  "interval, knees a bootstrap over documents (docs/method.md, \"Intervals\").")


def identity_digest(identity: Any) -> str:
    """A short name of a model's content identity (16 hex digits of the sha256 of its canonical JSON)."""
    return fingerprint_sha256(identity)[:16]


def data_digest(rows: list[dict[str, Any]]) -> tuple[str, int]:
    """(16 hex digits, file count) over the files data_check.json lists, each by its task folder, name and sha256."""
    files = sorted({f"{Path(r['file']).parent.name}/{Path(r['file']).name} {r['sha256']}" for r in rows
                    if r.get("file") and r.get("sha256")})
    return fingerprint_sha256(files)[:16], len(files)


def _first_results(run: Path) -> dict[str, Any]:
    for shot in shot_dirs(RunLayout(run).eval):
        res = run_json(shot / "results.json")
        if res:
            return res
    return {}


def header_lines(run: Path) -> list[str]:
    """The table of what the run is: model, data, seeds, protocol, code, date, machine."""
    layout = RunLayout(run)
    study = run_json(layout.study) or {}
    config = _first_results(run).get("config", {})
    model = study.get("model") or config.get("model") or {}
    rows = []
    if model:
        shape = f"{model.get('layers', '?')} layers x {model.get('heads', '?')} heads"
        rows.append(["model", f"`{model.get('model', '?')}`, {shape}, {model.get('dtype', '?')} on "
                     f"{model.get('device', '?')}; content identity {identity_digest(model.get('identity'))}"])
    checks = (run_json(layout.data_check) or {}).get("rows", [])
    if checks:
        digest, count = data_digest(checks)
        sample = any(r.get("status") == "sample" for r in checks)
        rows.append(["data", f"`{study.get('data') or Path(checks[0]['file']).parent.parent}`"
                     f"{' (the bundled samples)' if sample else ''}; {count} files, digest {digest}"])
    if study.get("seeds"):
        by_seed: dict[Any, list[str]] = {}
        for step, seed in study["seeds"].items():
            by_seed.setdefault(seed, []).append(step)
        rows.append(["seeds", "; ".join(f"{seed} ({', '.join(steps)})" for seed, steps in by_seed.items())])
    elif "seed" in config:
        rows.append(["seeds", f"evaluation {config['seed']}"])
    if study.get("protocol"):
        rows.append(["protocol", study["protocol"]])
    code = study.get("code") or {}
    if code:
        rows.append(["code", ", ".join(f"{k} {v}" for k, v in code.items() if v is not None)])
    rows.append(["date", f"started {study.get('started') or config.get('created', '?')}; this report written "
                         f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}"])
    machine = study.get("machine") or {k: config.get(k) for k in ("platform", "python", "torch") if config.get(k)}
    if machine:
        rows.append(["machine", ", ".join(f"{k} {v}" for k, v in machine.items())])
    return ["## What this run is", ""] + md_table(["what", "of this run"], rows) + [INTERVALS_NOTE, ""]


def chance_rate(run: Path, shot: Path, task: str) -> float | None:
    """The accuracy of guessing: the mean over documents of 1 / (its choices), from eval's request log; None for a
    task scored otherwise (one request per document: LAMBADA's greedy match)."""
    path = eval_requests(shot, task)
    if not path.is_file():
        return None
    choices: dict[Any, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line).get("doc_id")
        choices[doc] = choices.get(doc, 0) + 1
    if not choices or max(choices.values()) < 2:
        return None
    return sum(1 / n for n in choices.values()) / len(choices)


def _accuracy_sentences(run: Path) -> list[str]:
    """The mean accuracy over the seen tasks per shot with its interval, and the tasks not told from chance."""
    said, near_chance, total = [], 0, 0
    for shot in shot_dirs(RunLayout(run).eval):
        res = (run_json(shot / "results.json") or {}).get("results", {})
        values, intervals = [], []
        for task in seen_in(list(res)):
            metric = ALL_TASKS[task].PRIMARY_METRIC if task in ALL_TASKS else "acc"
            value, ci = res[task].get(metric), res[task].get(f"{metric}_ci95")
            if value is None or not ci:
                continue
            values.append(value)
            intervals.append(ci)
            chance = chance_rate(run, shot, task)
            total += 1
            near_chance += chance is not None and ci[0] <= chance <= ci[1]
        if values:
            low, high = mean_interval(values, intervals)
            said.append(f"{shot.name} {sum(values) / len(values):.3f} [{max(low, 0):.3f}, {min(high, 1):.3f}]")
    if not said:
        return ["No task was evaluated."]
    lines = [f"Mean accuracy over the seen tasks evaluated: {'; '.join(said)}."]
    if near_chance:
        lines.append(f"**{near_chance} of {total} task accuracies are within their interval of chance** (guessing "
                     "among each document's choices): for those, the pruning curves and rankings measure noise more "
                     "than the model's skill; a larger model or more documents are needed to read them.")
    return lines


def _pruning_sentences(headline: dict[str, Any]) -> list[str]:
    from .report_headline import point_text

    names = {"heads": "heads", "ffn": "FFNs", "both": "heads and FFNs together"}
    lines = []
    for shot, res in (headline.get("shots") or {}).items():
        parts = []
        for key, name in names.items():
            knee = (res.get(key) or {}).get("knee")
            parts.append(f"{name}: knee at {point_text(knee, key)}" if knee else f"{name}: no knee")
        paper = (headline.get("paper_opt66b") or {}).get(shot, {})
        paper_at = ", ".join(f"{names[k]} {v.get('head_percent') if k == 'heads' else v.get('ffn_percent')}%"
                             for k, v in paper.items() if k in ("heads", "ffn"))
        lines.append(f"Pruning at {shot} (mean over the seen tasks): {'; '.join(parts)}" +
                     (f" (the paper, OPT-66B: {paper_at})." if paper_at else "."))
    return lines


def _induction_sentences(run: Path) -> list[str]:
    res = run_json(RunLayout(run).copytask / "copytask.json")
    if not res:
        return []
    heads = ", ".join(f"L{layer}H{head}" for layer, head in res["induction_heads"]) or "none"
    return [f"Induction heads (prefix matching >= {res.get('threshold', 0.5):g}): {heads}. Copy accuracy on repeated "
            f"random sequences is {res['accuracy_full']:.3f} with every head, {res['accuracy_induction_pruned']:.3f} "
            f"with them pruned, and {res['accuracy_control_pruned']:.3f} with as many control heads pruned."]


def summary_lines(run: Path) -> list[str]:
    """The findings in a paragraph, from the run's files (headline.json must be written first)."""
    layout = RunLayout(run)
    headline = read_json(layout.headline) if layout.headline.is_file() else {}
    sentences = _accuracy_sentences(run) + _pruning_sentences(headline) + _induction_sentences(run)
    return ["## Summary", "", " ".join(sentences), ""]
