"""The task options shared by every sub-command that evaluates or reads tasks: --data, --tasks, --shots,
--limit, --batch-tokens, --protocol (the rest of the grammar: opt66b/runs/options.py).

Same defaults everywhere: --data is the bundled tasks/samples, --shots 0 1 5 (the paper's shot counts).
Only argparse here, so `run.py --help` imports no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


def is_samples(data: str | Path) -> bool:
    """True when `data` is the bundled samples (by any spelling of its path): cut short on purpose."""
    return Path(data).resolve() == SAMPLES_DIR
DEFAULT_SHOTS = [0, 1, 5]


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=SAMPLES_DIR, metavar="DIR",
                        help="data directory, <data>/<task>/<file as released> (default: the bundled tasks/samples)")


def add_task_args(parser: argparse.ArgumentParser, tasks_required: bool = True, limit: bool = True,
                  limit_help: str = "evaluate only the first N eval docs after the seeded shuffle (default: all)") -> None:
    """--data, --tasks, --shots (default 0 1 5), --protocol and, with `limit`, --limit and --batch-tokens."""
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
    add_protocol_arg(parser)


PROTOCOLS = ("corrected", "paper")  # tasks/protocol.py holds what each decides


def add_protocol_arg(parser: argparse.ArgumentParser) -> None:
    """--protocol corrected|paper (tasks/protocol.py)."""
    parser.add_argument("--protocol", choices=PROTOCOLS, default="corrected",
                        help="whose choices where the paper's released code departs from the paper's text or from "
                             "lm-eval: 'paper' = the released code (importance targets without the leading space for "
                             "ARC/OBQA/HellaSwag/PIQA/MathQA, WSC positives only, the last-layer denominator, MathQA "
                             "demos without the space, the published transfer partners); 'corrected' (default) = "
                             "lm-eval's targets, all WSC rows, one denominator for every layer")
