#!/usr/bin/env python3
"""What the full-content model identity costs: hashing every weight byte vs reading the bytes.

    python tests/benchmarks/bench_identity.py                # opt-1.3b shape, fp16 (2.6 GB), temp dir
    python tests/benchmarks/bench_identity.py --keep DIR     # build (or reuse) the checkpoint in DIR

Builds a random opt-1.3b-shaped fp16 checkpoint in 2 shards, then measures, interleaved and best of
--repeats rounds:
  read        a plain sequential read of every shard (16 MiB chunks, discarded): the floor any loader pays
  hash        opt66b.runs.identity.tree_sha256 of every shard (the first run's identity cost)
  cached      opt66b.runs.identity.checkpoint_identity with its cache warm (every later run's cost)
each twice: with the files in the page cache (warm: CPU cost alone) and after dropping them from it
with posix_fadvise(DONTNEED) (cold: what a first load from disk sees, when the kernel honours it).
Prints GB/s and the hash / read ratio. Not collected by pytest (bench_*.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def build(ckpt: Path) -> list[Path]:
    import torch

    from opt66b import save_checkpoint
    from opt66b.config import config_for_size
    from opt66b.runs.loading import build_random_model

    shards = sorted(ckpt.glob("*.safetensors"))
    if shards:
        return shards
    cfg = config_for_size("opt-1.3b")
    model = build_random_model(cfg, torch.float16, lambda name: torch.device("cpu"), seed=0)
    save_checkpoint(model, ckpt, max_shard_bytes=1400 << 20)
    return sorted(ckpt.glob("*.safetensors"))


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_read(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(16 << 20):
                pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, help="build or reuse the checkpoint here (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from opt66b.runs import identity

    tmp = None if args.keep else tempfile.TemporaryDirectory()
    ckpt = args.keep or Path(tmp.name) / "opt-1.3b"
    ckpt.mkdir(parents=True, exist_ok=True)
    os.environ["OPT66B_CACHE_DIR"] = str(ckpt / ".identity-cache")
    paths = build(ckpt)
    total = sum(p.stat().st_size for p in paths)
    print(f"checkpoint: {len(paths)} shards, {total / 1e9:.2f} GB; {os.cpu_count()} cores; "
          f"hash threads {min(16, os.cpu_count() or 1)}")
    cases = {
        "read": lambda: plain_read(paths),
        "hash": lambda: [identity.tree_sha256(p) for p in paths],
        "cached": lambda: identity.checkpoint_identity(ckpt),
    }
    identity.checkpoint_identity(ckpt)  # fills the cache for "cached"
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):
        for cache in ("warm", "cold"):
            for name, fn in cases.items():
                if cache == "cold":
                    drop_cache(paths)
                else:
                    plain_read(paths)  # into the page cache
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                best[name, cache] = min(best.get((name, cache), float("inf")), dt)
    for cache in ("warm", "cold"):
        r, h, c = (best[n, cache] for n in ("read", "hash", "cached"))
        print(f"{cache:>4}: read {total / r / 1e9:6.2f} GB/s ({r:.2f} s) | hash {total / h / 1e9:6.2f} GB/s "
              f"({h:.2f} s), hash/read time {h / r:.2f}x | cached identity {c * 1e3:.1f} ms")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
