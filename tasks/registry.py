"""Task registry: an explicit dict from lm-eval's task name to its class (lm_eval/tasks/__init__.py v0.3),
and the study's extra task (the synthetic copy task), kept apart so "the 16 tasks" stays the paper's."""

from __future__ import annotations

from pathlib import Path

from .arc import ARCChallenge, ARCEasy
from .base import Task
from .glue import RTE
from .hellaswag import HellaSwag
from .lambada import LAMBADA
from .mathqa import MathQA
from .multirc import MultiRC
from .openbookqa import OpenBookQA
from .piqa import PiQA
from .record import ReCoRD
from .synthetic_copy import SyntheticCopy
from .superglue import BoolQ, CommitmentBank, Copa, SGWinogradSchemaChallenge, WordsInContext
from .winogrande import Winogrande

TASKS: dict[str, type[Task]] = {
    "boolq": BoolQ,
    "cb": CommitmentBank,
    "copa": Copa,
    "multirc": MultiRC,
    "record": ReCoRD,
    "rte": RTE,
    "wic": WordsInContext,
    "wsc": SGWinogradSchemaChallenge,
    "arc_easy": ARCEasy,
    "arc_challenge": ARCChallenge,
    "openbookqa": OpenBookQA,
    "hellaswag": HellaSwag,
    "piqa": PiQA,
    "winogrande": Winogrande,
    "mathqa": MathQA,
    "lambada": LAMBADA,
}
# Tasks the study runs beside the paper's 16, never part of the paper's aggregate or task means.
EXTRA_TASKS: dict[str, type[Task]] = {"synthetic_copy": SyntheticCopy}
ALL_TASKS = {**TASKS, **EXTRA_TASKS}

# The paper's split of its 16 tasks (Bansal et al. 2023 §4): the 14 "seen" tasks make the aggregate
# ranking and every cross-task statistic (task means, Spearman matrices, cross-shot numbers); the 2
# "unseen" ones are only tested with it. The synthetic copy task is neither.
PAPER_SEEN_TASKS = ("hellaswag", "piqa", "arc_easy", "arc_challenge", "openbookqa", "winogrande", "boolq", "cb",
                    "copa", "wic", "wsc", "multirc", "rte", "record")
PAPER_UNSEEN_TASKS = ("mathqa", "lambada")


def seen_in(tasks, seen=PAPER_SEEN_TASKS) -> list[str]:
    """The seen tasks among `tasks`, in the paper's order."""
    present = set(tasks)
    return [t for t in seen if t in present]


def paper_order(tasks) -> list[str]:
    """Tasks in the paper's order (seen, unseen), then the study's extra tasks, then any other."""
    known = [*PAPER_SEEN_TASKS, *PAPER_UNSEEN_TASKS, *EXTRA_TASKS]
    present = set(tasks)
    return [t for t in known if t in present] + sorted(present - set(known))


def get_task(name: str, data_dir: str | Path, paper_quirks: bool = False) -> Task:
    """The task `name` reading its files from data_dir/<task dir>/; KeyError listing valid names."""
    if name not in ALL_TASKS:
        raise KeyError(f"unknown task {name!r}; valid names: {', '.join(ALL_TASKS)}")
    return ALL_TASKS[name](data_dir, paper_quirks=paper_quirks)


def check_task_args(tasks: list[str], shots: list[int], limit: int | None = None) -> None:
    """Validate the --tasks / --shots / --limit options every task-running sub-command takes."""
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise KeyError(f"unknown task(s) {', '.join(unknown)}; valid names: {', '.join(ALL_TASKS)}")
    if any(k < 0 for k in shots):
        raise ValueError(f"--shots must be >= 0, got {shots}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
