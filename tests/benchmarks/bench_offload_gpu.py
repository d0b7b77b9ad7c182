#!/usr/bin/env python3
"""GPU streaming offload at full scale: OPT-66B-shaped random weights, offloaded vs all-resident.

    python tests/benchmarks/bench_offload_gpu.py                                  # one H100 80 GB
    python tests/benchmarks/bench_offload_gpu.py --max-memory cuda:0=139GiB       # H200: no offload needed
    python tests/benchmarks/bench_offload_gpu.py --chunk 128 --seq 256 --dtype bfloat16

Builds `--size` with random weights directly on the devices chosen by the auto map for
`--max-memory` (run.py's --random-weights path), then evaluates `--chunk` sequences of `--seq`
tokens with the layer-major executor (each layer's weights cross PCIe once per chunk, prefetched on
a side stream into two reused buffers from pinned host memory).

Reference ("all-resident") throughput: the layers that fit stay on the GPU, so the same executor is
timed on those resident layers alone; the resident rate per layer is scaled to the full depth
(decoder layers are identical in shape, the head group is shared). Reported: tokens/s offloaded,
tokens/s all-resident (per-layer scaled, or measured directly when everything fits), their ratio
(target >= 0.7 at >= 64 sequences per chunk) and model FLOP/s as a fraction of `--peak-tflops`
(default 989, H100/H200 SXM dense bf16; target >= 50%).

FLOPs counted per token: 2 x (layer params) per layer (matmuls) + 4 x S x D per layer (QK^T and
PV with causal masking counted as full; halve for the causal-only count) + 2 x V x W for the last
position's logits only. Needs a CUDA GPU; never run in the CPU-only test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def timed(fn, reps: int) -> float:
    import torch

    fn()  # warm-up (kernel selection, first-touch allocations)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> int:
    import torch

    from opt66b import config_for_size
    from opt66b.offload import attach_pinned_streamer
    sys.path.insert(0, str(ROOT / 'tests'))
    from conftest import layer_major_hidden
    from opt66b.placement import auto_device_map, layer_params, parse_max_memory
    from opt66b.runs.loading import DTYPES, build_random_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="opt-66b")
    ap.add_argument("--max-memory", default="cuda:0=70GiB,cpu=110GiB")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--chunk", type=int, default=64, help="sequences per chunk (default 64)")
    ap.add_argument("--batch", type=int, default=8, help="sequences per forward batch inside a chunk")
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_offload_gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    cfg = config_for_size(args.size)
    dm = auto_device_map(cfg, parse_max_memory(args.max_memory), dtype)
    print(dm.summary(), file=sys.stderr)
    t0 = time.perf_counter()
    model = build_random_model(cfg, dtype, dm.device_for)
    streamed = dm.streamed_layers()
    if streamed:
        attach_pinned_streamer(model, streamed, dm.compute)
    print(f"built in {time.perf_counter() - t0:.0f}s; {len(streamed)} of {cfg.num_layers} layers streamed",
          file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    chunk = [(torch.randint(4, 50000, (args.batch, args.seq), generator=g).to(dm.head), None)
             for _ in range(args.chunk // args.batch)]
    tokens = args.chunk * args.seq

    def run_all():
        hidden = layer_major_hidden(model, chunk)
        return [model.logits(h[:, -1]) for h in hidden]

    full_s = timed(run_all, args.reps)
    resident_layers = [i for i in range(cfg.num_layers) if i not in streamed]
    if streamed:
        # all-resident reference: the same executor over the resident layers only, scaled per layer
        saved = model.decoder.layers
        model.decoder.layers = torch.nn.ModuleList(saved[i] for i in resident_layers)
        model.config.num_layers, real_layers = len(resident_layers), cfg.num_layers
        part_s = timed(run_all, args.reps)
        model.decoder.layers, model.config.num_layers = saved, real_layers
        resident_s = part_s * real_layers / len(resident_layers)  # upper bound on time: head cost scaled too
    else:
        resident_s = full_s
    flops = tokens * cfg.num_layers * (2 * layer_params(cfg) + 4 * args.seq * cfg.hidden_size) \
        + args.chunk * 2 * cfg.vocab_size * cfg.word_embed_proj_dim
    result = {
        "size": args.size, "dtype": args.dtype, "device_map": dm.to_json(), "chunk": args.chunk,
        "seq": args.seq, "tokens_per_s_offload": tokens / full_s, "tokens_per_s_resident": tokens / resident_s,
        "ratio": resident_s / full_s, "tflops": flops / full_s / 1e12,
        "fraction_of_peak": flops / full_s / 1e12 / args.peak_tflops,
        "peak_gpu_gib": torch.cuda.max_memory_allocated(dm.compute) / 2**30,
        "device": torch.cuda.get_device_name(dm.compute),
    }
    print(json.dumps(result, indent=2))
    print(f"offload {result['tokens_per_s_offload']:.0f} tok/s vs resident {result['tokens_per_s_resident']:.0f} "
          f"tok/s: {result['ratio']:.2f}x (target >= 0.7); {result['tflops']:.0f} TFLOP/s = "
          f"{100 * result['fraction_of_peak']:.0f}% of peak (target >= 50%)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
