#!/usr/bin/env python3
"""--threads on a busy machine: forward passes with torch's default thread count vs fewer threads,
while other processes keep every core busy.

    python tests/benchmarks/bench_threads.py                       # 1 competitor per core
    python tests/benchmarks/bench_threads.py --competitors 0       # an idle machine, for comparison

Each measurement runs in a fresh process (the thread pool is fixed per process) that builds a small
random OPT and times `--reps` forward passes of a (batch, tokens) block. Competitors are pure-Python
spin loops, one per core by default, like other users' jobs on a shared machine. Prints the time
per setting and the ratio default / N: above 1 means fewer threads are faster under this load,
which is the case for `--threads`. Not collected by pytest (bench_*.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKLOAD = r"""
import sys, time, torch
sys.path.insert(0, {root!r})
from opt66b import OPT, OPTConfig
threads = {threads}
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
model = OPT(OPTConfig(hidden_size=256, num_layers=4, num_heads=8, ffn_dim=1024, vocab_size=1024,
                      max_positions=256)).eval()
ids = torch.randint(0, 1024, ({batch}, {tokens}))  # (B, T)
with torch.no_grad():
    model(ids, logits="none")  # warm-up
    start = time.perf_counter()
    for _ in range({reps}):
        model(ids, logits="none")
print(torch.get_num_threads(), time.perf_counter() - start)
"""


def measure(threads: int, args: argparse.Namespace) -> tuple[int, float]:
    code = WORKLOAD.format(root=str(ROOT), threads=threads, batch=args.batch, tokens=args.tokens, reps=args.reps)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    used, seconds = out.stdout.split()
    return int(used), float(seconds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--competitors", type=int, default=os.cpu_count(), help="busy processes (default: one per core)")
    ap.add_argument("--threads", type=int, default=1, help="the --threads value compared with the default")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.competitors)]
    try:
        time.sleep(0.5)
        default_threads, t_default = measure(0, args)
        _, t_few = measure(args.threads, args)
    finally:
        for p in spin:
            p.kill()
            p.wait()
    print(f"{args.competitors} competitor(s) on {os.cpu_count()} core(s), {args.reps} forward passes of "
          f"({args.batch}, {args.tokens}) tokens:")
    print(f"  torch default ({default_threads} threads): {t_default:.2f} s")
    print(f"  --threads {args.threads}:{' ' * 14}{t_few:.2f} s")
    print(f"  ratio default / --threads {args.threads}: {t_default / t_few:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
