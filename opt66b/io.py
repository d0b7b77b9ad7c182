"""Result files: atomic writes, content hashes and run metadata (used by every package's outputs).

Every result file is written to a temporary name in the same directory and renamed into place, so
a killed run leaves either the old file or the new one, never half of one. Resumable loops test
`exists(path)` to skip finished units. The temporary name carries the writer's host and process id
(`.<name>.<host>-<pid>-<random>.tmp`), so the next run in the same output directory can tell a
killed writer's orphan from a live one and remove it (`check_output_dir`).

JSON results are strict JSON: a NaN or infinity is an error naming the file and the key, never
a bare `NaN` token that other JSON readers reject.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import torch


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # no dots or odd characters
ORPHAN_AGE_S = 3600  # a temp file of another host (shared file system) is an orphan after an idle hour


class WriteError(OSError):
    """A result file could not be written (full disk, file-size limit, ...): the message names it,
    and the previous version of the file, if any, is intact."""


def _write_failed(path: Path, err: BaseException) -> WriteError:
    why = getattr(err, "strerror", None) or str(err)
    return WriteError(f"{path}: could not be written ({why}); nothing partial was left and any earlier version "
                      "is intact: free disk space or raise the file-size limit (ulimit -f), then rerun to continue")


def _tmp_prefix(path: Path) -> str:
    """`.<name>.<host>-<pid>-`: the temporary name of a write in progress (remove_orphans reads it back)."""
    return f".{path.name}.{_HOST}-{os.getpid()}-"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    try:
        # mkstemp makes the file 0600; results are shared on clusters, so give what open() would give
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise _write_failed(path, err) from err
        raise
    return path


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """safetensors' save_file (streams a large shard to disk without building it in memory) through a
    temporary name: a write that fails midway leaves no partial file and names `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.parent / f"{_tmp_prefix(path)}{os.urandom(4).hex()}.tmp"
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp.exists():
            tmp.unlink()
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise _write_failed(path, err) from err  # SafetensorError ("File too large") is not an OSError
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


class NonFiniteError(ValueError):
    """A NaN or infinity where a finite number is required (a log-likelihood, a head score, a result).
    run.py adds the cause (opt66b.diagnose: which weight file and tensor, or the activations) when
    the failing command ran a model; `cause_known` is True when the message already names it."""

    def __init__(self, message: str, cause_known: bool = False):
        super().__init__(message)
        self.cause_known = cause_known


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomic, strict JSON write: a non-finite float is a ValueError naming the file and its key."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
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


def remove_orphans(root: str | Path) -> list[Path]:
    """Delete `.<name>.<host>-<pid>-<random>.tmp` files under root whose writer is gone (this host
    and a dead pid, or another host and untouched for ORPHAN_AGE_S). Returns what was removed."""
    removed = []
    for tmp in Path(root).rglob(".*.tmp"):
        writer = tmp.name[:-len(".tmp")].rsplit(".", 1)[-1].split("-")  # [host, pid, random]
        if len(writer) != 3 or not writer[1].isdigit() or not tmp.is_file():
            continue  # not a name atomic_write_bytes makes
        host, pid = writer[0], int(writer[1])
        if host == _HOST:
            orphan = pid != os.getpid() and not _pid_alive(pid)
        else:
            orphan = time.time() - tmp.stat().st_mtime > ORPHAN_AGE_S
        if orphan:
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:  # its writer's cleanup or another run got there first
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_json(path: str | Path, fix: str = "delete it to recompute", want: type | None = None) -> Any:
    """Parse a JSON file; invalid JSON or UTF-8 (or, with `want`, another top-level type) is a
    ValueError naming the file and saying how to `fix` it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); {fix}") from err
    if want is not None and not isinstance(value, want):
        raise ValueError(f"{path}: expected a JSON {'object' if want is dict else want.__name__}, "
                         f"got {type(value).__name__}; {fix}")
    return value


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> Path:
    """Atomic safetensors write. Metadata values are JSON-encoded strings (safetensors allows str only)."""
    from safetensors.torch import save

    meta = {k: v if isinstance(v, str) else json.dumps(v, default=_json_default) for k, v in (metadata or {}).items()}
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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class Progress:
    """Minimal progress line with rate and ETA on stderr (no dependency, safe in logs)."""

    def __init__(self, total: int, label: str, every_s: float = 2.0, stream=None):
        self.total, self.label, self.every = max(total, 1), label, every_s
        self.done, self.start, self.last = 0, time.monotonic(), 0.0
        self.stream = stream or sys.stderr

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            print(f"[{self.label}] {self.done}/{self.total} ({100 * self.done / self.total:.0f}%) "
                  f"{elapsed:.0f}s elapsed, ETA {eta:.0f}s", file=self.stream, flush=True)
