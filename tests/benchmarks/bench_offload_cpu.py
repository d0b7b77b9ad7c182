#!/usr/bin/env python3
"""CPU streaming offload: a model ~3x the `--max-memory cpu` budget evaluated from memory-mapped shards.

    python tests/benchmarks/bench_offload_cpu.py                     # budget 640 MiB, weights ~1.9 GiB
    python tests/benchmarks/bench_offload_cpu.py --budget 1GiB --ratio 3

Builds a random fp32 OPT (hidden 1024, ffn 4096, vocab 8192, layers chosen so the weights are
`--ratio` x the budget) as 256 MB safetensors shards in a temp dir, then runs in fresh interpreters:
  resident: load_model + per-batch forward;
  stream:   load_streamed (opt66b.offload, what `--offload mmap --max-memory cpu=...` does) + the
            layer-major executor over the whole chunk (each layer read once);
  stream-forward: load_streamed + plain per-batch model.forward (each layer read once per batch).
Each prints peak RSS (VmHWM, whole process incl. the ~300 MB of torch itself) against the budget,
wall time and the max |logit difference| to the resident run. Shards were just written, so reads
come from the page cache: this measures the machinery, not the disk. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(int(sys.argv[4]))
from opt66b import load_model
from opt66b.offload import load_streamed
sys.path.insert(0, {root!r} + '/tests')
from conftest import layer_major_hidden
mode, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
g = torch.Generator().manual_seed(0)
batches = [(torch.randint(4, 8192, (4, 64), generator=g), torch.ones(4, 64, dtype=torch.long)) for _ in range(4)]
t0 = time.perf_counter()
model = load_model(ckpt, dtype=torch.float32) if mode == "resident" else load_streamed(ckpt, dtype=torch.float32)
t1 = time.perf_counter()
with torch.no_grad():
    if mode == "stream":
        hidden = layer_major_hidden(model, batches)
    else:
        hidden = [model(ids, m, logits="none").hidden for ids, m in batches]
    last = torch.cat([model.logits(h[:, -1]) for h in hidden])  # (16, V)
t2 = time.perf_counter()
from safetensors.torch import save_file
save_file({{"last": last.contiguous()}}, out)
hwm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
copies = getattr(model.streamer, "copies", 0) if model.streamer is not None else 0
print(json.dumps({{"mode": mode, "load_s": t1 - t0, "eval_s": t2 - t1, "peak_rss": hwm, "layer_copies": copies}}))
"""


def build(dir_: Path, budget: int, ratio: float) -> dict:
    import torch

    from opt66b import OPT, OPTConfig, save_checkpoint
    from opt66b.placement import head_params, layer_params

    base = OPTConfig(hidden_size=1024, num_layers=1, num_heads=16, ffn_dim=4096, vocab_size=8192, max_positions=128)
    layers = max(2, round((ratio * budget / 4 - head_params(base)) / layer_params(base)))
    cfg = OPTConfig(hidden_size=1024, num_layers=layers, num_heads=16, ffn_dim=4096, vocab_size=8192,
                    max_positions=128)
    torch.manual_seed(0)
    model = OPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    save_checkpoint(model, dir_, max_shard_bytes=256 << 20)
    return {"layers": layers, "weight_bytes": (layer_params(cfg) * layers + head_params(cfg)) * 4}


def main() -> int:
    from opt66b.placement import GIB, parse_size

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", default="640MiB", help="the --max-memory cpu budget (default 640MiB)")
    ap.add_argument("--ratio", type=float, default=3.0, help="weights / budget (default 3)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    budget = parse_size(args.budget)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        meta = build(ckpt, budget, args.ratio)
        print(f"model: {meta['layers']} layers, {meta['weight_bytes'] / GIB:.2f} GiB fp32 weights "
              f"({meta['weight_bytes'] / budget:.2f}x the {budget / GIB:.2f} GiB budget)")
        results, logits = {}, {}
        for mode in ("resident", "stream", "stream-forward"):
            out = Path(tmp) / f"{mode}.safetensors"
            proc = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), mode, str(ckpt), str(out),
                                   str(args.threads)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            from safetensors.torch import load_file
            logits[mode] = load_file(str(out))["last"]
        for mode, r in results.items():
            diff = float((logits[mode] - logits["resident"]).abs().max())
            print(f"{mode:15s} peak RSS {r['peak_rss'] / GIB:.3f} GiB (budget {budget / GIB:.3f}, "
                  f"{'within' if r['peak_rss'] <= budget else 'OVER'}) load {r['load_s']:.2f}s "
                  f"eval {r['eval_s']:.2f}s ({r['eval_s'] / results['resident']['eval_s']:.2f}x resident) "
                  f"layer copies {r['layer_copies']} max|dlogit| {diff:.2e}")
        print(json.dumps({"budget_bytes": budget, **meta, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
