"""`run.py data check`: per task and split, which file was found, its doc count against the published
count (docs/data.md), which stand-in files are used, and what a missing split blocks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opt66b.runs.settings import StepSettings, option

from .cli_options import SAMPLES_DIR, is_samples


def check_data(data_dir: Path, names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (task, split): file (+ sha256), docs, published, status in {"ok", "sample", "count differs",
    "fallback", "stand-in", "missing", "error"}, and a note saying what a fallback / missing file means. On the
    bundled samples a row is "sample" (its count is cut on purpose, tasks/samples/SOURCES.md), never "count differs"."""
    from opt66b.fileio import sha256_file

    from .registry import TASKS, get_task

    sums = _read_sha256sums(data_dir / "SHA256SUMS")
    samples = is_samples(data_dir)  # cut short on purpose: a count is no finding there
    rows = []
    for name in names or list(TASKS):
        task = get_task(name, data_dir)
        for split in dict.fromkeys([task.EVAL_SPLIT, task.FEWSHOT_SPLIT]):
            if split is None:
                continue
            role = "eval" if split == task.EVAL_SPLIT else "few-shot"
            row: dict[str, Any] = {"task": name, "split": split, "role": role, "file": None, "docs": None,
                                   "published": task.PUBLISHED.get(split), "status": "", "note": ""}
            found = task.split_file(split)
            if found is None:
                tried = ", ".join(s.name for s in task.FILES.get(split, []) if not s.standin)
                row["status"] = "missing"
                row["note"] = (f"{name} {split} missing ({tried}): "
                               + ("0-shot only" if role == "few-shot" else "task cannot be evaluated"))
                rows.append(row)
                continue
            path, spec = found
            row["file"] = str(path)
            row["sha256"] = sha256_file(path)
            listed = sums.get(f"{task.DATA_DIR}/{path.name}")
            if listed is not None and listed != row["sha256"]:
                row["status"], row["note"] = "error", f"{path}: sha256 differs from {data_dir / 'SHA256SUMS'}"
                rows.append(row)
                continue
            try:
                row["docs"] = len(task.docs(split))
            except (ValueError, FileNotFoundError, KeyError) as err:
                row["status"], row["note"] = "error", str(err)
                rows.append(row)
                continue
            expected = spec.count if spec.fallback and spec.count is not None else row["published"]
            if spec.standin:  # built from another split: no published count to compare with
                row["status"], row["note"], expected = "stand-in", spec.fallback, None
            elif spec.fallback:
                row["status"], row["note"] = "fallback", spec.fallback
            else:
                row["status"] = "ok"
            if samples and not spec.standin and not spec.fallback:
                row["status"] = "sample"
                row["note"] = "bundled sample" + (f" ({row['docs']} of {expected} docs)" if expected else "")
            elif expected is not None and row["docs"] != expected and not samples:
                row["status"] = "count differs"
                row["note"] = (row["note"] + "; " if row["note"] else "") + f"expected {expected} docs"
            rows.append(row)
    return rows


def _read_sha256sums(path: Path) -> dict[str, str]:
    """`sha256sum` output ("<hex>  <relative path>" per line) -> {relative path: hex}; {} if absent."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, _, rel = line.strip().partition("  ")
        if rel:
            out[rel.lstrip("*").removeprefix("./")] = digest
    return out


STATUSES = ("ok", "sample", "fallback", "stand-in", "count differs", "missing", "error")


def format_report(rows: list[dict[str, Any]]) -> str:
    width = max([len("task"), *(len(r["task"]) for r in rows)]) + 2  # synthetic_copy is 14 characters
    head = f"{'task':<{width}}{'split':<11}{'role':<9}{'docs':>7}{'published':>11}  {'status':<14}file / note"
    lines = [head, "-" * len(head)]
    for r in rows:
        docs = "-" if r["docs"] is None else str(r["docs"])
        pub = "-" if r["published"] is None else str(r["published"])
        where = Path(r["file"]).name if r["file"] else ""
        note = f"{where}  {r['note']}".strip()
        lines.append(f"{r['task']:<{width}}{r['split']:<11}{r['role']:<9}{docs:>7}{pub:>11}  {r['status']:<14}{note}")
    n = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    lines.append(", ".join(f"{v} {k}" for k, v in n.items() if v or k in ("ok", "missing", "error")))
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class DataCheckSettings(StepSettings):
    """`run.py data check`: which files each task reads, their counts and sha256."""

    COMMAND = ("data", "check")
    USES_MODEL = False
    data: Path = option(SAMPLES_DIR)
    tasks: tuple[str, ...] | None = option(None)
    json: Path | None = option(None)

    def check(self) -> None:
        if not Path(self.data).is_dir():
            raise FileNotFoundError(f"{self.data}: data directory not found (layout: <data>/<task>/<file as released>)")

    def execute(self, loaded: Any = None, cache: Any = None) -> None:
        """The table on stdout (unless --json -), the rows as JSON; a file that cannot be used is bad input
        (exit 2), named after the table shows every row."""
        from opt66b.runs.options import emit_json
        from opt66b.runs.results import run_metadata

        self.check()
        rows = check_data(Path(self.data), list(self.tasks) if self.tasks else None)
        if self.json is None or str(self.json) != "-":
            print(format_report(rows))
        if self.json is not None:
            emit_json(self.json, {"rows": rows, "meta": run_metadata(data=str(self.data))})
        errors = [r for r in rows if r["status"] == "error"]
        if errors:
            more = f" (and {len(errors) - 1} more: see the table)" if len(errors) > 1 else ""
            raise ValueError(errors[0]["note"] + more)
        return None
