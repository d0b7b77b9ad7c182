"""Pruning sweeps as resumable unit loops: heads, FFNs and the combined grid (the oracle FFN study's
loop is prune/oracle.py).

Mirrors amazon-science/llm-interpret's pruning runs (main.py with mask_heads,
scripts/plotting/{iterative_pruning,combined_pruning,crosstask_accuracy}.py); facts
in docs/method.md ("Pruning"). Each unit (task, shot, percentage or grid cell) is one evaluation
written atomically to its own small JSON file; a rerun skips units whose file exists, so a killed run
loses only the unit in flight. Tables are merged from the unit files. Units are split over torchrun
processes with opt66b.runs.distributed.my_units. With streamed layers the units of a (task, shot) are
evaluated together in layer order first (prune/chunks.evaluate_together: each streamed layer fetched
once per chunk of batches for all of them, not once per unit and batch; resumable per chunk).

Layout under OUT for `run.py prune heads --ranking own`:
    OUT/heads-own/shots-0/copa/h10_f0.json     one unit (task copa, 0-shot, 10% of heads)
    OUT/heads-own.json                          the merged table
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from opt66b.fileio import Progress, read_json
from opt66b.runs.distributed import barrier, my_units, rank_world
from opt66b.runs.layout import shots_dir, sweep_unit
from opt66b.runs.settings import option
from tasks.metrics import primary_points, public_metrics
from tasks.settings import EvaluatingStep
from tasks.uncertainty import PER_DOC_KEY

from .chunks import evaluate_together
from .masks import count_for_percent, ffn_mask_for_percent, head_mask_for_percent, read_importance

SWEEPS = ("heads", "ffn", "grid")
DEFAULT_PERCENTS = {"heads": list(range(0, 100, 10)), "ffn": list(range(0, 100, 10)),
                    "grid_heads": list(range(0, 80, 10)), "grid_ffn": list(range(0, 60, 10))}

# (model, tokenizer, task, shots) -> an object with .run(head_mask=, ffn_mask=, start_layer=,
# record_layer_inputs=) -> metrics dict; EvaluatingStep.evaluation (a TaskEvaluation) in production.
EvaluationFactory = Callable[[Any, Any, Any, int], Any]


@dataclass(frozen=True, kw_only=True)
class PruneSettings(EvaluatingStep):
    """`run.py prune heads|ffn|grid`: a pruning sweep from a ranking (the transfer study: prune/transfer.py)."""

    COMMAND = ("prune",)
    sweep: str = option(positional=True)
    ranking: str = option("own")
    importance: Path | None = option(None)
    ffn_importance: Path | None = option(None)
    head_percents: tuple[float, ...] | None = option(None)
    ffn_percents: tuple[float, ...] | None = option(None)

    def check(self) -> None:
        from tasks.registry import ALL_TASKS

        self.check_tasks(self.limit)
        if self.ranking not in ("own", "aggregate") and self.ranking not in ALL_TASKS:
            raise KeyError(f"--ranking must be own, aggregate or a task name ({', '.join(ALL_TASKS)}); "
                           f"got {self.ranking!r}")
        for name, vals in (("--head-percents", self.head_percents), ("--ffn-percents", self.ffn_percents)):
            if vals is not None and any(not 0 <= v <= 100 for v in vals):
                raise ValueError(f"{name} must be in [0, 100], got {list(vals)}")
        if self.sweep not in SWEEPS:
            raise ValueError(f"unknown sweep {self.sweep!r}; choose from {', '.join(SWEEPS)}")
        if self.sweep in ("heads", "grid") and self.importance is None:
            raise ValueError(f"prune {self.sweep} needs --importance DIR (from `run.py importance heads`)")
        if self.sweep in ("ffn", "grid") and self.ffn_importance is None:
            raise ValueError(f"prune {self.sweep} needs --ffn-importance DIR (from `run.py importance ffn`)")

    def percents(self) -> tuple[list[float], list[float]]:
        """(head %, FFN %) of the sweep: the given ones, else the defaults of its kind (DEFAULT_PERCENTS)."""
        grid = self.sweep == "grid"
        hp = self.head_percents if self.head_percents is not None else DEFAULT_PERCENTS["grid_heads" if grid else "heads"]
        fp = self.ffn_percents if self.ffn_percents is not None else DEFAULT_PERCENTS["grid_ffn" if grid else "ffn"]
        return list(hp), list(fp)

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, int]:
        res = run_prune(*loaded, self, cache)
        if res["table"] is not None:  # torchrun: rank 0 writes the table
            print(res["table"])
        return res["work"]


@dataclass(frozen=True)
class Unit:
    task: str
    shots: int
    head_percent: float = 0
    ffn_percent: float = 0

    def path(self, root: Path) -> Path:
        return sweep_unit(root, self.shots, self.task, self.head_percent, self.ffn_percent)


def sweep_units(sweep: str, tasks: Sequence[str], shots: Sequence[int], head_percents: Sequence[float],
                ffn_percents: Sequence[float]) -> list[Unit]:
    """All units of a sweep, grouped by (task, shot) so each evaluation is built once per process."""
    if sweep not in SWEEPS:
        raise ValueError(f"unknown sweep {sweep!r}; choose from {', '.join(SWEEPS)}")
    cells = {"heads": [(h, 0) for h in head_percents], "ffn": [(0, f) for f in ffn_percents],
             "grid": [(h, f) for h in head_percents for f in ffn_percents]}[sweep]
    return [Unit(t, k, h, f) for t in tasks for k in shots for h, f in cells]


# -- where rankings come from ----------------------------------------------------------------------
def ranking_name(ranking: str, task: str) -> str:
    """Which task's file supplies the ranking: own -> the task itself, aggregate, or another task."""
    return task if ranking == "own" else ranking


