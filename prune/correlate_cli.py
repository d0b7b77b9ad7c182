"""The `correlate` sub-command of run.py (registered by prune/cli.py): rank correlations of head importances."""

from __future__ import annotations

import argparse
from pathlib import Path


def register_correlate(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_out_arg, example

    p = sub.add_parser(
        "correlate", help="Spearman correlations between head-importance rankings (tasks, aggregate, shots)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read IMPORTANCE/shots-K/{task,aggregate}.safetensors (from `run.py importance heads`) "
                    "and write OUT/correlations.json: per shot the task x task true Spearman rho and p "
                    "(average ranks for ties, t-test with n-2 df), the paper's argsort-Pearson variant "
                    "(labelled paper_argsort_pearson), the top-30% head overlap, every task against the "
                    "aggregate, and every task across shots (0v1, 0v5, 1v5) with mean and variance.",
        epilog=example("python run.py correlate --importance runs/tiny/importance --out runs/tiny/correlate"))
    p.add_argument("--importance", type=Path, required=True, help="directory with shots-K/*.safetensors")
    add_out_arg(p, "output directory (correlations.json is written there)")
    p.add_argument("--shots", type=int, nargs="+", default=None, help="shot counts to use (default: all found)")
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to use (default: all found)")
    p.add_argument("--top-fraction", type=float, default=0.3,
                   help="fraction of most important heads for the overlap (default: 0.3)")
    p.add_argument("--compare-importance", type=Path, default=None, metavar="DIR",
                   help="importance of some tasks under the other protocol's targets (`run.py all` writes "
                        "OUT/importance-paper or -corrected): adds how far each ranking and the aggregate move")
    p.set_defaults(func=_correlate)


def _correlate(args: argparse.Namespace) -> int:
    from .settings import CorrelateSettings

    return CorrelateSettings.handle(args)


def run_correlate_step(s) -> dict:
    """The correlate step of CorrelateSettings `s` (no model)."""
    from .correlate import run_correlate

    if not 0 < s.top_fraction <= 1:
        raise ValueError(f"--top-fraction must be in (0, 1], got {s.top_fraction}")
    run_correlate(s.importance, s.out, shots=list(s.shots) if s.shots else None,
                  tasks=list(s.tasks) if s.tasks else None, top_fraction=s.top_fraction,
                  compare_importance=s.compare_importance)
    return {"code": 0, "work": None}
