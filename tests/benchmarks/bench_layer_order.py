#!/usr/bin/env python3
"""Layer order against batch order with streamed layers: the FFN oracle of one task on a model whose
every layer is read from the memory-mapped checkpoint (`--offload mmap`), timed both ways in one run.

    python tests/benchmarks/bench_layer_order.py                       # COPA 1-shot, 20 docs
    python tests/benchmarks/bench_layer_order.py --task piqa --limit 40 --layers 8

Builds a random fp32 OPT (hidden 512, ffn 2048, `--layers` layers, the real OPT vocabulary, so the
prompts tokenise as in a run) in a temp dir, then runs `Scorer.run_knockouts` (the base run and the L
knock-outs) twice on the streamed model: batch order (every pass fetches the layers it runs) and layer
order (opt66b/layer_major.py: each layer fetched once per chunk; here one chunk). Prints the layer
fetches, wall time and their ratios, and checks that both give the same per-request results bit for
bit. The shards were just written, so fetches copy from the page cache: on a GPU each fetch is a PCIe
transfer of the layer instead, which is what layer order saves. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="copa")
    ap.add_argument("--data", default=None, help="data directory (default: the bundled samples)")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--batch-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from conftest import random_model
    from opt66b import OPTConfig, load_tokenizer, save_checkpoint
    from opt66b.offload import load_streamed
    from opt66b.runs.loading import TINY_MODEL_DIR
    from prune.importance import ffn_knockout_mask
    from tasks.cli_options import SAMPLES_DIR
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    torch.set_num_threads(args.threads)
    cfg = OPTConfig(hidden_size=512, num_layers=args.layers, num_heads=8, ffn_dim=2048, max_positions=2048)
    tokenizer = load_tokenizer(TINY_MODEL_DIR)
    task = get_task(args.task, args.data or SAMPLES_DIR)
    runs = [(layer, None, ffn_knockout_mask(cfg.num_layers, layer), layer) for layer in range(cfg.num_layers)]
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(random_model(cfg, seed=1), tmp)
        model = load_streamed(tmp, dtype=torch.float32)
        ev = TaskEvaluation(model, tokenizer, task, 1, limit=args.limit, batch_tokens=args.batch_tokens)
        passes = sum(1 + len(u.conts) for u in ev.scorer.units)
        print(f"{args.task} 1-shot, {args.limit} docs: {len(ev.scorer.units)} batches, {passes} passes; "
              f"{cfg.num_layers} streamed layers of {4 * (4 * 512 * 512 + 2 * 512 * 2048) / 2**20:.0f} MiB; "
              f"base + {cfg.num_layers} knock-outs")
        out = {}
        for order in ("batch", "layer"):
            before = model.streamer.copies
            t0 = time.perf_counter()
            results = ev.scorer.run_knockouts(runs, len(ev.scorer.units), layer_major=order == "layer")
            out[order] = (model.streamer.copies - before, time.perf_counter() - t0, results)
            print(f"{order} order: {out[order][0]:6d} layer fetches, {out[order][1]:7.2f} s", flush=True)
    (fb, tb, rb), (fl, tl, rl) = out["batch"], out["layer"]
    print(f"layer / batch order: fetches {fl / fb:.4f}x, wall {tl / tb:.2f}x; "
          f"results {'identical' if rb == rl else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
