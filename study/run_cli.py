"""`run.py all` (the whole study in order) and `run.py report` (report.md and figures from a run)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from opt66b.runtime import add_model_args

    p = sub.add_parser(
        "all", help="the whole study in one command (defaults: the embedded tiny OPT and the bundled samples)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluation, head importance, aggregate ranking, FFN oracle, head / FFN / grid pruning, "
                    "cross-task transfer, Spearman matrices, prefix matching, copying, capacity retained, the "
                    "synthetic copy task, then report.md. Every step is a run.py sub-command (listed in "
                    "OUT/commands.txt) and resumes on rerun.",
        epilog="examples:\n"
               "  python run.py all --out runs/tiny                         # tiny OPT + bundled samples, < 5 min on 2 cores\n"
               "  python run.py all --model ~/ckpt/opt-1.3b --data ~/data --tasks copa rte wic \\\n"
               "      --shots 0 1 5 --n-docs 2500 --seeds 100 --out runs/1.3b")
    add_model_args(p)
    p.add_argument("--data", type=Path, default=None, help="data directory (default: the bundled tasks/samples)")
    p.add_argument("--tasks", nargs="+", default=None,
                   help="tasks (default: all 16 that have data in --data; the others are listed as skipped)")
    p.add_argument("--shots", nargs="+", type=int, default=[0, 1, 5], help="shot counts (default: 0 1 5)")
    p.add_argument("--limit", type=int, default=None,
                   help="eval docs per task after the seed-42 shuffle (default: 12 with the tiny defaults, else all)")
    p.add_argument("--n-docs", type=int, default=None,
                   help="importance docs per task (default: 16 with the tiny defaults, else 2500 as the paper)")
    p.add_argument("--seeds", type=int, default=None,
                   help="induction seeds (default: 8 with the tiny defaults, else 100 as the paper)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.set_defaults(func=_all)

    r = sub.add_parser("report", help="write report.md and the figures of a finished (or partial) run",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  python run.py report --run runs/tiny")
    r.add_argument("--run", type=Path, required=True, help="run directory written by `run.py all`")
    r.set_defaults(func=_report)


def _all(args: argparse.Namespace) -> int:
    from .pipeline import SAMPLES_DIR, run_all

    tiny = args.model is None and args.data is None and getattr(args, "random_weights", None) is None
    if args.data is None:
        args.data = SAMPLES_DIR
    # The bundled samples hold a few dozen records per split, so the tiny defaults are small.
    defaults = {"limit": 12, "n_docs": 16, "seeds": 8} if tiny else {"limit": None, "n_docs": 2500, "seeds": 100}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("limit", "n_docs", "seeds"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    return run_all(args)


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.run))
    return 0
