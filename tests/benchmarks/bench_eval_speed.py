#!/usr/bin/env python3
"""Evaluation speed as a user meets it: this checkout against a baseline revision, alternating runs.

    python tests/benchmarks/bench_eval_speed.py                       # HEAD vs 3137c30, 2 rounds
    python tests/benchmarks/bench_eval_speed.py --baseline HEAD~5 --rounds 3 --limit 10

Each run is a whole process, as a user starts it, into a fresh output directory:

    run.py eval --model CKPT --device cpu --tasks boolq hellaswag winogrande copa arc_easy multirc \
        --shots 5 --limit 20 --out DIR

on a random opt-125m saved in fp32 (made once, in a temporary directory, with the tokenizer files of the
embedded tiny OPT). The baseline is the same command in a git worktree of `--baseline` (default 3137c30,
the revision before the host-memory work), so both sides run on this machine at this moment; the runs
alternate (baseline, this checkout, this checkout under a host budget) so a drift of the machine's speed
falls on all of them. Printed: every run's wall time, the medians, and the ratios this / baseline and
bounded / unbounded (`--max-memory cpu=64GiB`: the host budget under which opt66b/host_memory.py returns
freed memory at once, which costs time). The accuracies of both sides are compared too: the same
numbers are expected, or the ratio would compare different work. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["boolq", "hellaswag", "winogrande", "copa", "arc_easy", "multirc"]

SAVE = """
import sys, shutil
sys.path.insert(0, {root!r})
import torch
from opt66b import save_checkpoint
from opt66b.runs.loading import TINY_MODEL_DIR, load
model = load(random_weights={size!r}, dtype=torch.float32, device="cpu", log=lambda s: None)[0]
save_checkpoint(model, {out!r})
for name in ("vocab.json", "merges.txt"):
    shutil.copy(TINY_MODEL_DIR / name, {out!r})
"""


def timed_run(repo: Path, ckpt: Path, out: Path, limit: int, extra: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "run.py", "eval", "--model", str(ckpt), "--device", "cpu", "--tasks", *TASKS,
            "--shots", "5", "--limit", str(limit), "--out", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=repo, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{repo}: {' '.join(argv[1:])} failed:\n{proc.stderr[-2000:]}")
    return seconds


def accuracies(out: Path) -> dict[str, float]:
    results = json.loads((out / "shots-5" / "results.json").read_text())["results"]
    return {task: round(m.get("acc", m.get("em", 0.0)), 6) for task, m in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="3137c30", help="git revision to compare with (default: 3137c30)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each side (default 2)")
    ap.add_argument("--limit", type=int, default=20, help="docs per task (default 20)")
    ap.add_argument("--size", default="opt-125m")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, base_repo = tmp / "ckpt", tmp / "baseline"
        subprocess.run([sys.executable, "-c", SAVE.format(root=str(ROOT), size=args.size, out=str(ckpt))],
                       check=True, cwd=ROOT)
        subprocess.run(["git", "worktree", "add", "--detach", str(base_repo), args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            sides = {"baseline": (base_repo, []), "this": (ROOT, []),
                     "this, host budget": (ROOT, ["--max-memory", "cpu=64GiB"])}
            times: dict[str, list[float]] = {name: [] for name in sides}
            for r in range(args.rounds):
                for name, (repo, extra) in sides.items():
                    times[name].append(timed_run(repo, ckpt, tmp / "out" / name.replace(" ", "-").replace(",", ""),
                                                 args.limit, extra))
                    print(f"round {r + 1}: {name:<18} {times[name][-1]:7.1f} s", flush=True)
            same = accuracies(tmp / "out" / "baseline") == accuracies(tmp / "out" / "this")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_repo)], cwd=ROOT, capture_output=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    print("median: " + ", ".join(f"{name} {m:.1f} s" for name, m in med.items()))
    print(f"this / baseline ({args.baseline}): {med['this'] / med['baseline']:.3f}x"
          f"  (goal <= 1.02; the same accuracies on both sides: {same})")
    print(f"host budget / none (the cost of bounded host memory): {med['this, host budget'] / med['this']:.3f}x")


if __name__ == "__main__":
    main()
