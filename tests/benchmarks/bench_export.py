#!/usr/bin/env python3
"""Exported (physically pruned) checkpoints against the masked full model, measured side by side.

    python tests/benchmarks/bench_export.py                    # opt-125m shape
    python tests/benchmarks/bench_export.py --shape opt-1.3b   # 1.3B shape: slow on 2 cores, ~5 GB RAM

For a random-weight fp16 checkpoint of an official shape (written to a temp dir), at each pruning
point (heads 0/30/50/70% x FFNs 0/20%, units chosen by a seeded random ranking, as a sweep would)
it exports the pruned checkpoint and then measures, each in a fresh interpreter:
    masked:   the full checkpoint loaded, evaluated with head_mask/ffn_mask
    exported: the pruned checkpoint loaded, evaluated without masks
Columns: checkpoint bytes on disk, load time (load_model, fp32 on CPU: the fp16 shards upcast),
peak RSS of the process (VmHWM over load + one forward) above its RSS after importing torch. Eval
tokens/s: a no-grad forward over --batch x --seq tokens scoring the last position (logits="last";
what log-likelihood scoring costs besides its few target rows), both models in one process timed
alternately for --repeats rounds after a warm-up, best of each (on a shared machine, interleaving
makes outside load hit both alike; the 0%/0% row, two identical models, shows the noise left).
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

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
from opt66b import load_model
from opt66b.mask_files import read_masks

def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB -> bytes
    raise RuntimeError(field)

ckpt, masks, batch, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
base = vm("VmRSS")  # the interpreter with torch imported: the same in both cases
t0 = time.perf_counter()
model = load_model(ckpt, dtype=torch.float32)
load_s = time.perf_counter() - t0
head = ffn = None
if masks != "-":
    head, ffn = read_masks(masks)
ids = torch.randint(3, 50000, (batch, seq), generator=torch.Generator().manual_seed(0))  # (B, T)
with torch.no_grad():
    out = model(ids, head_mask=head, ffn_mask=ffn, logits="last")  # every weight is touched once
assert torch.isfinite(out.logits).all()
print(json.dumps(dict(load_s=load_s, peak=vm("VmHWM") - base, logits=out.logits[:, -1, :4].tolist())))
"""


# Speed: both models in one process, timed alternately (A B A B ...), so that load from other
# processes on a shared machine hits both alike; best time of each over the rounds.
SPEED_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
from opt66b import load_model
from opt66b.mask_files import read_masks

full, masks, small, batch, seq, rounds = sys.argv[1:4] + [int(a) for a in sys.argv[4:7]]
head, ffn = read_masks(masks)
runs = {{"masked": (load_model(full, dtype=torch.float32), head, ffn), "exported": (load_model(small, dtype=torch.float32), None, None)}}
ids = torch.randint(3, 50000, (batch, seq), generator=torch.Generator().manual_seed(0))  # (B, T)
best = {{k: float("inf") for k in runs}}
with torch.no_grad():
    for model, h, f in runs.values():
        model(ids[:1, :8], head_mask=h, ffn_mask=f, logits="last")  # warm-up
    for _ in range(rounds):
        for name, (model, h, f) in runs.items():
            t0 = time.perf_counter()
            model(ids, head_mask=h, ffn_mask=f, logits="last")
            best[name] = min(best[name], time.perf_counter() - t0)
print(json.dumps({{k: batch * seq / v for k, v in best.items()}}))
"""


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix == ".safetensors")


def child(code: str, *argv) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(ckpt: Path, masks: Path | None, args: argparse.Namespace) -> dict:
    """Load time and peak RSS in a fresh interpreter."""
    return child(CHILD.format(root=str(ROOT), threads=args.threads), ckpt, masks or "-", args.batch, args.seq)


def speeds(full: Path, masks: Path, small: Path, args: argparse.Namespace) -> dict:
    """Eval tokens/s of the masked full model and the exported one, interleaved in one interpreter."""
    return child(SPEED_CHILD.format(root=str(ROOT), threads=args.threads), full, masks, small, args.batch,
                 args.seq, args.repeats)


def main() -> int:
    import torch

    from opt66b import config_for_size, save_checkpoint
    from opt66b.export import export_pruned
    from opt66b.mask_files import write_masks
    from opt66b.runtime import build_random_model
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
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        tmp = Path(tmp)
        src = tmp / "full"
        print(f"writing a random {args.shape} checkpoint (fp16) to {src}", file=sys.stderr, flush=True)
        model = build_random_model(cfg, torch.float16, lambda name: torch.device("cpu"), seed=args.seed)
        save_checkpoint(model, src, max_shard_bytes=1 << 30)
        del model
        full_bytes = dir_bytes(src)
        rows = []
        for hp in args.head_percents:
            for fp in args.ffn_percents:
                head = head_mask_for_percent(importance, hp)
                ffn = ffn_mask_for_percent(ffn_order, fp, cfg.num_layers)
                masks = write_masks(tmp / f"m{hp:g}_{fp:g}.safetensors", head, ffn)
                print(f"heads {hp:g}% ffn {fp:g}%: measuring", file=sys.stderr, flush=True)
                masked = measure(src, masks, args)
                out = tmp / f"x{hp:g}_{fp:g}"
                export_pruned(src, out, head, ffn, max_shard_bytes=1 << 30)
                exported = measure(out, None, args)
                tok_s = speeds(src, masks, out, args)
                masked["tok_s"], exported["tok_s"] = tok_s["masked"], tok_s["exported"]
                diff = max(abs(a - b) for ra, rb in zip(masked["logits"], exported["logits"]) for a, b in zip(ra, rb))
                rows.append((hp, fp, full_bytes, dir_bytes(out), masked, exported, diff))
                for p in out.iterdir():
                    p.unlink()
                out.rmdir()
    mib = 1 << 20
    print(f"\n{args.shape}, random fp16 weights, eval fp32 on CPU ({args.threads} threads), "
          f"{args.batch}x{args.seq} tokens, best of {args.repeats} interleaved rounds; ratio = exported / masked")
    print("| heads | FFNs | ckpt MiB masked / exported (ratio) | load s masked / exported | peak RSS MiB above "
          "baseline, masked / exported (ratio) | tokens/s masked / exported (speed-up) | max logit diff |")
    print("|---|---|---|---|---|---|---|")
    for hp, fp, fb, eb, m, e, diff in rows:
        print(f"| {hp:g}% | {fp:g}% | {fb / mib:.0f} / {eb / mib:.0f} ({eb / fb:.2f}) | {m['load_s']:.2f} / "
              f"{e['load_s']:.2f} | {m['peak'] / mib:.0f} / {e['peak'] / mib:.0f} ({e['peak'] / m['peak']:.2f}) | "
              f"{m['tok_s']:.0f} / {e['tok_s']:.0f} ({e['tok_s'] / m['tok_s']:.2f}x) | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
