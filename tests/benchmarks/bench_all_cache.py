#!/usr/bin/env python3
"""The evaluation cache of `run.py all`: the study with the cache its steps share vs without it.

    python tests/benchmarks/bench_all_cache.py                          # tiny OPT, 4 tasks, 8 docs, ~7 min
    python tests/benchmarks/bench_all_cache.py --tasks copa rte --limit 4 --shots 0   # a quick look

Runs `run.py all` twice in this process on the embedded tiny OPT and the bundled samples, each into a
fresh --out: once as shipped (one tasks.evaluation.EvaluationCache shared by every step, so a cell two
sweeps contain is evaluated once) and once with no cache shared between steps (each step keeps its
own, so it still evaluates identical masks once, as when the steps run alone from commands.txt). Prints wall seconds and model forward passes (OUT/work.json) of each, their ratios, and
checks that both runs wrote the same numbers (tests/compare_runs.py). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def run_all(argv: list[str], out: Path) -> tuple[float, dict[str, dict[str, int]]]:
    import run

    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        code = run.main([*argv, "--out", str(out)])
    if code != 0:
        raise SystemExit(f"run.py all failed with exit {code} into {out}")
    return time.perf_counter() - t0, json.loads((out / "work.json").read_text())


@contextlib.contextmanager
def no_shared_cache():
    """`all` hands its steps no cache: each step (and each partner sweep of the transfer) makes its
    own, as a step run alone from commands.txt does. run_all and run_transfer_study import
    EvaluationCache from tasks.evaluate when called, so patching the name there is enough."""
    import tasks.evaluate as evaluate

    real = evaluate.EvaluationCache
    evaluate.EvaluationCache = lambda model: None
    try:
        yield
    finally:
        evaluate.EvaluationCache = real


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["copa", "rte", "record", "piqa"])
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 1, 5])
    args = ap.parse_args()
    from compare_runs import compare

    argv = ["all", "--tasks", *args.tasks, "--shots", *map(str, args.shots), "--limit", str(args.limit),
            "--n-docs", "4", "--seeds", "2", "--threads", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        shared_s, shared = run_all(argv, Path(tmp) / "shared")
        with no_shared_cache():
            alone_s, alone = run_all(argv, Path(tmp) / "alone")
        report = compare(Path(tmp) / "alone", Path(tmp) / "shared")
    fwd = lambda work: sum(step["forward_passes"] for step in work.values())  # noqa: E731
    print(f"run.py {' '.join(argv)}")
    print(f"{'step':45} {'fwd without':>12} {'fwd shared':>11}")
    for step in alone:
        print(f"{step:45} {alone[step]['forward_passes']:12d} {shared.get(step, {}).get('forward_passes', 0):11d}")
    print(f"forward passes: without {fwd(alone)}, shared {fwd(shared)} ({fwd(shared) / fwd(alone):.2f}x)")
    print(f"wall seconds:   without {alone_s:.1f}, shared {shared_s:.1f} ({shared_s / alone_s:.2f}x)")
    diffs = {f: d for f, d in report["number_diffs"].items() if f != "work.json"}
    print(f"same numbers: {not diffs and not report['only_in_a'] and not report['only_in_b']} "
          f"({report['json_files']} JSON files, {report['tensors']} tensors compared; work.json differs by design)")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
