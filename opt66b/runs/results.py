"""Result files of a run: strict JSON, safetensors with metadata, what every output records, and the
output directory checked before any work (atomic writes themselves: opt66b/fileio.py).

JSON results are strict JSON: a NaN or infinity is an error naming the file and the key, never
a bare `NaN` token that other JSON readers reject.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from opt66b.fileio import atomic_write_bytes, atomic_write_text, remove_orphans, sha256_file


class NonFiniteError(ValueError):
    """A NaN or infinity where a finite number is required (a log-likelihood, a head score, a result).
    run.py adds the cause (opt66b.runs.diagnose: which weight file and tensor, or the activations) when
    the failing command ran a model; `cause_known` is True when the message already names it."""

    def __init__(self, message: str, cause_known: bool = False):
        super().__init__(message)
        self.cause_known = cause_known


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomic, strict JSON write: a non-finite float is a ValueError naming the file and its key."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, default=json_default, allow_nan=False)
    except ValueError as err:
        where = nonfinite_key(obj)
        raise NonFiniteError(f"{path}: refusing to write a non-finite number at {where or 'a value'} "
                         "(results must be finite, strict JSON); the computation that produced it failed: "
                         "NaN/corrupt weights or float16 overflow (try --dtype float32)?") from err
    return atomic_write_text(path, text + "\n")


def nonfinite_key(obj: Any, where: str = "") -> str | None:
    """Key path ("results.acc", "rows[3].docs") of the first NaN/inf float in a JSON-like object."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "the top level"
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for key, value in items:
        found = nonfinite_key(value, key)
        if found:
            return found
    return None


def check_finite_heads(scores: torch.Tensor, where: str) -> None:
    """ValueError naming the first (layer, head) of an (L, H) score table that is NaN or inf."""
    scores = scores.detach()
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        layer, head = (int(i) for i in bad.nonzero()[0])
        raise NonFiniteError(f"{where}: layer {layer} head {head} score is {float(scores[layer, head])} "
                         f"({int(bad.sum())} non-finite); corrupt or NaN weights, or float16 overflow "
                         "(try --dtype float32 or bfloat16)")


def check_output_dir(path: str | Path, label: str = "--out") -> Path:
    """Fail fast, before any computation, unless `path` is (or can be created as) a writable
    directory; then remove temp files orphaned there by killed writes. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{label} {path}: exists and is not a directory; choose another output path")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path and not probe.is_dir():
        raise NotADirectoryError(f"{label} {path}: cannot be created, {probe} is a file; choose another output path")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == path else f"cannot be created ({probe} is not writable)"
        raise PermissionError(f"{label} {path}: {what}; fix its permissions or choose another output path")
    if probe != path:  # permission bits do not tell (root, /proc, read-only mounts): try, and undo
        try:
            os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".opt66b-probe-"))
        except OSError as err:
            raise PermissionError(f"{label} {path}: cannot be created in {probe} ({err.strerror or err}); choose "
                                  "another output path") from err
    if path.is_dir():
        for orphan in remove_orphans(path):
            print(f"removed {orphan}: left by an interrupted write", file=sys.stderr)
    return path


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> Path:
    """Atomic safetensors write. Metadata values are JSON-encoded strings (safetensors allows str only)."""
    from safetensors.torch import save

    meta = {k: v if isinstance(v, str) else json.dumps(v, default=json_default) for k, v in (metadata or {}).items()}
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)
    return atomic_write_bytes(path, data)


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err}); "
                         "regenerate or re-download it") from err


def file_hashes(paths: Iterable[str | Path]) -> dict[str, str]:
    return {str(p): sha256_file(p) for p in sorted(set(str(p) for p in paths))}


def run_metadata(**settings: Any) -> dict[str, Any]:
    """What every output file records next to its numbers: the settings that produced it (seed,
    model, data hashes, ...) plus the software and the time."""
    return {
        **settings,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "argv": sys.argv,
    }


def json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
