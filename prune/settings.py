"""Typed settings of the pruning study's steps (opt66b/runs/settings.py): head importance, the FFN oracle,
the sweeps (heads, FFNs, grid, transfer) and the correlations. Each `execute` calls the typed step
function in prune/cli.py (or correlate_cli.py) that the sub-command's handler calls too."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opt66b.runs.settings import StepSettings, option
from tasks.settings import TaskStep


@dataclass(frozen=True, kw_only=True)
class HeadImportanceSettings(TaskStep):
    """`run.py importance heads`: gradient head importance per task and shot (prune/experiments.py)."""

    COMMAND = ("importance", "heads")
    PLAN_STEP = "importance heads"
    n_docs: int = option(2500)
    seed: int = option(1234)  # the paper's few-shot demo sampler
    max_length: int | None = option(None)
    normalize_per_layer: bool = option(False)
    seen_tasks: tuple[str, ...] | None = option(None)
    update_aggregate: bool = option(False)
    backward: str = option("auto")
    max_memory: str | None = field(default=None)  # a model option (rendered with them): the layer-order chunk budget

    def check(self) -> None:
        from .cli import check_head_importance

        check_head_importance(self)

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, Any]:
        from .cli import run_head_importance_step

        return run_head_importance_step(self, loaded)


@dataclass(frozen=True, kw_only=True)
class FFNOracleSettings(TaskStep):
    """`run.py importance ffn`: every FFN knocked out alone, chunk by chunk (prune/sweeps.py)."""

    COMMAND = ("importance", "ffn")
    PLAN_STEP = "importance ffn"
    limit: int | None = option(None)
    batch_tokens: int = option(4096)
    seed: int = option(42)
    naive: bool = option(False)
    oracle_memory: float | None = option(None)
    max_memory: str | None = field(default=None)  # a model option (rendered with them): the default oracle budget

    def check(self) -> None:
        from .cli import check_ffn_oracle

        check_ffn_oracle(self)

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, Any]:
        from .cli import run_ffn_oracle_step

        return run_ffn_oracle_step(self, loaded)


@dataclass(frozen=True, kw_only=True)
class PruneSettings(TaskStep):
    """`run.py prune SWEEP`: heads, ffn or grid sweeps from a ranking, or the cross-task transfer."""

    COMMAND = ("prune",)
    PLAN_STEP = "prune"
    sweep: str = option(positional=True)
    limit: int | None = option(None)
    batch_tokens: int = option(4096)
    seed: int = option(42)
    ranking: str = option("own")
    importance: Path | None = option(None)
    ffn_importance: Path | None = option(None)
    head_percents: tuple[float, ...] | None = option(None)
    ffn_percents: tuple[float, ...] | None = option(None)
    correlations: Path | None = option(None)
    transfer_tasks: tuple[str, ...] = option(("copa", "winogrande", "record"))
    partners: tuple[str, ...] | None = option(None)
    max_memory: str | None = field(default=None)  # a model option (rendered with them): the layer-order chunk budget

    def check(self) -> None:
        from .cli import check_prune

        check_prune(self)

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, Any]:
        from .cli import run_prune_step

        return run_prune_step(self, loaded, cache)


@dataclass(frozen=True, kw_only=True)
class CorrelateSettings(StepSettings):
    """`run.py correlate`: Spearman matrices of the head-importance rankings (prune/correlate.py)."""

    COMMAND = ("correlate",)
    USES_MODEL = False
    importance: Path = option(None)
    out: Path = option(None)
    shots: tuple[int, ...] | None = option(None)
    tasks: tuple[str, ...] | None = option(None)
    top_fraction: float = option(0.3)
    compare_importance: Path | None = option(None)

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, Any]:
        from .correlate_cli import run_correlate_step

        return run_correlate_step(self)
