"""The GPUs a plan may name, as they are: the memory a process can really use and the dense fp16/bf16 peak.

    kind = gpu_kind("h100-80gb")          # or the kind of a card on this machine: detect_gpu("cuda:0")
    kind.usable_bytes, kind.peak_tflops

Usable memory is what the driver exposes for the card (torch.cuda.get_device_properties(i).total_memory,
the same figure as nvidia-smi's total) less CONTEXT_BYTES: the CUDA context, cuBLAS's workspace and
the caching allocator's fragmentation, which no tensor of ours can use. The peaks are NVIDIA's datasheet
figures for dense fp16/bf16 tensor-core math (the datasheets print twice these "with sparsity"; this code
never uses 2:4 sparsity). A card sustains a fraction of its peak on this work (short sequences, many small
batches): SUSTAINED_FRACTION is the plan's default, an assumption stated here, not a measurement, to be
replaced by `--throughput` once a run has measured its own rate (work.json: planned FLOPs and seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
CONTEXT_BYTES = GIB  # CUDA context (~0.5 GiB on Hopper) + cuBLAS workspace + allocator fragmentation
SUSTAINED_FRACTION = 0.45  # the default throughput: 45% of the dense peak (an A100 at 140 of 312 TFLOP/s)


@dataclass(frozen=True)
class GPUKind:
    name: str
    exposed_gib: float  # what the driver reports as the card's total memory
    peak_tflops: float  # dense fp16/bf16 tensor-core peak (datasheet, without sparsity)
    label: str

    @property
    def usable_bytes(self) -> int:
        return int(self.exposed_gib * GIB) - CONTEXT_BYTES

    @property
    def default_tflops(self) -> float:
        return SUSTAINED_FRACTION * self.peak_tflops


GPU_KINDS = {k.name: k for k in (
    GPUKind("h100-80gb", 79.6, 989.4, "H100 80GB SXM5 (HBM3; 81559 MiB)"),
    GPUKind("h100-pcie", 79.6, 756.5, "H100 80GB PCIe (HBM2e; 81559 MiB)"),
    GPUKind("h200", 140.4, 989.4, "H200 141GB SXM (HBM3e; 143771 MiB)"),
    GPUKind("a100-40gb", 39.6, 312.0, "A100 40GB SXM4/PCIe (HBM2; 40536 MiB)"),
    GPUKind("a100-80gb", 79.3, 312.0, "A100 80GB SXM4/PCIe (HBM2e; 81251 MiB)"),
    GPUKind("l40s", 45.0, 362.1, "L40S 48GB (GDDR6 with ECC; 46068 MiB)"),
)}


def gpu_kind(name: str) -> GPUKind:
    if name not in GPU_KINDS:
        raise ValueError(f"--gpu {name}: not a GPU kind this plan knows; choose from {', '.join(GPU_KINDS)}")
    return GPU_KINDS[name]


def detect_gpu(device: str) -> GPUKind | None:
    """The kind of the card at `device` on this machine, from its name and memory (None: no such card, or a
    kind not in the table, whose exposed memory then still bounds the budgets: see usable_on)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.device(device))
    name, gib = props.name.lower(), props.total_memory / GIB
    for kind in GPU_KINDS.values():
        family = kind.name.split("-")[0]
        if family in name and abs(kind.exposed_gib - gib) < 4 and (("pcie" in name) == ("pcie" in kind.name)
                                                                   or family != "h100"):
            return kind
    return GPUKind("this card", gib, float("inf"), props.name)


def check_plan_hardware(kind: GPUKind, budgets: dict[str, int], throughput: float | None) -> None:
    """A --max-memory entry for a GPU above what `kind` can give, or a --throughput above its peak, is refused
    with both numbers (ValueError: exit 2)."""
    for device, size in budgets.items():
        if device.startswith("cuda") and size > kind.usable_bytes:
            raise ValueError(f"--max-memory {device}={size / GIB:.1f}GiB is more than an {kind.name} can give: "
                             f"{kind.usable_bytes / GIB:.1f} GiB ({kind.exposed_gib:g} GiB exposed less "
                             f"{CONTEXT_BYTES / GIB:g} GiB for the CUDA context and the allocator); lower it")
    if throughput is not None and throughput > kind.peak_tflops:
        raise ValueError(f"--throughput {throughput:g} TFLOP/s is above the {kind.name}'s dense fp16/bf16 peak of "
                         f"{kind.peak_tflops:g} TFLOP/s; a run sustains a fraction of it (default "
                         f"{SUSTAINED_FRACTION:.0%}: {kind.default_tflops:.0f} TFLOP/s)")
