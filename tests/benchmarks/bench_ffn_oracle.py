#!/usr/bin/env python3
"""Oracle FFN importance: cached (resume each knockout at its layer) vs naive full re-evaluation.

    python tests/benchmarks/bench_ffn_oracle.py                                   # CPU, fixture data
    python tests/benchmarks/bench_ffn_oracle.py --size opt-1.3b --device cuda --dtype float16 \
        --data ~/data --task boolq --shots 1 --limit 200

Builds an OPT with random weights (a named size from opt66b.OPT_CONFIGS, or the small default
shape below), evaluates one task, and times prune.importance.ffn_importance for all layers twice:
naive (base + L full evaluations) and cached (one base run that records every layer's input, then
each knockout l recomputes only layers l..L-1). Prints both times, the ratio cached / naive
(target <= 0.6) and checks the two give the same per-layer metrics. The ideal ratio for
layer-dominated cost is (1 + (L+1)/2) / (1 + L); the scoring head (output projection at the scored
positions) is paid in full by both. Not collected by pytest (bench_*.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
TARGET = 0.6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default=None, help="OPT size name (default: 12 layers, d=512, 8 heads, ffn 2048)")
    ap.add_argument("--data", type=Path, default=ROOT / "tests" / "fixtures" / "data")
    ap.add_argument("--task", default="boolq")
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = ap.parse_args()

    import torch

    from opt66b import OPT, OPTConfig, config_for_size, load_tokenizer
    from prune.importance import ffn_importance
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    cfg = config_for_size(args.size) if args.size else OPTConfig(hidden_size=512, num_layers=12, num_heads=8,
                                                                 ffn_dim=2048)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = OPT(cfg).to(dtype).eval()  # default init; std 0.02 weights keep fp16 finite
    model.requires_grad_(False)
    tokenizer = load_tokenizer(ROOT / "opt66b" / "assets" / "tiny-opt")
    task = get_task(args.task, args.data)
    ev = TaskEvaluation(model, tokenizer, task, args.shots, limit=args.limit, batch_tokens=args.batch_tokens)
    print(f"{args.task} {args.shots}-shot, {len(ev.instances)} docs, scorer {ev.scorer.stats}; "
          f"model {cfg.num_layers} layers d={cfg.hidden_size} {args.dtype} on {args.device}", file=sys.stderr)
    ev.run()  # warm-up (kernels, allocator)

    # On a shared CPU, wall time depends on the other processes' load; the process's CPU time does
    # not (much), so the ratio is taken on CPU time there and on wall time on a GPU.
    clock = time.perf_counter if args.device.startswith("cuda") else time.process_time

    def timed(cached: bool) -> tuple[float, float, dict]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, w0 = clock(), time.perf_counter()
        res = ffn_importance(ev, cfg.num_layers, task.PRIMARY_METRIC, cached=cached)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return clock() - t0, time.perf_counter() - w0, res

    t_naive, w_naive, naive = timed(False)
    t_cached, w_cached, cached = timed(True)
    same = naive["metrics"] == cached["metrics"]
    ideal = (1 + (cfg.num_layers + 1) / 2) / (1 + cfg.num_layers)
    out = {"task": args.task, "shots": args.shots, "docs": len(ev.instances), "layers": cfg.num_layers,
           "hidden": cfg.hidden_size, "dtype": args.dtype, "device": args.device, "clock": clock.__name__,
           "naive_s": round(t_naive, 3), "cached_s": round(t_cached, 3), "naive_wall_s": round(w_naive, 3),
           "cached_wall_s": round(w_cached, 3), "threads": torch.get_num_threads(), "ratio": round(t_cached / t_naive, 3), "ideal_ratio": round(ideal, 3),
           "target": TARGET, "identical_metrics": same, "scorer": ev.scorer.stats}
    print(json.dumps(out, indent=2))
    print(f"cached/naive ({clock.__name__}) = {t_cached:.2f}s / {t_naive:.2f}s = {t_cached / t_naive:.3f} "
          f"(ideal {ideal:.3f}, target <= {TARGET}); identical metrics: {same}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
