"""Offline dataset readers: the files as their authors release them, or JSONL exported from HF `datasets`.

Standard library only. Every record carries a `where` string ("<file>:<line>" for JSONL / label
files, "<file>: record <i>" for JSON arrays, "<file>: task <i>" for the HellaSwag text dump) so a
malformed line or a missing field is reported with the file and line to fix. Data layout:
`<data>/<task dir>/<file as released>`, see docs/data.md and each task's `FILES`.
"""

from __future__ import annotations

import bz2
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

Record = tuple[str, dict[str, Any]]  # (where, raw record)


@dataclass(frozen=True)
class SplitFile:
    """One accepted file for a split, in order of preference (original release first)."""

    name: str  # file name inside <data>/<task dir>/
    fmt: str = "jsonl"  # "jsonl" | "json" (one JSON array) | "hellaswag_txt_bz2"
    labels: str | None = None  # separate label file, one label per line (PIQA, Winogrande)
    fallback: str = ""  # non-empty: this file stands in for the real split (says how)
    count: int | None = None  # expected docs for a fallback file (None: the published count)
    standin: bool = False  # built from another split of the same task (bundled samples only), not a cut of this split


def read_jsonl(path: Path) -> list[Record]:
    """One JSON object per non-empty line; ValueError naming file and line otherwise."""
    out = []
    for n, line in enumerate(_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: malformed JSON ({err.msg} at column {err.colno}); "
                             "fix or re-download the file") from err
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        out.append((where, rec))
    return out


def _text(path: Path, compressed: bool = False) -> str:
    """The file's text; a corrupt bz2 stream or invalid UTF-8 is a ValueError naming the file (and the
    line of the first bad byte)."""
    try:
        raw = bz2.decompress(path.read_bytes()) if compressed else path.read_bytes()
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: corrupt or truncated bz2 data ({err}); re-download the file") from err
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: invalid UTF-8 (byte {raw[err.start]:#04x} at offset {err.start}); "
                         "the data files are UTF-8 text, re-download or re-export the file") from err


def read_json_array(path: Path) -> list[Record]:
    """A file holding one JSON array of objects (MathQA's release format)."""
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg}); fix or re-download the file") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i}: expected a JSON object, got {type(rec).__name__}")
        out.append((f"{path}: record {i}", rec))
    return out


def read_hellaswag_txt_bz2(path: Path) -> list[Record]:
    """klosax's derived HellaSwag dump: 6 lines per task (context, gold 0-3, four endings)."""
    lines = _text(path, compressed=True).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"{path}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings); "
                         "the file is truncated or not the hellaswag_val_full.txt.bz2 dump")
    out = []
    for t in range(len(lines) // 6):
        ctx, label, *endings = lines[6 * t: 6 * t + 6]
        where = f"{path}:{6 * t + 2}"
        if label.strip() not in ("0", "1", "2", "3"):
            raise ValueError(f"{where}: expected a gold label 0-3 on the second line of task {t}, got {label!r}")
        out.append((where, {"ctx_line": ctx, "label": int(label), "endings": endings}))
    return out


def read_labels(path: Path, n: int) -> list[str]:
    """A label file (one label per line) that must line up with n records."""
    labels = [ln.strip() for ln in _text(path).splitlines() if ln.strip()]
    if len(labels) != n:
        raise ValueError(f"{path}: {len(labels)} labels for {n} records; the label file must line up "
                         "with the records file line by line")
    return labels


def read_split_file(path: Path, spec: SplitFile) -> list[Record]:
    """Read one accepted file; attach labels from the separate label file when there is one."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    readers = {"jsonl": read_jsonl, "json": read_json_array, "hellaswag_txt_bz2": read_hellaswag_txt_bz2}
    if spec.fmt not in readers:
        raise ValueError(f"unknown data format {spec.fmt!r} for {path}")
    records = readers[spec.fmt](path)
    if spec.labels:
        lab_path = path.parent / spec.labels
        if lab_path.is_file():
            for (where, rec), lab in zip(records, read_labels(lab_path, len(records))):
                rec.setdefault("label", lab)
        elif records and "label" not in records[0][1]:
            raise FileNotFoundError(f"{lab_path}: not found; {path.name} has no 'label' field, so its labels "
                                    f"must come from {spec.labels} (released next to it)")
    return records


def find_split_file(task_dir: Path, candidates: Iterable[SplitFile]) -> tuple[Path, SplitFile] | None:
    """The first accepted file that exists, or None."""
    for spec in candidates:
        if (task_dir / spec.name).is_file():
            return task_dir / spec.name, spec
    return None


_MISSING = object()


def field(rec: dict[str, Any], key: str, where: str, types: type | tuple[type, ...] | None = None) -> Any:
    """rec[key] (dotted keys walk nested objects), or a ValueError naming file, line and key."""
    value: Any = rec
    for part in key.split("."):
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            raise ValueError(f"{where}: missing field '{key}' (record has {sorted(rec)}); "
                             "is this the right file for the task?")
    if types is not None and not isinstance(value, types):
        raise ValueError(f"{where}: field '{key}' should be {types}, got {type(value).__name__} {value!r:.60}")
    return value


def label_index(value: Any, names: list[str], where: str, key: str = "label") -> int:
    """A class label given as an int, a bool, a digit string or a class name -> its index in names."""
    raw = value
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int) and str(value) in names:  # digit-named classes: Winogrande answer 1 -> "1"
        return names.index(str(value))
    if isinstance(value, str):
        if value in names:
            return names.index(value)
        if value.strip().lstrip("-").isdigit():
            value = int(value)
    if isinstance(value, int) and 0 <= value < len(names):
        return value
    raise ValueError(f"{where}: field '{key}' = {raw!r} is not one of {names} or 0..{len(names) - 1}")
