"""`run.py data fetch --out DIR`: the study's 16 datasets from the Hugging Face hub, in the layout the loaders read.

The only command that reaches the network, and only when asked. It needs the optional `datasets` package
(`pip install -e ".[data]"`); the run-time dependencies stay torch, safetensors, tokenizers and numpy. Each split is
written as `DIR/<task dir>/<name>.jsonl`, one hub row per line with the hub's own field names: the name is the
hub-export name in the task's FILES table (tasks/<task>.py; e.g. `boolq/validation.jsonl`), which every loader reads
beside the original release files (docs/data.md). The hub ids are those lm-evaluation-harness reads today for the
v0.3 tasks (SuperGLUE moved to `aps/super_glue` in 2026); where the hub's split is not the paper's, SOURCES says so.

    rows = fetch(Path("~/data").expanduser(), ["copa", "rte"])      # [{"task", "split", "file", "records", ...}]

A dataset that cannot be fetched this way (gone from the hub, a loading script the installed `datasets` refuses,
no network) is named with where to get it by hand, and the others are still written. A file already there is kept
unless `overwrite`; every file is written atomically, so a fetch cut short leaves whole files only.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from opt66b.fileio import atomic_write_text
from opt66b.runs.settings import StepSettings, option

HF_NAMES = ("validation.jsonl", "train.jsonl", "test.jsonl")  # the hub-export names a task's FILES table accepts


@dataclass(frozen=True)
class Source:
    """Where one task's splits live on the hub: dataset id, config, our split -> the hub's, and what differs."""

    hub: str
    config: str | None
    splits: dict[str, str]
    note: str = ""
    by_hand: str = ""  # where to get it when the hub fails
    extra: dict[str, Any] = field(default_factory=dict)


SG = "aps/super_glue"
SG_HAND = "https://super.gluebenchmark.com/tasks (the release files: val.jsonl, train.jsonl)"
SOURCES: dict[str, Source] = {
    "boolq": Source(SG, "boolq", {"validation": "validation", "train": "train"},
                    by_hand=SG_HAND),
    "cb": Source(SG, "cb", {"validation": "validation", "train": "train"}, by_hand=SG_HAND),
    "copa": Source(SG, "copa", {"validation": "validation", "train": "train"}, by_hand=SG_HAND),
    "multirc": Source(SG, "multirc", {"validation": "validation", "train": "train"}, by_hand=SG_HAND),
    "record": Source(SG, "record", {"validation": "validation", "train": "train"}, by_hand=SG_HAND),
    "wic": Source(SG, "wic", {"validation": "validation", "train": "train"}, by_hand=SG_HAND),
    "wsc": Source(SG, "wsc", {"validation": "validation", "train": "train"},
                  note="config wsc, not wsc.fixed, as lm-eval v0.3", by_hand=SG_HAND),
    "rte": Source("nyu-mll/glue", "rte", {"validation": "validation", "train": "train"},
                  note="GLUE's RTE, as lm-eval v0.3's rte task (the same 277 / 2490 pairs as SuperGLUE's)",
                  by_hand="https://gluebenchmark.com/tasks"),
    "arc_easy": Source("allenai/ai2_arc", "ARC-Easy", {"test": "test", "train": "train"},
                       by_hand="https://allenai.org/data/arc (ARC-Easy-Test.jsonl, ARC-Easy-Train.jsonl)"),
    "arc_challenge": Source("allenai/ai2_arc", "ARC-Challenge", {"test": "test", "train": "train"},
                            by_hand="https://allenai.org/data/arc (ARC-Challenge-Test.jsonl, ARC-Challenge-Train.jsonl)"),
    "openbookqa": Source("allenai/openbookqa", "main", {"test": "test", "train": "train"},
                         by_hand="https://allenai.org/data/open-book-qa (Main/test.jsonl, Main/train.jsonl)"),
    "hellaswag": Source("Rowan/hellaswag", None, {"validation": "validation", "train": "train"},
                        by_hand="https://github.com/rowanz/hellaswag/tree/master/data (hellaswag_val.jsonl, "
                                "hellaswag_train.jsonl)"),
    "piqa": Source("baber/piqa", None, {"validation": "validation", "train": "train"},
                   note="the hub copy lm-eval reads (labels inline as `label`)",
                   by_hand="https://yonatanbisk.com/piqa/ (valid.jsonl + valid-labels.lst, train.jsonl + "
                           "train-labels.lst)"),
    "winogrande": Source("allenai/winogrande", "winogrande_xl", {"validation": "validation", "train": "train"},
                         by_hand="https://winogrande.allenai.org (dev.jsonl, train_xl.jsonl)"),
    "mathqa": Source("allenai/math_qa", None, {"test": "test", "train": "train"},
                     note="a loading-script dataset: recent `datasets` releases refuse to run it",
                     by_hand="https://math-qa.github.io (MathQA.zip: test.json, train.json)",
                     extra={"trust_remote_code": True}),
    "lambada": Source("EleutherAI/lambada_openai", "default", {"validation": "test"},
                      note="the hub's `test` split is OpenAI's lambada_test.jsonl (5153 passages), which lm-eval v0.3 "
                           "serves as `validation`; the paper evaluates it",
                      by_hand="https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"),
}

Loader = Callable[[Source, str], Iterable[dict[str, Any]]]


def hub_loader(source: Source, split: str) -> Iterable[dict[str, Any]]:
    """The hub's rows of one split (network; needs `datasets`)."""
    import datasets

    return datasets.load_dataset(source.hub, source.config, split=split, **source.extra)


