"""Typed settings of the task steps (opt66b/runs/settings.py): `data check` and `eval`, plus the model-step
base every experiment's settings build on (the data and task options shared by eval, importance and
the sweeps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opt66b.runs.settings import StepSettings, option

from .cli_options import DEFAULT_SHOTS, SAMPLES_DIR


@dataclass(frozen=True, kw_only=True)
class ModelStep(StepSettings):
    """What every step that runs the model takes besides the model options: --recompute (replace units
    made under other settings) and --threads (CPU threads; applied once per process)."""

    recompute: bool = option(False)
    threads: int | None = option(None)


@dataclass(frozen=True, kw_only=True)
class TaskStep(ModelStep):
    """The data and task options of eval, importance and the sweeps."""

    data: Path = option(SAMPLES_DIR)
    tasks: tuple[str, ...] = option(None)
    shots: tuple[int, ...] = option(tuple(DEFAULT_SHOTS))
    protocol: str = option("corrected")
    out: Path = option(None)

    @property
    def paper_quirks(self) -> bool:
        """--protocol paper: the paper's targets and choices (docs/protocol.md)."""
        return self.protocol == "paper"

    def namespace(self, **extra: Any):
        return super().namespace(**extra, paper_quirks=self.paper_quirks)

    def check_tasks(self, limit: int | None = None) -> None:
        from .registry import check_task_args

        check_task_args(list(self.tasks or ()), list(self.shots), limit)
        if self.data is None or not Path(self.data).is_dir():
            raise FileNotFoundError(f"--data {self.data}: data directory not found")


@dataclass(frozen=True, kw_only=True)
class DataCheckSettings(StepSettings):
    """`run.py data check`: which files each task reads, their sizes and sha256 (tasks/data_cli.py)."""

    COMMAND = ("data", "check")
    USES_MODEL = False
    data: Path = option(SAMPLES_DIR)
    tasks: tuple[str, ...] | None = option(None)
    json: Path | None = option(None)

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, Any]:
        from .data_cli import run_data_check

        return run_data_check(self)


@dataclass(frozen=True, kw_only=True)
class EvalSettings(TaskStep):
    """`run.py eval`: every task at every shot count, lm-eval's layout (tasks/evaluate.py run_evaluation)."""

    COMMAND = ("eval",)
    PLAN_STEP = "eval"
    limit: int | None = option(None)
    batch_tokens: int = option(4096)
    seed: int = option(42)
    head_mask: Path | None = option(None)
    ffn_mask: Path | None = option(None)
    soft_masks: bool = option(False)
    max_length: int | None = option(None)
    max_memory: str | None = field(default=None)  # a model option (rendered with them): the layer-order chunk budget

    def check(self) -> None:
        from .eval_cli import check_eval

        check_eval(self)

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, Any]:
        from .eval_cli import run_eval_step

        return run_eval_step(self, loaded, cache)
