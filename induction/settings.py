"""Typed settings of the induction-head steps (opt66b/runs/settings.py): prefix matching and copying scores,
and the capacity retained. Each `execute` calls the typed step function of induction/cli.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opt66b.runs.settings import StepSettings, option
from tasks.settings import ModelStep


@dataclass(frozen=True, kw_only=True)
class ScoreSettings(ModelStep):
    """What `run.py induction prefix` and `induction copying` share: per-head scores on repeated random
    sequences, one per seed (induction/experiments.py)."""

    KIND = ""  # prefix | copying
    seeds: int = option(100)
    first_seed: int = option(0, flag="--seed")
    variant: str = option("all")
    out: Path = option(None)
    exclude_ratio: float = option(0.04)
    start_length: int = option(25)
    length_step: int = option(2)
    top: int = option(20)

    @property
    def kind(self) -> str:
        return self.KIND

    def check(self) -> None:
        from .cli import check_scores

        check_scores(self)

    def plan_step(self) -> str:
        return f"induction {self.KIND}"

    def namespace(self, **extra: Any):
        return super().namespace(**extra, induction_command=self.KIND, kind=self.KIND)

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, Any]:
        from .cli import run_scores_step

        return run_scores_step(self, loaded)


@dataclass(frozen=True, kw_only=True)
class PrefixSettings(ScoreSettings):
    """`run.py induction prefix`: prefix-matching scores."""

    COMMAND = ("induction", "prefix")
    KIND = "prefix"


@dataclass(frozen=True, kw_only=True)
class CopyingSettings(ScoreSettings):
    """`run.py induction copying`: copying scores, `head_chunk` heads at a time in the paper's variant."""

    COMMAND = ("induction", "copying")
    KIND = "copying"
    head_chunk: int = option(8)


@dataclass(frozen=True, kw_only=True)
class CapacitySettings(StepSettings):
    """`run.py induction capacity`: the share of induction score kept as heads are pruned (no model)."""

    COMMAND = ("induction", "capacity")
    USES_MODEL = False
    scores: Path = option(None)
    importance: Path = option(None)
    out: Path = option(None)
    random_seeds: tuple[int, ...] = option((0,))

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, Any]:
        from .cli import run_capacity_step

        return run_capacity_step(self)
