#!/usr/bin/env python3
"""Model loads of `run.py all`: the study on one loaded model vs the same steps as separate sub-commands.

    python tests/benchmarks/bench_all_loads.py                  # random opt-125m-shaped checkpoint on disk
    python tests/benchmarks/bench_all_loads.py --size opt-350m --tasks copa rte

Writes a random checkpoint of an official OPT shape (fp16 safetensors + the embedded tokenizer) to
a temp dir, then in this process:
  new: `run.py all` with a reduced setting (one model load for every step);
  old: every line of the new run's OUT/commands.txt replayed as its own sub-command (run.main per
       line, a fresh --out), which is how `all` ran before: one load per model-using step.
Every call of opt66b.runs.loading.load_from (every load goes through it) is counted and timed. Prints loads, total load seconds and total
wall seconds of each path and their ratios, and checks that both paths wrote the same numbers
(tests/compare_runs.py). The shards were just written, so reads mostly come from the page cache:
on a cold disk every extra load of a big checkpoint costs far more. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def write_checkpoint(size: str, out: Path) -> Path:
    import torch

    from opt66b import config_for_size, save_checkpoint
    from opt66b.runs.loading import TINY_MODEL_DIR, build_random_model

    cfg = config_for_size(size)
    model = build_random_model(cfg, torch.float16, lambda name: torch.device("cpu"), seed=0)
    save_checkpoint(model, out)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(TINY_MODEL_DIR / name, out / name)
    return out


class LoadMeter:
    """Wraps opt66b.runs.loading.load_from: counts calls and sums their wall time."""

    def __init__(self) -> None:
        import opt66b.runs.loading as runtime

        self.runtime, self.real = runtime, runtime.load_from
        self.count, self.seconds = 0, 0.0

    def __enter__(self) -> "LoadMeter":
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self.real(*args, **kwargs)
            finally:
                self.count += 1
                self.seconds += time.perf_counter() - t0
        self.runtime.load_from = timed
        return self

    def __exit__(self, *exc) -> None:
        self.runtime.load_from = self.real


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="opt-125m", help="official OPT shape of the random checkpoint (default opt-125m)")
    p.add_argument("--tasks", nargs="+", default=["copa"], help="tasks (default: copa)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args()

    import torch

    import run
    from compare_runs import compare

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-all-loads-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        ckpt = write_checkpoint(args.size, tmp / "ckpt")
        gib = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 2**30
        print(f"checkpoint: random {args.size}, {gib:.2f} GiB fp16 safetensors, written in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        reduced = ["--tasks", *args.tasks, "--shots", "0", "--limit", "2", "--n-docs", "2", "--seeds", "2"]
        new_out = tmp / "new"
        with LoadMeter() as new:
            t0 = time.perf_counter()
            assert run.main(["all", "--model", str(ckpt), *reduced, "--out", str(new_out)]) == 0
            new_wall = time.perf_counter() - t0
        old_out = tmp / "old"
        lines = (new_out / "commands.txt").read_text().splitlines()
        with LoadMeter() as old:
            t0 = time.perf_counter()
            for line in lines:
                argv = shlex.split(line)[2:]  # drop "python run.py"
                argv = [a.replace(str(new_out), str(old_out)) for a in argv]
                assert run.main(argv) == 0, line
            old_wall = time.perf_counter() - t0
        rep = compare(new_out, old_out, ignore_dirs={"figures"})
        same = not rep["number_diffs"] and not rep["only_in_b"]
        print(f"\n{'path':<34}{'loads':>6}{'load s':>9}{'wall s':>9}")
        print(f"{'new: all, one load':<34}{new.count:>6}{new.seconds:>9.2f}{new_wall:>9.1f}")
        print(f"{'old: commands.txt replayed':<34}{old.count:>6}{old.seconds:>9.2f}{old_wall:>9.1f}")
        print(f"ratio old/new: loads {old.count / max(new.count, 1):.0f}x, load time "
              f"{old.seconds / max(new.seconds, 1e-9):.1f}x, wall {old_wall / new_wall:.2f}x "
              f"({len(lines)} steps)")
        print(f"results of both paths identical: {same} ({rep['json_files']} JSON files, {rep['tensors']} tensors "
              f"compared; only in the new run: {len(rep['only_in_a'])} files (report, figures))")
        if not same:
            print(rep["number_diffs"], rep["only_in_b"])
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
