"""What a checkpoint *is*, for every result's fingerprint: a hash of all of its bytes, computed once.

A model's identity must change whenever any weight changes: a fine-tune, a patched bias, an edited
layer norm or a re-export all give other numbers, so a result made with one must never be reused
for another (opt66b.runs.store refuses a unit whose fingerprint differs). Sampling a few blocks per shard
is not enough (a one-element edit outside them goes unseen), so every byte is hashed.

Cost: reading the files once. The hash is a tree: each BLOCK_BYTES block is hashed with sha256 on a
pool of threads (hashlib releases the GIL, so the blocks of one shard hash in parallel), and the
file's `content_sha256` is the sha256 of the concatenated block digests. On an ordinary machine
that runs faster than the disk (tests/benchmarks/bench_identity.py measures it against a plain
read of the same file; docs/scale.md gives the numbers). The result is remembered in a small JSON
cache keyed by the file's real path, size, modification and change times, inode and device, so only
the first run on a checkpoint pays. The change time (ctime) is the guard against a file edited in place
with its modification time put back (`touch -r`, some sync tools): no user can set it back. An entry
hashed within RACY_NS of the file's last change is not trusted (git's "racy" rule: a write in the same
clock tick as the hash would leave every time equal) and the file is hashed again. A damaged cache
(truncated, garbage, another schema) is said in one line, ignored and rebuilt. `OPT66B_CACHE_DIR` chooses the cache directory (default
`$XDG_CACHE_HOME/opt66b`, else `~/.cache/opt66b`); a cache that cannot be written only costs the
re-hash next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from opt66b.fileio import Progress, atomic_write_text, sha256_file

BLOCK_BYTES = 16 << 20  # one unit of parallel hashing; small next to a shard, large next to call overhead
TOKENIZER_FILES = ("vocab.json", "merges.txt")
CACHE_NAME = "identity.json"
RACY_NS = 2_000_000_000  # an entry hashed within 2 s of the file's last change is hashed again
_warned: list[str] = []


def cache_dir() -> Path:
    """Where the content hashes of checkpoint files are remembered (OPT66B_CACHE_DIR overrides)."""
    if os.environ.get("OPT66B_CACHE_DIR"):
        return Path(os.environ["OPT66B_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "opt66b"


def _stat_key(path: Path) -> tuple[str, dict[str, int]]:
    st = path.stat()
    return str(path.resolve()), {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                                 "inode": st.st_ino, "device": st.st_dev}


def _read_cache() -> dict[str, Any]:
    """The cache's entries; absent: none; damaged (unreadable, not JSON, not an object): none, said once."""
    path = cache_dir() / CACHE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
        why = f"a JSON {type(data).__name__}, not an object"
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:  # damaged: a cache miss, never an error
        why = getattr(err, "strerror", None) or str(err).splitlines()[0]
    if str(path) not in _warned:
        _warned.append(str(path))
        print(f"note: {path}: damaged checkpoint-hash cache ({why}); ignored, the weights are hashed again and the "
              "cache rebuilt", file=sys.stderr)
    return {}


def _trusted(hit: Any, stat: dict[str, int]) -> bool:
    """A cache entry still describes the file: every stat field equal and hashed well after its last change."""
    return (isinstance(hit, dict) and isinstance(hit.get("sha256"), str) and all(hit.get(k) == v for k, v in stat.items())
            and isinstance(hit.get("hashed_ns"), int) and hit["hashed_ns"] - RACY_NS > max(stat["mtime_ns"], stat["ctime_ns"]))


def _write_cache(entries: dict[str, Any]) -> None:
    path = cache_dir() / CACHE_NAME
    try:
        merged = {**_read_cache(), **entries}  # another process may have added its own files meanwhile
        atomic_write_text(path, json.dumps(merged, indent=1, sort_keys=True) + "\n")
    except OSError as err:
        if str(path) not in _warned:
            _warned.append(str(path))
            print(f"note: could not remember checkpoint hashes in {path} ({err.strerror or err}); the next run "
                  "hashes the weights again (set OPT66B_CACHE_DIR to a writable directory)", file=sys.stderr)


def _hash_block(fd: int, offset: int, length: int) -> bytes:
    h = hashlib.sha256()
    done = 0
    while done < length:
        chunk = os.pread(fd, min(length - done, 4 << 20), offset + done)
        if not chunk:
            raise OSError(f"short read at byte {offset + done}")
        h.update(chunk)
        done += len(chunk)
    return h.digest()


def tree_sha256(path: str | Path, threads: int | None = None, progress: Progress | None = None) -> str:
    """The tree hash of every byte of a file: sha256 over the sha256 of each BLOCK_BYTES block, in order."""
    path = Path(path)
    size = path.stat().st_size
    offsets = list(range(0, size, BLOCK_BYTES)) or [0]
    threads = threads or min(16, os.cpu_count() or 1)
    fd = os.open(path, os.O_RDONLY)
    try:
        def one(off: int) -> bytes:
            digest = _hash_block(fd, off, min(BLOCK_BYTES, size - off))
            if progress is not None:
                progress.update(min(BLOCK_BYTES, size - off) >> 20)
            return digest
        with ThreadPoolExecutor(max_workers=threads) as pool:
            digests = list(pool.map(one, offsets))
    finally:
        os.close(fd)
    return hashlib.sha256(b"".join(digests)).hexdigest()


def file_identities(paths: list[Path], log=None) -> dict[str, str]:
    """{real path: content_sha256} of files, from the cache where their stat still matches, else hashed
    now (progress with an ETA above 1 GiB) and added to the cache."""
    cache = _read_cache()
    out, fresh, todo = {}, {}, []
    for path in paths:
        key, stat = _stat_key(path)
        hit = cache.get(key)
        if _trusted(hit, stat):
            out[key] = hit["sha256"]
        else:
            todo.append((path, key, stat))
    total = sum(stat["bytes"] for _, _, stat in todo)
    progress = Progress(total >> 20, "hashing checkpoint weights (MiB, once per file)") if total > 1 << 30 else None
    for path, key, stat in todo:
        digest = tree_sha256(path, progress=progress)
        if _stat_key(path)[1] != stat:
            raise OSError(f"{path}: changed while it was being hashed; wait for the copy or download to finish")
        out[key] = digest
        fresh[key] = {**stat, "sha256": digest, "hashed_ns": time.time_ns()}
    if fresh:
        _write_cache(fresh)
    return out


def checkpoint_identity(model_dir: str | Path) -> dict[str, Any]:
    """{"config_sha256", "shards": {file name: {"bytes", "content_sha256"}}} of an HF checkpoint
    directory: every byte of every safetensors shard (two checkpoints differing anywhere differ here)."""
    model_dir = Path(model_dir)
    shards = sorted(model_dir.glob("*.safetensors"))
    digests = file_identities(shards)
    return {"config_sha256": sha256_file(model_dir / "config.json"),
            "shards": {p.name: {"bytes": p.stat().st_size, "content_sha256": digests[_stat_key(p)[0]]}
                       for p in shards}}


def tokenizer_identity(tok_dir: str | Path) -> dict[str, str | None]:
    """sha256 of vocab.json and merges.txt (None where absent): the token ids every prompt becomes."""
    tok_dir = Path(tok_dir)
    return {name: sha256_file(tok_dir / name) if (tok_dir / name).is_file() else None for name in TOKENIZER_FILES}