def head_importance_file(importance_dir: Path, ranking: str, task: str, shots: int) -> Path:
    path = shots_dir(importance_dir, shots) / f"{ranking_name(ranking, task)}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: head importance missing for ranking {ranking!r} (task {task}, "
                                f"{shots}-shot); run `run.py importance heads` for it first")
    return path


def ffn_ranking_for(ffn_dir: Path, ranking: str, task: str, shots: int, num_layers: int) -> list[int]:
    """The FFN order (least important first) from `run.py importance ffn` output."""
    path = shots_dir(ffn_dir, shots) / f"{ranking_name(ranking, task)}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FFN importance missing for ranking {ranking!r} (task {task}, "
                                f"{shots}-shot); run `run.py importance ffn` for it first")
    return read_ffn_ranking(path, num_layers)


def read_ffn_ranking(path: Path, num_layers: int) -> list[int]:
    """The 'ranking' (layer ids, least important first) of a `run.py importance ffn` JSON file."""
    data = read_json(path)
    if "ranking" not in data:
        raise KeyError(f"{path}: no 'ranking' key; the FFN study of this task is incomplete, rerun it")
    order = [int(i) for i in data["ranking"]]
    if sorted(order) != list(range(num_layers)):
        raise ValueError(f"{path}: 'ranking' is not a permutation of the model's {num_layers} layers")
    return order


def unit_masks(unit: Unit, cfg: Any, ranking: str, importance_dir: Path | None,
               ffn_dir: Path | None) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """(head_mask (L, H) or None, ffn_mask (L,) or None, provenance) for one unit (masks.py counts)."""
    info: dict[str, Any] = {}
    head_mask = ffn_mask = None
    if unit.head_percent:
        if importance_dir is None:
            raise ValueError("head pruning needs --importance DIR (output of `run.py importance heads`)")
        path = head_importance_file(importance_dir, ranking, unit.task, unit.shots)
        importance = read_importance(path, cfg.num_layers, cfg.num_heads)
        head_mask = head_mask_for_percent(importance, unit.head_percent)
        info["head_importance"] = str(path)
        info["head_sha256"] = hashlib.sha256(importance.float().numpy().tobytes()).hexdigest()  # ranking by content
    if unit.ffn_percent:
        if ffn_dir is None:
            raise ValueError("FFN pruning needs --ffn-importance DIR (output of `run.py importance ffn`)")
        order = ffn_ranking_for(ffn_dir, ranking, unit.task, unit.shots, cfg.num_layers)
        ffn_mask = ffn_mask_for_percent(order, unit.ffn_percent, cfg.num_layers)
        info["ffn_ranking"] = order
    info["heads_masked"] = count_for_percent(unit.head_percent, cfg.num_layers * cfg.num_heads)
    info["ffns_masked"] = count_for_percent(unit.ffn_percent, cfg.num_layers)
    return head_mask, ffn_mask, info


