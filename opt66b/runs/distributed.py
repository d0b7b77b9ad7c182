"""Splitting resumable sweeps across processes launched by torchrun (or run one process alone).

A sweep is a list of units (task x shot x knockout x percentage), each written to its own result
file. Process `rank` of `world` takes units[rank::world]; finished units are skipped on rerun; the
merged tables are written by rank 0 after a barrier (or by any later single-process rerun), so a
multi-process run produces the same files as a single process.

Mirrors torchrun's environment contract (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). Multi-node
works the same way: every process sees the shared output directory; gloo on CPU, nccl on GPUs. Each
process owns its own devices: `local_cuda_offset(n)` shifts a device map's cuda:k to the process's
own GPUs (runtime.py applies it), so `--device-map 0-31:cuda:0,32-63:cuda:1` under torchrun with 2
processes per node uses GPUs 0-1 for local rank 0 and GPUs 2-3 for local rank 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE; the world size when it is not set)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(rank_world()[1])))


def is_main() -> bool:
    return rank_world()[0] == 0


def my_units(units: Sequence[T], costs: Sequence[float] | None = None) -> list[T]:
    """This process's share of `units`, in their order: by `assign` when their costs are given (every process
    computes the same costs, so the same assignment), else round robin."""
    rank, world = rank_world()
    if costs is None:
        return list(units[rank::world])
    owners = assign(costs, world)
    return [u for u, owner in zip(units, owners) if owner == rank]


def assign(costs: Sequence[float], world: int) -> list[int]:
    """The process of each unit: longest first, each to the process with the least work so far (ties: the
    lowest rank; equal costs: the earlier unit first). Deterministic: the run and `--plan` call it with the
    same costs and get the same schedule; its makespan is at most 4/3 of the best possible (Graham's bound
    for longest-processing-time-first)."""
    loads = [0.0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        owner = min(range(world), key=lambda r: (loads[r], r))
        owners[i] = owner
        loads[owner] += costs[i]
    return owners


def init() -> None:
    """Initialise torch.distributed once (gloo on CPU, nccl when CUDA is available); no-op alone."""
    rank, world = rank_world()
    if world == 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if rank_world()[1] == 1:
        return
    import torch.distributed as dist

    init()
    dist.barrier()


def local_cuda_offset(devices_per_process: int) -> int:
    """First GPU index owned by this process when each process uses `devices_per_process` GPUs."""
    return local_rank() * devices_per_process


def run_units(units: Sequence[T], unit_path: Callable[[T], Path], compute: Callable[[T], Any],
              merge: Callable[[list[tuple[T, Any]]], Any] | None = None, merged_path: Path | None = None,
              log: Callable[[str], None] | None = None) -> Any:
    """Resumable sweep over `units` split across processes.

    Each process computes its units whose `unit_path(u)` does not exist yet, writing compute(u) there
    as JSON (atomically). After a barrier, rank 0 reads every unit file in `units` order and writes
    merge([(unit, result), ...]) to merged_path. Returns the merged object on rank 0, else None.
    """
    from opt66b.fileio import Progress, read_json
    from opt66b.runs.results import write_json

    mine = my_units(units)
    todo = [u for u in mine if not Path(unit_path(u)).exists()]
    if log and len(todo) < len(mine):
        log(f"resuming: {len(mine) - len(todo)} of {len(mine)} units already done")
    progress = Progress(len(todo), f"sweep rank {rank_world()[0]}")
    for u in todo:
        write_json(unit_path(u), compute(u))
        progress.update()
    barrier()
    if not is_main():
        return None
    results = []
    for u in units:
        path = Path(unit_path(u))
        if not path.is_file():
            raise FileNotFoundError(f"{path}: result of unit {u!r} missing after the barrier; rerun to compute it")
        results.append((u, read_json(path)))
    merged = merge(results) if merge else {str(u): r for u, r in results}
    if merged_path is not None:
        write_json(merged_path, merged)
    return merged


def finish() -> None:
    """Tear down the process group (call at the end of a torchrun script)."""
    if rank_world()[1] == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
