"""Host memory is bounded only where a host budget asks for it (opt66b/host_memory.py): an unbudgeted CPU
run keeps glibc's and MKL's caches (1.13-1.18x faster, tests/benchmarks/bench_eval_speed.py)."""

from __future__ import annotations

import pytest

from opt66b import host_memory


@pytest.mark.parametrize("max_memory, offload, bounded", [
    ({}, "auto", False),
    ({"cuda:0": 80 << 30}, "auto", False),  # a GPU budget promises nothing about the host
    ({"cuda:0": 80 << 30, "cpu": 400 << 30}, "auto", True),
    ({}, "mmap", True),  # every layer streams from the files: the cpu entry bounds the peak
])
def test_a_host_budget_is_what_bounds_host_memory(max_memory, offload, bounded):
    assert host_memory.needs_bound(max_memory, offload) is bounded


def test_load_bounds_only_under_a_host_budget(monkeypatch):
    from opt66b.runs import loading as runtime

    calls = []
    monkeypatch.setattr(runtime, "bound", lambda: calls.append(1) or True)
    runtime.load(device="cpu", log=lambda s: None)
    assert calls == []
    runtime.load(device="cpu", max_memory="cpu=4GiB", log=lambda s: None)
    assert calls == [1]


def test_mkl_scratch_is_kept_without_a_bound(monkeypatch):
    monkeypatch.setitem(host_memory._state, "bounded", False)
    assert host_memory.release_cpu_caches("cpu") is False
    monkeypatch.setitem(host_memory._state, "bounded", True)
    assert host_memory.release_cpu_caches("cuda:0") is False  # work on another device: nothing to release
