"""`run.py all` (the whole study in order) and `run.py report` (report.md and figures from a run)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from opt66b.cli_options import add_model_args, add_out_arg, add_plan_args, example
    from tasks.cli_options import add_task_args

    p = sub.add_parser(
        "all", help="the whole study in one command (defaults: the embedded tiny OPT and the bundled samples)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluation, head importance, aggregate ranking, FFN oracle, head / FFN / grid pruning, "
                    "cross-task transfer, Spearman matrices, prefix matching, copying, capacity retained, the "
                    "synthetic copy task, then report.md. Every step is a run.py sub-command (listed in "
                    "OUT/commands.txt) and resumes on rerun.",
        epilog=example("python run.py all --out runs/tiny                # tiny OPT + bundled samples, < 5 min on 2 cores",
                       "python run.py all --model ~/ckpt/opt-1.3b --data ~/data --tasks copa rte wic --out runs/1.3b",
                       "python run.py all --random-weights opt-66b --device cuda:0 --data ~/data --plan   # cost first"))
    add_model_args(p)
    add_task_args(p, tasks_required=False, limit=False)
    p.add_argument("--limit", type=int, default=None,
                   help="eval docs per task after the seed-42 shuffle (default: 8 with the tiny defaults, else all)")
    p.add_argument("--n-docs", type=int, default=None,
                   help="importance docs per task (default: 16 with the tiny defaults, else 2500 as the paper)")
    p.add_argument("--seeds", type=int, default=None,
                   help="induction seeds (default: 8 with the tiny defaults, else 100 as the paper)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="seed of every randomised step (default: each step's own: 42 for eval docs and demos as "
                        "lm-eval, 1234 for importance demos as the paper's code, 0 for induction sequences)")
    p.add_argument("--batch-tokens", type=int, default=None, metavar="N",
                   help="token budget per scoring batch of every evaluating step (default: 4096); lower it when "
                        "--plan shows the activations do not fit")
    add_out_arg(p, "run directory")
    add_plan_args(p, "all")
    p.set_defaults(func=_all)

    r = sub.add_parser("report", help="write report.md and the figures of a finished (or partial) run",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=example("python run.py report --out runs/tiny"))
    add_out_arg(r, "run directory written by `run.py all`; report.md and figures/ are written there")
    r.add_argument("--run", dest="out", type=Path, help=argparse.SUPPRESS)  # the old spelling of --out
    r.set_defaults(func=_report)


def all_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill `all`'s size options: small with the tiny defaults (the embedded OPT on the bundled
    samples, a few dozen records per split), the paper's otherwise. Used by the run and by --plan."""
    from tasks.cli_options import SAMPLES_DIR

    tiny = args.model is None and Path(args.data).resolve() == SAMPLES_DIR and getattr(args, "random_weights", None) is None
    # The tiny defaults keep `all` under 5 minutes on 2 CPU cores (measured: 4 min 10 s); ReCoRD's long
    # candidate continuations are half of every evaluation's cost there.
    defaults = {"limit": 8, "n_docs": 16, "seeds": 8} if tiny else {"limit": None, "n_docs": 2500, "seeds": 100}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("limit", "n_docs", "seeds", "batch_tokens"):
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    if getattr(args, "seed", None) is not None and args.seed < 0:  # checked before any step runs
        raise ValueError(f"--seed must be >= 0 (it seeds numpy's default_rng in the induction steps), got {args.seed}")
    return args


def _all(args: argparse.Namespace) -> int:
    from .pipeline import run_all

    return run_all(all_defaults(args))


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.out))
    return 0
