#!/usr/bin/env python3
"""Peak host memory of model steps: what `--plan` predicts against what a run measures, and the FFN
oracle's growth with the data.

    python tests/benchmarks/bench_plan_memory.py                       # opt-125m, hellaswag 1-shot, limits 10 and 40
    python tests/benchmarks/bench_plan_memory.py --size opt-350m --steps eval "importance ffn"

Each case runs `run.py STEP --random-weights SIZE --device cpu --tasks TASK --shots 1 --limit N
--batch-tokens B` in a
fresh interpreter and reads its peak RSS (VmHWM); the baseline is the RSS after importing torch and
the project and building the same random model (weights included), so "measured" is the step's own
memory beyond the weights. "predicted" is the plan's activations on cpu plus its host bytes beyond the
weights (`--plan --json`). Printed: predicted, measured, their ratio (goal 0.8-1.25), and for the FFN
oracle the growth of the measured memory from the smallest to the largest limit (goal <= 1.25x with
a fixed --oracle-memory). Not collected by pytest (bench_*.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20

CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})

def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)

import torch
torch.set_num_threads(2)
import run
from opt66b.runtime import load
argv = json.loads(sys.argv[1])
if argv == ["baseline"]:
    model = load(random_weights={size!r}, device="cpu", log=lambda m: None)[0]
    print(json.dumps({{"rss": vm("VmRSS"), "hwm": vm("VmHWM")}}))
    sys.exit(0)
code = run.main(argv)
print(json.dumps({{"code": code, "hwm": vm("VmHWM")}}))
"""


def child(size: str, argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), size=size), json.dumps(argv)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="opt-125m")
    ap.add_argument("--task", default="hellaswag")
    ap.add_argument("--limits", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--steps", nargs="+", default=["importance ffn", "eval"])
    ap.add_argument("--oracle-memory", default="0.25", help="GiB for the FFN oracle's records (fixed across limits)")
    ap.add_argument("--batch-tokens", default="512",
                    help="scoring batch (default 512: full batches at every limit, so a growth is the data's, "
                         "not a batch that fills up; at 4096 the eval itself grows 3x from 10 to 40 docs)")
    args = ap.parse_args()
    base = child(args.size, ["baseline"])
    print(f"baseline (python + torch + {args.size} random weights): {base['rss'] / MIB:.0f} MiB")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for step in args.steps:
            for limit in args.limits:
                argv = [*step.split(), "--random-weights", args.size, "--device", "cpu", "--tasks", args.task,
                        "--shots", "1", "--limit", str(limit), "--batch-tokens", args.batch_tokens]
                if step == "importance ffn":
                    argv += ["--oracle-memory", args.oracle_memory]
                plan_path = Path(tmp) / "plan.json"
                child(args.size, [*argv, "--plan", "--throughput", "1", "--json", str(plan_path)])
                plan = json.loads(plan_path.read_text())
                weights = sum(plan["weights_bytes"].values())
                predicted = plan["total"]["peak_bytes"].get("cpu", 0) - weights + plan["total"]["host_bytes"]
                got = child(args.size, [*argv, "--out", str(Path(tmp) / f"{step.replace(' ', '-')}-{limit}")])
                measured = got["hwm"] - base["rss"]
                rows.append((step, limit, predicted, measured))
                print(f"{step:<16} limit {limit:>4}: predicted {predicted / MIB:8.0f} MiB, measured {measured / MIB:8.0f} "
                      f"MiB, ratio {predicted / max(measured, 1):.2f}", flush=True)
    for step in args.steps:
        mine = [r for r in rows if r[0] == step]
        if len(mine) > 1:
            print(f"{step}: measured growth from limit {mine[0][1]} to {mine[-1][1]}: {mine[-1][3] / max(mine[0][3], 1):.2f}x")


if __name__ == "__main__":
    main()
