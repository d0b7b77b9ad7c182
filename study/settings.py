"""Typed settings of the study's own model step (opt66b/runs/settings.py): the synthetic copy task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opt66b.runs.settings import option
from tasks.settings import ModelStep


@dataclass(frozen=True, kw_only=True)
class CopyTaskSettings(ModelStep):
    """`run.py copytask`: copying accuracy with the induction heads, or as many control heads, pruned."""

    COMMAND = ("copytask",)
    PLAN_STEP = "copytask"
    seeds: int = option(16)
    seed: int = option(0)
    length: int = option(25)
    threshold: float = option(0.5)
    out: Path = option(None)

    def check(self) -> None:
        from .cli import check_copytask

        check_copytask(self)

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, Any]:
        from .cli import run_copytask_step

        return run_copytask_step(self, loaded)
