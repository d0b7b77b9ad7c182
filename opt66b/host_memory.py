"""Host memory that follows the live tensors, when a host budget asks for it.

Two caches keep freed host memory for reuse, and both make a CPU run fast:
- glibc's heap serves a large allocation from freed heap blocks once its adaptive mmap threshold has
  grown (it grows every time such a block is freed, up to 32 MiB). A long run of differently shaped
  batches then ratchets the resident memory up with the data (a random opt-125m, HellaSwag 1-shot,
  `--batch-tokens 512`: 127 MiB left after an evaluation of 10 docs and 235 MiB after 40, peaks 337
  and 480 MiB). With the threshold fixed at 128 KiB (`mallopt(M_MMAP_THRESHOLD)`), 18 and 27 MiB
  left, peaks 338 and 387 MiB: what the plan's activation rule describes.
- Intel MKL's own allocator keeps, per thread, the scratch of every matmul shape it has run (12.8 MiB
  after one 60-token forward and backward of opt-125m, 17 MiB after longer ones; 0.1 MiB once
  `mkl_serv_free_buffers` hands it back).

Bounding costs time: every large allocation becomes a fresh mapping whose pages are faulted in and
zeroed. On the eval mix of tests/benchmarks/bench_eval_speed.py (opt-125m, fp32, 2 CPU threads, six
tasks 5-shot, 20 docs) a bounded run took 1.15-1.18x the time of an unbounded one. So the bound is
applied only where a promise about host memory is made: `load` calls `bound()` when --max-memory has
a cpu entry or every layer streams from the files (--offload mmap, whose peak the cpu entry bounds).
A run without a host budget keeps both caches and their speed; `trim()` still hands the heap's free
memory back between the steps of `run.py all`, where it costs nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import torch

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_BOUND_BYTES = 128 * 1024  # larger blocks get their own mapping, returned to the system when freed
_state = {"bounded": False}
_LIBS: dict[str, object] = {}  # name -> the loaded library (or None where absent), looked up once


def _lib(name: str) -> object | None:
    if name not in _LIBS:
        try:
            if name == "c":
                _LIBS[name] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            else:  # MKL is linked into libtorch_cpu; its release function is exported there
                _LIBS[name] = ctypes.CDLL(str(Path(torch.__file__).resolve().parent / "lib" / "libtorch_cpu.so"))
        except OSError:
            _LIBS[name] = None
    return _LIBS[name]


def needs_bound(max_memory: dict[str, int], offload: str | None) -> bool:
    """Whether a load promises host memory: a cpu entry in the parsed --max-memory, or --offload mmap."""
    return any(d == "cpu" for d in max_memory) or offload == "mmap"


def bound() -> bool:
    """Return freed host memory to the system at once for the rest of the process: glibc's mmap threshold
    fixed at 128 KiB, and MKL's scratch released by `release_cpu_caches`. False where glibc is absent
    (macOS, musl: their allocators stay as they are; the MKL release still applies)."""
    _state["bounded"] = True
    libc = _lib("c")
    try:
        return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, _BOUND_BYTES))
    except AttributeError:  # a C library without mallopt
        return False


def is_bounded() -> bool:
    return _state["bounded"]


def release_cpu_caches(device: torch.device | str = "cpu") -> bool:
    """Hand MKL's cached matmul scratch back to the system, when host memory is bounded (`bound`) and the
    work ran on the CPU; a no-op otherwise (False), and where torch has no MKL (ARM, macOS builds).
    Head importance calls it after each example, layer order after each layer."""
    if not _state["bounded"] or torch.device(device).type != "cpu":
        return False
    lib = _lib("torch_cpu")
    fn = getattr(lib, "mkl_serv_free_buffers", None) if lib is not None else None
    if fn is None:
        return False
    fn()
    return True


def trim() -> bool:
    """Give the heap's free memory back to the system (glibc's malloc_trim): between steps, never in a loop."""
    libc = _lib("c")
    try:
        return bool(libc is not None and libc.malloc_trim(0))
    except AttributeError:
        return False


__all__ = ["bound", "is_bounded", "needs_bound", "release_cpu_caches", "trim"]
