#!/usr/bin/env python3
"""Peak host memory of model steps: what `--plan` predicts against what a run measures, and the FFN
oracle's growth with the data.

    python tests/benchmarks/bench_plan_memory.py                       # opt-125m, hellaswag 1-shot, limits 10 and 40
    python tests/benchmarks/bench_plan_memory.py --size opt-350m --steps eval "importance ffn"
    python tests/benchmarks/bench_plan_memory.py --data ~/data --tasks copa record --steps eval "importance heads"
    python tests/benchmarks/bench_plan_memory.py --offload mmap --steps eval "importance ffn" "importance heads"

Each case runs `run.py STEP --random-weights SIZE --max-memory cpu=64GiB --device cpu --tasks TASK --shots 1
--limit N --batch-tokens B` (`--n-docs N` for head importance) in a fresh interpreter; the cpu entry is the
host budget under which a run bounds its host memory (opt66b/host_memory.py), as the plan prices it. "measured" is the peak
of the step's anonymous resident memory after its model load (RssAnon, sampled every millisecond by a
thread; the loader's own transient is not the step's) minus the same after importing torch and the project and building the same random model (weights included):
the step's own memory beyond the weights. Anonymous, because the pages of torch's shared libraries
that a step touches for the first time (its backward kernels, about 90 MiB) count in VmRSS but are
code, not data. "predicted" is the plan's activations on cpu plus its host bytes beyond the weights
(`--plan --json`). Printed: predicted, measured, their ratio (goal 0.8-1.25), and for the FFN
oracle the growth of the measured memory from the smallest to the largest limit (goal <= 1.25x with
a fixed --oracle-memory). With --offload mmap the random weights are saved as a checkpoint first and
every step streams its layers from it in layer order (opt66b/layer_major.py): the baseline is then the
streamed load (the head group and two layer buffers; the layers stay in the page cache, which is not
anonymous memory), and the plan's chunk states count with the activations. Not collected by pytest.
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
import json, sys, threading, time
sys.path.insert(0, {root!r})

def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)

peak = [0]
def sample():  # anonymous memory only: the pages of torch's shared libraries a step first touches are not data
    while True:
        peak[0] = max(peak[0], vm("RssAnon"))
        time.sleep(0.001)

import torch
torch.set_num_threads(2)
import run
from opt66b.runs.loading import load
argv = json.loads(sys.argv[1])
if argv[0] == "baseline":  # ["baseline"] or ["baseline", checkpoint dir] (streamed from its files)
    # the same host budget as the measured runs: its bounded allocator is part of the baseline too
    kw = dict(model=argv[1], offload="mmap") if len(argv) > 1 else dict(random_weights={size!r}, max_memory="cpu=64GiB")
    model = load(device="cpu", log=lambda m: None, **kw)[0]
    if len(argv) > 1:  # the two stream buffers count with the weights (as the plan places them): fill them
        with torch.no_grad():
            model(torch.tensor([[2, 5]]))
    print(json.dumps({{"rss": vm("VmRSS"), "anon": vm("RssAnon")}}))
    sys.exit(0)
import opt66b.runs.loading
real_load_from = opt66b.runs.loading.load_from
def load_then_measure(*a, **k):  # the loader's own transient peak (random init, checks) is not the step's
    out = real_load_from(*a, **k)
    peak[0] = 0
    return out
opt66b.runs.loading.load_from = load_then_measure  # every load goes through it
threading.Thread(target=sample, daemon=True).start()
code = run.main(argv)
print(json.dumps({{"code": code, "hwm": vm("VmHWM"), "anon_peak": peak[0]}}))
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
    ap.add_argument("--tasks", nargs="+", default=["hellaswag"],
                    help="short (copa) and long (hellaswag, record) tasks; one case per task")
    ap.add_argument("--data", default=None, help="data directory (default: the bundled samples)")
    ap.add_argument("--limits", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--steps", nargs="+", default=["importance ffn", "eval"])
    ap.add_argument("--oracle-memory", default="0.25", help="GiB for the FFN oracle's records (fixed across limits)")
    ap.add_argument("--offload", choices=["none", "mmap"], default="none",
                    help="mmap: stream every layer from a saved checkpoint (layer order), as --offload mmap runs")
    ap.add_argument("--batch-tokens", default="512",
                    help="scoring batch (default 512: full batches at every limit, so a growth is the data's, "
                         "not a batch that fills up; at 4096 the eval itself grows 3x from 10 to 40 docs)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # a host budget: the run then bounds its host memory (opt66b/host_memory.py), which is what the plan prices
        model_args = ["--random-weights", args.size, "--max-memory", "cpu=64GiB"]
        if args.offload == "mmap":
            ckpt = Path(tmp) / "ckpt"
            save = ("import sys; sys.path.insert(0, {root!r}); from opt66b.runs.loading import load; "
                    "from opt66b import save_checkpoint; from opt66b.runs.loading import TINY_MODEL_DIR; import shutil; "
                    "m = load(random_weights={size!r}, device='cpu', log=lambda s: None)[0]; "
                    "save_checkpoint(m, {ckpt!r}); "
                    "[shutil.copy(TINY_MODEL_DIR / n, {ckpt!r}) for n in ('vocab.json', 'merges.txt', 'tokenizer_config.json') "
                    "if (TINY_MODEL_DIR / n).is_file()]")
            subprocess.run([sys.executable, "-c", save.format(root=str(ROOT), size=args.size, ckpt=str(ckpt))],
                           check=True, cwd=ROOT)
            model_args = ["--model", str(ckpt), "--offload", "mmap", "--max-memory", "cpu=8GiB"]
        base = child(args.size, ["baseline", str(ckpt)] if args.offload == "mmap" else ["baseline"])
        print(f"baseline (python + torch + {args.size} random weights{', streamed' if args.offload == 'mmap' else ''}):"
              f" {base['rss'] / MIB:.0f} MiB resident, {base['anon'] / MIB:.0f} MiB of it anonymous")
        for step, task, limit in [(s, t, n) for s in args.steps for t in args.tasks for n in args.limits]:
            docs = ["--n-docs" if step == "importance heads" else "--limit", str(limit)]
            argv = [*step.split(), *model_args, "--device", "cpu", "--tasks", task,
                    "--shots", "1", *docs, "--batch-tokens", args.batch_tokens]
            argv += ["--data", args.data] if args.data else []
            if step == "importance heads":
                argv.remove("--batch-tokens"), argv.remove(args.batch_tokens)
            if step == "importance ffn":
                argv += ["--oracle-memory", args.oracle_memory]
            plan_path = Path(tmp) / "plan.json"
            child(args.size, [*argv, "--plan", "--throughput", "1", "--plan-json", str(plan_path)])
            plan = json.loads(plan_path.read_text())
            weights = sum(plan["weights_bytes"].values())
            predicted = plan["total"]["peak_bytes"].get("cpu", 0) - weights + plan["total"]["host_bytes"]
            got = child(args.size, [*argv, "--out", str(Path(tmp) / f"{step.replace(' ', '-')}-{task}-{limit}")])
            measured = got["anon_peak"] - base["anon"]
            rows.append((step, task, limit, predicted, measured))
            print(f"{step:<16} {task:<10} docs {limit:>4}: predicted {predicted / MIB:8.0f} MiB, measured {measured / MIB:8.0f} "
                  f"MiB, ratio {predicted / max(measured, 1):.2f}", flush=True)
    for step, task in [(s, t) for s in args.steps for t in args.tasks]:
        mine = [r for r in rows if r[:2] == (step, task)]
        if len(mine) > 1:
            print(f"{step} {task}: measured growth from {mine[0][2]} to {mine[-1][2]} docs: "
                  f"{mine[-1][4] / max(mine[0][4], 1):.2f}x")


if __name__ == "__main__":
    main()