# -- the sweep loop ----------------------------------------------------------------------------------
def run_prune(model: Any, tokenizer: Any, info: dict[str, Any] | None, s: PruneSettings, cache: Any = None,
              evaluations: EvaluationFactory | None = None) -> dict[str, Any]:
    """The sweep s.sweep ("heads", "ffn" or "grid") with s.ranking ("own", "aggregate" or a task name: cross-
    task transfer) from the outputs of `importance heads` (s.importance) and/or `importance ffn`
    (s.ffn_importance). Units under s.out/<sweep>-<ranking>/, table s.out/<sweep>-<ranking>.json (returned as
    "table"). cache: a tasks.evaluation.EvaluationCache of this model shared with other steps (evaluations
    they ran are not run again); by default one for this call. With streamed layers each (task, shot)'s cells
    run together in layer-order chunks of s.chunk_budget(...) bytes (prune/chunks.py).
    evaluations(model, tokenizer, task, shots): builds each evaluation (default s.evaluation)."""
    s.check()
    objects, run = sweep_run(model, tokenizer, info, s, cache, evaluations)
    table = run_sweep(s, objects, run)
    return {"out": s.out, "table": table, "work": run.work.as_dict()}


def sweep_run(model: Any, tokenizer: Any, info: dict[str, Any] | None, s: Any, cache: Any = None,
              evaluations: EvaluationFactory | None = None) -> tuple[dict[str, Any], "SweepRun"]:
    """(Task objects of s.tasks, the SweepRun every sweep of one call shares) for an EvaluatingStep `s`."""
    from opt66b.runs.store import Work, in_memory_info
    from tasks.evaluation import EvaluationCache

    info = info or in_memory_info(model)
    objects = s.task_objects()
    recorded = {**s.recorded(info, objects), "batch_tokens": s.batch_tokens, "limit": s.limit, "seed": s.seed,
                "importance": s.importance, "ffn_importance": getattr(s, "ffn_importance", None)}
    return objects, SweepRun(model, tokenizer, s.unit_store(info), Work(), cache or EvaluationCache(model),
                             evaluations or s.evaluation, recorded)


@dataclass
class SweepRun:
    """What every sweep of one call shares: the model, the unit store, the work counter, the evaluation
    cache, how evaluations are built, and what every table records."""

    model: Any
    tokenizer: Any
    store: Any
    work: Any
    cache: Any
    evaluations: EvaluationFactory
    recorded: dict[str, Any]


