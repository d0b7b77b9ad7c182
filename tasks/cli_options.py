"""The task options shared by every sub-command that evaluates or reads tasks: --data, --tasks, --shots,
--limit, --batch-tokens, --paper-quirks (the rest of the grammar: opt66b/cli_options.py).

Same defaults everywhere: --data is the bundled tasks/samples, --shots 0 1 5 (the paper's shot counts).
Only argparse here, so `run.py --help` imports no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
DEFAULT_SHOTS = [0, 1, 5]


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=SAMPLES_DIR, metavar="DIR",
                        help="data directory, <data>/<task>/<file as released> (default: the bundled tasks/samples)")


def add_task_args(parser: argparse.ArgumentParser, tasks_required: bool = True, limit: bool = True,
                  limit_help: str = "evaluate only the first N eval docs after the seeded shuffle (default: all)") -> None:
    """--data, --tasks, --shots (default 0 1 5), --paper-quirks and, with `limit`, --limit and --batch-tokens."""
    add_data_arg(parser)
    parser.add_argument("--tasks", nargs="+", required=tasks_required, default=None, metavar="TASK",
                        help="task names, e.g. copa boolq (see `run.py data check`)"
                             + ("" if tasks_required else "; default: all 16 that have data in --data"))
    parser.add_argument("--shots", type=int, nargs="+", default=list(DEFAULT_SHOTS), metavar="K",
                        help=f"few-shot counts (default: {' '.join(map(str, DEFAULT_SHOTS))})")
    if limit:
        parser.add_argument("--limit", type=int, default=None, metavar="N", help=limit_help)
        parser.add_argument("--batch-tokens", type=int, default=4096, metavar="N",
                            help="token budget per scoring batch (default: 4096)")
    parser.add_argument("--paper-quirks", action="store_true",
                        help="follow the paper's lm-eval fork where it differs (MC targets without the leading "
                             "space, WSC positives only in importance data, MathQA demo targets); off by default")
