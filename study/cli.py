"""Sub-commands of the study package: `copytask` (the tiny organism's check; docs/tiny-opt.md). Only the
grammar lives here (argparse, no torch); the step is study/copy_task.py's CopyTaskSettings."""

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
    p.set_defaults(step="study.copy_task:CopyTaskSettings")