def run_sweep(s: PruneSettings, tasks: dict[str, Any], run: SweepRun) -> Path:
    """Evaluate every unit of the sweep s.sweep with ranking s.ranking not yet on disk, then (rank 0) merge
    s.out/<sweep>-<ranking>.json (prune/sweep_tables.py). tasks: name -> Task. The store fingerprints each
    unit with its task's identity, shot, percentages and the content of the rankings its masks come from;
    a unit on disk is reused only when they match. Identical masks are evaluated once (the cache).
    Returns the table path; metric values are the task's primary metric in points (x100)."""
    from opt66b.layer_major import streams_layers

    from .sweep_tables import merge_table

    hp, fp = s.percents()
    root = Path(s.out) / f"{s.sweep}-{s.ranking}"
    units = sweep_units(s.sweep, list(tasks), s.shots, hp, fp)
    todo = _units_to_run(s, tasks, units, root, run)
    bar = Progress(len(todo), f"prune {s.sweep} ({s.ranking})") if todo else None
    evaluation, current = None, None
    for unit, head_mask, ffn_mask, info, fields in todo:
        if current != (unit.task, unit.shots):
            current = (unit.task, unit.shots)
            evaluation = run.evaluations(run.model, run.tokenizer, tasks[unit.task], unit.shots)
            if streams_layers(run.model) and hasattr(evaluation, "run_knockouts"):
                _together(s, evaluation, [(h, f) for u, h, f, *_ in todo if (u.task, u.shots) == current],
                          shots_dir(root, unit.shots) / unit.task, {k: fields[k] for k in ("task", "version",
                                                                                         "data_sha256", "shots")}, run)
        # floor(p * N / 100) maps several percentages to one count on small models (8 heads: 10% and
        # 20% may mask the same heads), and sweeps share cells: identical masks are evaluated once.
        metrics, computed = run.cache.run(evaluation, head_mask, ffn_mask)
        if computed:
            run.work.add(**evaluation_work(evaluation))
        metric = tasks[unit.task].PRIMARY_METRIC
        info = {k: v for k, v in info.items() if k != "head_sha256"}
        run.store.write_json(unit.path(root), {
            "task": unit.task, "shots": unit.shots, "head_percent": unit.head_percent,
            "ffn_percent": unit.ffn_percent, "ranking": s.ranking, "metric": metric,
            "value": primary_points(metrics, metric), "metrics": public_metrics(metrics),
            PER_DOC_KEY: metrics.get(PER_DOC_KEY), **info}, **fields)
        bar.update()
    barrier()
    table = Path(s.out) / f"{s.sweep}-{s.ranking}.json"
    if rank_world()[0] == 0:
        merge_table(root, table, s.sweep, s.ranking, units, run.model.config, run.recorded)
    return table


def _units_to_run(s: PruneSettings, tasks: dict[str, Any], units: list[Unit], root: Path, run: SweepRun) -> list:
    """This process's units not yet on disk, each with its masks, provenance and fingerprint fields."""
    from tasks.evaluation import task_fingerprint

    task_ids = {name: task_fingerprint(task) for name, task in tasks.items()}
    todo = []
    for unit in my_units(units):
        head_mask, ffn_mask, info = unit_masks(unit, run.model.config, s.ranking, s.importance, s.ffn_importance)
        fields = {**task_ids[unit.task], "shots": unit.shots, "head_percent": unit.head_percent,
                  "ffn_percent": unit.ffn_percent, "ranking": s.ranking, "head_ranking_sha256": info.get("head_sha256"),
                  "ffn_ranking": info.get("ffn_ranking")}
        if not run.store.done(unit.path(root), **fields):
            todo.append((unit, head_mask, ffn_mask, info, fields))
    return todo


def _together(s: PruneSettings, evaluation: Any, masks: list, task_dir: Path, fields: dict[str, Any],
              run: SweepRun) -> None:
    """Streamed layers: a (task, shot)'s new cells and its unmasked run in layer order, chunk by chunk."""
    from opt66b.layer_major import streamed_compute

    task, shots = fields["task"], fields["shots"]
    computed = evaluate_together(evaluation, masks, run.cache, s.chunk_budget(streamed_compute(run.model)), run.store,
                                 task_dir, fields, f"prune {s.sweep} ({s.ranking}) {task} {shots}-shot")
    for _ in range(computed):
        run.work.add(**evaluation_work(evaluation))


def evaluation_work(evaluation: Any) -> dict[str, int]:
    """Forward passes and tokens of one full run of a TaskEvaluation (its scorer's plan); {} for stand-ins."""
    stats = getattr(getattr(evaluation, "scorer", None), "stats", None)
    return {"forward": stats["forward_passes"], "tokens": stats["tokens_fed"]} if stats else {}


__all__ = ["PruneSettings", "Unit", "run_prune", "run_sweep", "sweep_units", "unit_masks"]
