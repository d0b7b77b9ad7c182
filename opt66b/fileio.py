"""Files the model package reads and writes (checkpoints, configs, tokenizer files), and every result
file on top of them: atomic writes, JSON reading, content hashes, and the progress line of long work.

Every file is written to a temporary name in the same directory and renamed into place, so a killed
writer leaves either the old file or the new one, never half of one. The temporary name carries the
writer's host and process id (`.<name>.<host>-<pid>-<random>.tmp`), so a later run can tell a killed
writer's orphan from a live one and remove it (`remove_orphans`); this module makes that name and
reads it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
            orphan = pid != os.getpid() and not pid_alive(pid)
        else:
            orphan = time.time() - tmp.stat().st_mtime > ORPHAN_AGE_S
        if orphan:
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:  # its writer's cleanup or another run got there first
                pass
    return removed


def pid_alive(pid: int) -> bool:
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


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
