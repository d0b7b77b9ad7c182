"""Task sub-commands of run.py: `data` (tasks/data_cli.py) and `eval` (tasks/eval_cli.py)."""

from __future__ import annotations

import argparse

from .data_cli import register_data
from .eval_cli import register_eval


def register(sub: argparse._SubParsersAction) -> None:
    register_data(sub)
    register_eval(sub)
