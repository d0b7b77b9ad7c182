#!/usr/bin/env python3
"""Exported (physically pruned) checkpoints against the masked full model, measured side by side.

    python tests/benchmarks/bench_export.py                    # opt-125m shape
    python tests/benchmarks/bench_export.py --shape opt-1.3b --batch 1 --seq 128 --repeats 5  # ~15 min, ~11 GB RAM

For a random-weight fp16 checkpoint of an official shape (written to a temp dir), at each pruning
point (heads 0/30/50/70% x FFNs 0/20%, units chosen by a seeded random ranking, as a sweep would) it
exports the pruned checkpoint and compares it with the full checkpoint evaluated under the masks:
  * checkpoint bytes on disk;
  * load time (load_model, fp32 on CPU: the fp16 shards are upcast) and peak RSS (VmHWM over the
    load and one forward, above the interpreter's RSS after importing torch), each model loaded
    first in a fresh interpreter; the full checkpoint's are measured once (the masks do not
    change what is loaded), the exported one's at every point;
  * eval tokens/s: a no-grad forward over --batch x --seq tokens scoring the last position
    (logits="last"; what log-likelihood scoring costs besides its few target rows), masked full
    model and exported model in the same interpreter, timed alternately for --repeats rounds after
    a warm-up, best of each: on a shared machine outside load then hits both alike (the 0%/0% row,
    two identical models, shows the noise that is left);
  * the largest logit difference between the two (fp32 summation order only).
Ratios are exported / masked. Not collected by pytest (bench_*.py).
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

# argv: first checkpoint (measured: load time, peak RSS), then optionally the full checkpoint and its
# mask file for the interleaved timing. Prints one JSON line.
CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
from opt66b import load_model
from opt66b.runs.mask_files import read_masks

def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB -> bytes
    raise RuntimeError(field)

first, full, masks = sys.argv[1], sys.argv[2], sys.argv[3]
batch, seq, rounds = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
ids = torch.randint(3, 50000, (batch, seq), generator=torch.Generator().manual_seed(0))  # (B, T)
base = vm("VmRSS")  # the interpreter with torch imported
t0 = time.perf_counter()
model = load_model(first, dtype=torch.float32)
load_s = time.perf_counter() - t0
with torch.no_grad():
    out = model(ids, logits="last").logits  # every weight touched once
assert torch.isfinite(out).all()
result = dict(load_s=load_s, peak=vm("VmHWM") - base)
if full != "-":
    head, ffn = read_masks(masks)
    runs = {{"exported": (model, None, None), "masked": (load_model(full, dtype=torch.float32), head, ffn)}}
    best = {{k: float("inf") for k in runs}}
    with torch.no_grad():
        ref = runs["masked"][0](ids, head_mask=head, ffn_mask=ffn, logits="last").logits  # also the warm-up
        for _ in range(rounds):
            for name, (m, h, f) in runs.items():
                t0 = time.perf_counter()
                m(ids, head_mask=h, ffn_mask=f, logits="last")
                best[name] = min(best[name], time.perf_counter() - t0)
    result.update(tok_s={{k: batch * seq / v for k, v in best.items()}}, diff=float((out - ref).abs().max()))
print(json.dumps(result))
"""


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".safetensors")


def measure(first: Path, args: argparse.Namespace, full: Path | None = None, masks: Path | None = None) -> dict:
    code = CHILD.format(root=str(ROOT), threads=args.threads)
    argv = [first, full or "-", masks or "-", args.batch, args.seq, args.repeats]
    out = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    import torch

    from opt66b import config_for_size, save_checkpoint
    from opt66b.export import export_pruned
    from opt66b.runs.mask_files import write_masks
    from opt66b.runs.loading import build_random_model
    from prune.masks import ffn_mask_for_percent, head_mask_for_percent

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="opt-125m")
    ap.add_argument("--head-percents", type=float, nargs="+", default=[0, 30, 50, 70])
    ap.add_argument("--ffn-percents", type=float, nargs="+", default=[0, 20])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds, each model once per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg = config_for_size(args.shape)
    gen = torch.Generator().manual_seed(args.seed)
    importance = torch.rand(cfg.num_layers, cfg.num_heads, generator=gen)  # (L, H) a seeded random ranking
    ffn_order = torch.randperm(cfg.num_layers, generator=gen).tolist()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        tmp = Path(tmp)
        src = tmp / "full"
        log(f"writing a random {args.shape} checkpoint (fp16) to {src}")
        model = build_random_model(cfg, torch.float16, lambda name: torch.device("cpu"), seed=args.seed)
        save_checkpoint(model, src, max_shard_bytes=1 << 30)
        del model
        full = measure(src, args)
        log(f"full checkpoint: {json.dumps(full)}")
        rows = []
        for hp in args.head_percents:
            for fp in args.ffn_percents:
                head = head_mask_for_percent(importance, hp)
                ffn = ffn_mask_for_percent(ffn_order, fp, cfg.num_layers)
                masks = write_masks(tmp / f"m{hp:g}_{fp:g}.safetensors", head, ffn)
                out = tmp / f"x{hp:g}_{fp:g}"
                export_pruned(src, out, head, ffn, max_shard_bytes=1 << 30)
                log(f"heads {hp:g}% ffn {fp:g}%: measuring")
                rows.append((hp, fp, dir_bytes(out), measure(out, args, src, masks)))
                log(f"  {json.dumps(rows[-1][3])}, {rows[-1][2]} bytes")
                for p in out.iterdir():
                    p.unlink()
                out.rmdir()
        full_bytes = dir_bytes(src)
    mib = 1 << 20
    print(f"\n{args.shape}, random fp16 weights, eval fp32 on CPU ({args.threads} threads), {args.batch}x{args.seq} "
          f"tokens, best of {args.repeats} interleaved rounds; ratio = exported / masked full model. Masked full "
          f"model: {full_bytes / mib:.0f} MiB on disk, load {full['load_s']:.2f} s, peak RSS {full['peak'] / mib:.0f} MiB")
    print("| heads | FFNs | checkpoint MiB (ratio) | load s (ratio) | peak RSS MiB (ratio) | "
          "tokens/s masked / exported (speed-up) | max logit diff |")
    print("|---|---|---|---|---|---|---|")
    for hp, fp, eb, e in rows:
        t = e["tok_s"]
        print(f"| {hp:g}% | {fp:g}% | {eb / mib:.0f} ({eb / full_bytes:.2f}) | {e['load_s']:.2f} "
              f"({e['load_s'] / full['load_s']:.2f}) | {e['peak'] / mib:.0f} ({e['peak'] / full['peak']:.2f}) | "
              f"{t['masked']:.1f} / {t['exported']:.1f} ({t['exported'] / t['masked']:.2f}x) | {e['diff']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
