"""`run.py all` (the whole study in order) and `run.py report` (report.md and figures from a run)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_model_args, add_out_arg, add_plan_args, example
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
                       "python run.py all --random-weights opt-66b --device cuda:0 --gpu h100-80gb --data ~/data --plan   # cost, time"))
    add_model_args(p)
    add_task_args(p, tasks_required=False, limit=False)
    p.add_argument("--limit", type=int, default=None,
                   help="eval docs per task after the seed-42 shuffle (default: 8 with the tiny defaults, else all)")
    p.add_argument("--n-docs", type=int, default=None,
                   help="importance docs per task (default: 16 with the tiny defaults, else 2500 as the paper)")
    p.add_argument("--seeds", type=int, default=None,
                   help="induction seeds (default: 8 with the tiny defaults, else 100 as the paper)")
    p.add_argument("--eval-seed", type=int, default=None, metavar="N",
                   help="seed of the eval docs' shuffle and few-shot demos in every evaluating step (eval, FFN oracle, "
                        "sweeps, transfer; default 42, lm-eval's)")
    p.add_argument("--importance-seed", type=int, default=None, metavar="N",
                   help="seed of head importance's few-shot demos (default 1234, the paper's released code)")
    p.add_argument("--sequence-seed", type=int, default=None, metavar="N",
                   help="first seed of the random token sequences of prefix matching, copying and the copy task "
                        "(default 0, the paper's)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="all three seeds at once (--eval-seed, --importance-seed, --sequence-seed; a role-named "
                        "one given beside it wins)")
    p.add_argument("--batch-tokens", type=int, default=None, metavar="N",
                   help="token budget per scoring batch of every evaluating step (default: with --max-memory "
                        "budgets on accelerators, the largest batch whose activations fit beside the weights, "
                        "said on stderr; else 4096)")
    add_out_arg(p, "run directory")
    add_plan_args(p, "all")
    p.set_defaults(func=_all)

    r = sub.add_parser("report", help="write report.md and the figures of a finished (or partial) run",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=example("python run.py report --out runs/tiny"))
    add_out_arg(r, "run directory written by `run.py all`; report.md and figures/ are written there")
    r.set_defaults(func=_report, reads_out=True)  # a run directory that must exist: the lock does not create it


def _all(args: argparse.Namespace) -> int:
    from .pipeline import run_all
    from .study import resolve

    return run_all(resolve(args))


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.out))
    return 0
