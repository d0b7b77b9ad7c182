"""Sub-commands of the study package: `copytask` (the tiny organism's check; docs/tiny-opt.md).

Mirrors the pattern of opt66b/runs/commands.py: `register(sub)` adds the parsers, heavy imports happen in the
handlers so `run.py --help` stays instant.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_model_args, add_out_arg, add_plan_args, add_seed_arg, example

    p = sub.add_parser(
        "copytask", help="synthetic in-context copying: accuracy with induction heads vs control heads pruned",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Repeated random sequences (BOS + seq + seq, distinct tokens from the merge-rank pool): "
                    "accuracy of predicting the second repeat with all heads, with the induction heads "
                    "(prefix matching >= threshold) pruned, and with as many least-important heads pruned "
                    "(copying-task gradient importance; a second control uses the lowest prefix matching).",
        epilog=example("python run.py copytask --seeds 16 --out runs/tiny/copytask   # the embedded tiny OPT"))
    add_model_args(p)
    p.add_argument("--seeds", type=int, default=16,
                   help="sequences (seeds SEED..SEED+N-1) for accuracy and prefix matching (default: 16)")
    add_seed_arg(p, 0, "first seed: sequence i is drawn by numpy default_rng(SEED + i), as the induction study's")
    p.add_argument("--length", type=int, default=25, help="random tokens per repeat (prefix matching: + 2*seed)")
    p.add_argument("--threshold", type=float, default=0.5, help="prefix-matching score that makes an induction head")
    add_out_arg(p, "output directory (copytask.json is written there)")
    add_plan_args(p, "copytask")
    p.set_defaults(func=_copytask)


def _copytask(args: argparse.Namespace, loaded=None) -> int:
    from .settings import CopyTaskSettings

    return CopyTaskSettings.handle(args, loaded)


def check_copytask(s) -> None:
    if s.seeds < 1 or s.length < 2 or s.seed < 0:
        raise ValueError(f"--seeds must be >= 1, --length >= 2 and --seed >= 0, got {s.seeds}, {s.length} "
                         f"and {s.seed}")


def run_copytask_step(s, loaded) -> dict:
    """The synthetic copy task of CopyTaskSettings `s` on a loaded model."""
    import sys

    from .copy_task import run_copy_task

    check_copytask(s)
    model, tokenizer, info = loaded
    out = run_copy_task(model, tokenizer, info, s.out, seeds=s.seeds, length=s.length, threshold=s.threshold,
                        first_seed=s.seed, recompute=s.recompute)
    res = out["result"]
    print(f"copy accuracy: full {res['accuracy_full']:.3f}, induction heads {res['induction_heads']} "
          f"pruned {res['accuracy_induction_pruned']:.3f}, control {res['control_heads']} pruned "
          f"{res['accuracy_control_pruned']:.3f}; wrote {s.out / 'copytask.json'}", file=sys.stderr)
    return {"code": 0, "work": out["work"]}
