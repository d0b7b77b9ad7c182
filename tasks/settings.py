"""What every step that evaluates or ranks tasks takes (eval, head importance, the FFN oracle, the sweeps):
the data, the tasks and shot counts, the protocol, the output directory, and the memory budget its
bounded-memory paths size their chunks by. Each step's own settings class builds on `TaskStep` in the
module of its experiment (tasks/evaluate.py, prune/importance.py, prune/oracle.py, prune/sweeps.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opt66b.placement import Budgets
from opt66b.runs.settings import ModelStep, hidden, option

from .cli_options import DEFAULT_SHOTS, SAMPLES_DIR
from .protocol import CORRECTED, Protocol


def _budgets(text: Any) -> Budgets:
    return Budgets.parse(text, "--max-memory")


@dataclass(frozen=True, kw_only=True)
class TaskStep(ModelStep):
    """The data and task options of eval, importance and the sweeps (module docstring)."""

    data: Path = option(SAMPLES_DIR)
    tasks: tuple[str, ...] = option(None)
    shots: tuple[int, ...] = option(tuple(DEFAULT_SHOTS))
    protocol: Protocol = option(CORRECTED, parse=Protocol.named)
    out: Path = option(None)
    # a model option the step needs too: its default chunk budget (`chunk_budget`); rendered with the model flags
    max_memory: Budgets = hidden(Budgets(), parse=_budgets)

    def check_tasks(self, limit: int | None = None) -> None:
        from .registry import check_task_args

        check_task_args(list(self.tasks or ()), list(self.shots), limit)
        if self.data is None or not Path(self.data).is_dir():
            raise FileNotFoundError(f"--data {self.data}: data directory not found")

    def task_objects(self) -> dict[str, Any]:
        """{name: Task} of --tasks (each once, in order), reading --data under this protocol's prompts."""
        from .registry import get_task

        return {t: get_task(t, self.data, paper_quirks=self.protocol.paper_quirks) for t in dict.fromkeys(self.tasks)}

    def recorded(self, info: dict[str, Any], objects: dict[str, Any]) -> dict[str, Any]:
        """What every output of the step records beside its numbers: the model, the data by content, the
        tasks, shots and protocol."""
        from opt66b.runs.results import file_hashes

        files = [f for task in objects.values() for f in task.data_files()]
        return {"model": info, "data_sha256": file_hashes(files), "tasks": list(objects), "shots": list(self.shots),
                "paper_quirks": self.protocol.paper_quirks, "protocol": self.protocol.name}

    def chunk_budget(self, shape: Any, on_host: bool = False) -> int:
        """Bytes a chunk may hold: with layers streamed (shape.streams_to; opt66b.cost.ModelShape) the
        layer-order states on the compute device, else (or on_host) the recorded layer inputs on the host; a
        quarter of that device's --max-memory entry, the host's shared by the processes on the node
        (opt66b.placement.per_process), else 2 GiB (opt66b.layer_major.chunk_budget)."""
        from opt66b.layer_major import chunk_budget
        from opt66b.placement import per_process
        from opt66b.runs.distributed import local_world

        processes = shape.processes if shape.processes is not None else local_world()
        return chunk_budget(per_process(self.max_memory, processes), None if on_host else shape.streams_to)


@dataclass(frozen=True, kw_only=True)
class EvaluatingStep(TaskStep):
    """What every step that scores tasks' evaluation splits takes (eval, the FFN oracle, the sweeps): which
    docs (--limit after the --seed shuffle, whose demos the seed draws too) and the scoring batch."""

    limit: int | None = option(None)
    batch_tokens: int = option(4096)
    seed: int = option(42)

    def evaluation(self, model: Any, tokenizer: Any, task: Any, shots: int, **kwargs: Any) -> Any:
        """The tasks.evaluation.TaskEvaluation of `task` at `shots` under these settings (built once per
        (task, shot) and run under any masks)."""
        from .evaluation import TaskEvaluation

        return TaskEvaluation(model, tokenizer, task, shots, limit=self.limit, seed=self.seed,
                              batch_tokens=self.batch_tokens, **kwargs)

    def max_positions(self, cfg: Any) -> int:
        """Model inputs per request: --max-length where the step has it, else the model's positions."""
        return getattr(self, "max_length", None) or cfg.max_positions

    def evaluation_key(self, task: Any, shots: int, cfg: Any) -> tuple:
        """What fixes an evaluation's numbers on a given model besides its masks (TaskEvaluation.identity's
        parts): the task and its prompts, the docs, the batching. The plan dedupes evaluations by it."""
        return (task.NAME, str(self.data), getattr(task, "paper_quirks", False), shots, self.limit, self.seed,
                self.batch_tokens, self.max_positions(cfg))

    def evaluation_identity(self, task: Any, shots: int, cfg: Any) -> str:
        """tasks.evaluation.evaluation_identity of `task` at `shots`: its EvaluationCache key without masks."""
        from .evaluation import evaluation_identity

        return evaluation_identity(task, shots, self.limit, self.seed, self.batch_tokens, self.max_positions(cfg))

    def passes(self, task: Any, shots: int, cfg: Any, tokenizer: Any) -> Any:
        """opt66b.cost.Passes of the evaluation of `task` at `shots` under these settings."""
        from .evaluation import evaluation_passes

        return evaluation_passes(task, shots, self.limit, self.seed, self.max_positions(cfg), self.batch_tokens,
                                 tokenizer)

    def unit_store(self, info: dict[str, Any], **extra: Any) -> Any:
        """The fingerprinted store of this step's units (tasks.evaluation.evaluation_store)."""
        from .evaluation import evaluation_store

        return evaluation_store(info, limit=self.limit, seed=self.seed, paper_quirks=self.protocol.paper_quirks,
                                recompute=self.recompute, **extra)
