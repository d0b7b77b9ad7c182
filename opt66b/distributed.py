"""Splitting resumable sweeps across processes launched by torchrun (or run one process alone).

A sweep is a list of units (task x shot x knockout x percentage), each written to its own result
file. Process `rank` of `world` takes units[rank::world]; finished units are skipped on rerun; the
merged tables are written by rank 0 after a barrier (or by any later single-process rerun), so a
multi-process run produces the same files as a single process.
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def my_units(units: Sequence[T]) -> list[T]:
    rank, world = rank_world()
    return list(units[rank::world])


def barrier() -> None:
    """Wait for every process (no-op in a single process). Initialises torch.distributed on first
    use: gloo on CPU, nccl when CUDA is available."""
    rank, world = rank_world()
    if world == 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    dist.barrier()