def target_name(task: str, split: str) -> str:
    """The hub-export file name the task's FILES table accepts for `split` (validation.jsonl, train.jsonl, ...)."""
    from .registry import ALL_TASKS

    for spec in ALL_TASKS[task].FILES.get(split, []):
        if spec.name in HF_NAMES:
            return spec.name
    raise KeyError(f"{task}: no hub-export file name accepted for split {split!r} (tasks/{task}.py FILES)")


def _jsonl(rows: Iterable[dict[str, Any]]) -> tuple[str, int]:
    lines = [json.dumps(dict(row), ensure_ascii=False, default=str) for row in rows]
    return "".join(line + "\n" for line in lines), len(lines)


def check_names(tasks: Iterable[str]) -> None:
    """Every name a hub dataset of the study, checked before anything is downloaded."""
    for task in tasks:
        if task not in SOURCES:
            raise KeyError(f"--tasks {task}: not a hub dataset of this study (one of {', '.join(SOURCES)}; the "
                           "synthetic copy task is generated, not fetched)")


def fetch(out: Path, tasks: list[str] | None = None, load: Loader | None = None, overwrite: bool = False,
          log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)) -> list[dict[str, Any]]:
    """Write every split of `tasks` (default: the 16) under `out`; one row per split: task, split, hub, file,
    records, status ("written", "kept", "failed") and a note. A split that fails is said with where to get it.
    load(source, split) gives a split's rows (default: hub_loader, the network)."""
    from .registry import ALL_TASKS

    load = load or hub_loader

    check_names(tasks or [])
    rows: list[dict[str, Any]] = []
    unreachable = ""  # once the hub cannot be reached, the other splits are not tried (each would retry for long)
    for task in tasks or list(SOURCES):
        source = SOURCES[task]
        folder = Path(out) / ALL_TASKS[task].DATA_DIR
        for split, hub_split in source.splits.items():
            path = folder / target_name(task, split)
            row = {"task": task, "split": split, "hub": f"{source.hub}" + (f" ({source.config})" if source.config else "")
                   + f" split {hub_split}", "file": str(path), "records": None, "status": "", "note": source.note}
            rows.append(row)
            if path.is_file() and not overwrite:
                row["status"] = "kept"
                continue
            if unreachable:
                row["status"], row["note"] = "failed", f"not tried: {unreachable}; get it by hand: {source.by_hand}"
                continue
            log(f"[fetch] {task} {split}: {row['hub']}")
            try:
                text, count = _jsonl(load(source, hub_split))
            except Exception as err:  # the hub's errors are many (network, gone, scripts refused): say, go on
                said = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
                row["status"], row["note"] = "failed", f"{said}; get it by hand: {source.by_hand}"
                log(f"[fetch] {task} {split}: failed ({row['note']})")
                if "Connection" in type(err).__name__ or "reach" in str(err):
                    unreachable = f"the hub could not be reached ({said[:80]})"
                continue
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
            row["status"], row["records"] = "written", count
    return rows


def format_fetch(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["task"]) for r in rows) + 2 if rows else 6
    lines = [f"{'task':<{width}}{'split':<11}{'status':<9}{'records':>8}  file / source / note"]
    for r in rows:
        records = "-" if r["records"] is None else str(r["records"])
        note = f"  ({r['note']})" if r["note"] else ""
        lines.append(f"{r['task']:<{width}}{r['split']:<11}{r['status']:<9}{records:>8}  {r['file']} <- {r['hub']}{note}")
    failed = sum(r["status"] == "failed" for r in rows)
    lines.append(f"{sum(r['status'] == 'written' for r in rows)} written, {sum(r['status'] == 'kept' for r in rows)} "
                 f"kept, {failed} failed" + ("; check the result with `run.py data check --data DIR`" if not failed else
                                             "; each failed split names where to get it by hand"))
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class DataFetchSettings(StepSettings):
    """`run.py data fetch`: the datasets from the hub into --out, in the layout `--data` reads."""

    COMMAND = ("data", "fetch")
    USES_MODEL = False
    out: Path | None = option(None)
    tasks: tuple[str, ...] | None = option(None)
    overwrite: bool = option(False)
    json: Path | None = option(None)

    def check(self) -> None:
        import importlib.util

        if self.out is None:
            raise ValueError("data fetch: give the directory to build with --out DIR (then: run.py all --data DIR)")
        check_names(self.tasks or [])
        if importlib.util.find_spec("datasets") is None:
            raise ValueError("data fetch needs the optional `datasets` package: pip install -e \".[data]\" (the "
                             "study itself runs without it)")

    def execute(self, loaded: Any = None, cache: Any = None) -> None:
        from opt66b.runs.options import emit_json
        from opt66b.runs.results import run_metadata

        self.check()
        rows = fetch(Path(self.out), list(self.tasks) if self.tasks else None, overwrite=self.overwrite)
        if self.json is None or str(self.json) != "-":
            print(format_fetch(rows))
        if self.json is not None:
            emit_json(self.json, {"rows": rows, "meta": run_metadata(out=str(self.out))})
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:  # after the table: a script must not take a partial directory for a whole one
            raise ValueError(f"{len(failed)} of {len(rows)} splits could not be fetched (the table names each and where "
                             f"to get it by hand), first {failed[0]['task']} {failed[0]['split']}: {failed[0]['note']}")
        return None
