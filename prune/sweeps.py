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

from opt66b.runs.distributed import barrier, my_units, rank_world
from opt66b.fileio import Progress, read_json
from opt66b.runs.results import write_json
from opt66b.layer_major import DEFAULT_CHUNK_BUDGET, streams_layers
from opt66b.runs.layout import shots_dir, shots_name, sweep_unit
from opt66b.runs.store import UnitStore, Work
from tasks.evaluate import EvaluationCache, task_fingerprint
from tasks.metrics import public_metrics
from tasks.registry import seen_in
from tasks.uncertainty import PER_DOC_KEY

from .importance import primary_points
from .intervals import mean_se, paired_drop, value_se
from .chunks import evaluate_together
from .masks import count_for_percent, ffn_mask_for_percent, head_mask_for_percent, read_importance

SWEEPS = ("heads", "ffn", "grid")
DEFAULT_PERCENTS = {"heads": list(range(0, 100, 10)), "ffn": list(range(0, 100, 10)),
                    "grid_heads": list(range(0, 80, 10)), "grid_ffn": list(range(0, 60, 10))}

# (model, tokenizer, task, shots) -> an object with .run(head_mask=, ffn_mask=, start_layer=,
# record_layer_inputs=) -> metrics dict; tasks.evaluate.TaskEvaluation in production.
EvaluationFactory = Callable[[Any, Any, Any, int], Any]


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
def run_sweep(model: Any, tokenizer: Any, tasks: dict[str, Any], sweep: str, ranking: str, shots: Sequence[int],
              out_dir: Path, make_evaluation: EvaluationFactory, importance_dir: Path | None = None,
              ffn_dir: Path | None = None, head_percents: Sequence[float] | None = None,
              ffn_percents: Sequence[float] | None = None, settings: dict[str, Any] | None = None,
              store: UnitStore | None = None, work: Work | None = None,
              cache: EvaluationCache | None = None, chunk_budget: int | None = DEFAULT_CHUNK_BUDGET) -> Path:
    """Evaluate every unit of `sweep` not yet on disk, then (rank 0) merge OUT/{sweep}-{ranking}.json.

    tasks: name -> Task. ranking: "own", "aggregate" or a task name (cross-task transfer).
    store: fingerprints the unit files (model, settings; each unit adds its task's identity, shot,
    percentages and the content of the rankings its masks come from); a unit on disk is reused only
    when they match. work: counts the forward passes and tokens of the evaluations run.
    cache: evaluations already run on this model (tasks.evaluate.EvaluationCache; `run.py all` shares
    one between its steps); by default one for this sweep, so identical masks are evaluated once.
    chunk_budget: with streamed layers, the bytes the layer-order states of a (task, shot)'s units may
    take on the compute device (prune/chunks.py; None: the whole task in one chunk).
    Returns the table path. Metric values are the task's primary metric in points (x100).
    """
    hp = list(head_percents if head_percents is not None else
              DEFAULT_PERCENTS["grid_heads" if sweep == "grid" else "heads"])
    fp = list(ffn_percents if ffn_percents is not None else
              DEFAULT_PERCENTS["grid_ffn" if sweep == "grid" else "ffn"])
    root = Path(out_dir) / f"{sweep}-{ranking}"
    store = store or UnitStore({})
    units = sweep_units(sweep, list(tasks), shots, hp, fp)
    task_ids = {name: task_fingerprint(task) for name, task in tasks.items()}
    todo = []
    for unit in my_units(units):
        head_mask, ffn_mask, info = unit_masks(unit, model.config, ranking, importance_dir, ffn_dir)
        fields = {**task_ids[unit.task], "shots": unit.shots, "head_percent": unit.head_percent,
                  "ffn_percent": unit.ffn_percent, "ranking": ranking, "head_ranking_sha256": info.get("head_sha256"),
                  "ffn_ranking": info.get("ffn_ranking")}
        if not store.done(unit.path(root), **fields):
            todo.append((unit, head_mask, ffn_mask, info, fields))
    bar = Progress(len(todo), f"prune {sweep} ({ranking})") if todo else None
    evaluation, current = None, None
    cache = cache or EvaluationCache(model)
    layer_order = streams_layers(model)
    for unit, head_mask, ffn_mask, info, fields in todo:
        if current != (unit.task, unit.shots):
            current = (unit.task, unit.shots)
            evaluation = make_evaluation(model, tokenizer, tasks[unit.task], unit.shots)
            if layer_order and hasattr(evaluation, "run_knockouts"):
                group = [(h, f) for u, h, f, *_ in todo if (u.task, u.shots) == current]
                computed = evaluate_together(evaluation, group, cache, chunk_budget, store,
                                             shots_dir(root, unit.shots) / unit.task,
                                             {**task_ids[unit.task], "shots": unit.shots},
                                             f"prune {sweep} ({ranking}) {unit.task} {unit.shots}-shot")
                if work is not None:
                    for _ in range(computed):
                        work.add(**evaluation_work(evaluation))
        # floor(p * N / 100) maps several percentages to one count on small models (8 heads: 10% and
        # 20% may mask the same heads), and sweeps share cells: identical masks are evaluated once.
        metrics, computed = cache.run(evaluation, head_mask, ffn_mask)
        if computed and work is not None:
            work.add(**evaluation_work(evaluation))
        metric = tasks[unit.task].PRIMARY_METRIC
        info = {k: v for k, v in info.items() if k != "head_sha256"}
        store.write_json(unit.path(root), {
            "task": unit.task, "shots": unit.shots, "head_percent": unit.head_percent,
            "ffn_percent": unit.ffn_percent, "ranking": ranking, "metric": metric,
            "value": primary_points(metrics, metric), "metrics": public_metrics(metrics),
            PER_DOC_KEY: metrics.get(PER_DOC_KEY), **info}, **fields)
        bar.update()
    barrier()
    table = Path(out_dir) / f"{sweep}-{ranking}.json"
    if rank_world()[0] == 0:
        merge_table(root, table, sweep, ranking, units, model.config, settings or {})
    return table


def cell_intervals(per_doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(stderr, paired) in the table's layout [task][shots-K][head %][ffn %]: each cell's standard error
    and its paired drop against the task's unpruned cell (0, 0) (prune/intervals.py), None where a
    vector is missing (units written before vectors were stored)."""
    stderr: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    for task, shots in per_doc.items():
        for shot, rows in shots.items():
            base = rows.get("0", {}).get("0")
            for h, row in rows.items():
                for f, bits in row.items():
                    stderr.setdefault(task, {}).setdefault(shot, {}).setdefault(h, {})[f] = value_se(bits)
                    paired.setdefault(task, {}).setdefault(shot, {}).setdefault(h, {})[f] = paired_drop(base, bits)
    return stderr, paired


def evaluation_work(evaluation: Any) -> dict[str, int]:
    """Forward passes and tokens of one full run of a TaskEvaluation (its scorer's plan); {} for stand-ins."""
    stats = getattr(getattr(evaluation, "scorer", None), "stats", None)
    return {"forward": stats["forward_passes"], "tokens": stats["tokens_fed"]} if stats else {}


def merge_table(root: Path, table: Path, sweep: str, ranking: str, units: Sequence[Unit], cfg: Any,
                settings: dict[str, Any]) -> dict[str, Any] | None:
    """Merge unit files into {results: {task: {shots-K: {head%: {ffn%: points}}}}, stderr, paired (drop
    against the unpruned cell with its paired 95% interval), per_doc (the 0/1 strings every interval is
    rebuilt from), mean_over_tasks (over the seen tasks) with mean_over_tasks_ci, counts}.

    Units still missing (another process still running, or a killed run) are listed, not invented.
    """
    from opt66b.runs.results import run_metadata

    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    per_doc: dict[str, dict[str, dict[str, dict[str, str | None]]]] = {}
    missing = []
    for u in units:
        if not u.path(root).is_file():
            missing.append(str(u.path(root)))
            continue
        rec = read_json(u.path(root))
        shot, h, f = shots_name(u.shots), f"{u.head_percent:g}", f"{u.ffn_percent:g}"
        results.setdefault(u.task, {}).setdefault(shot, {}).setdefault(h, {})[f] = rec["value"]
        per_doc.setdefault(u.task, {}).setdefault(shot, {}).setdefault(h, {})[f] = rec.get(PER_DOC_KEY)
    stderr, paired = cell_intervals(per_doc)
    # the mean over the paper's seen tasks (all tasks when none is seen), as its figures draw it
    members = seen_in(results) or sorted(results)
    mean: dict[str, dict[str, dict[str, float]]] = {}
    mean_ci: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    for shot in sorted({shots_name(u.shots) for u in units}):
        cells = {(f"{u.head_percent:g}", f"{u.ffn_percent:g}") for u in units}
        for h, f in sorted(cells, key=lambda c: (float(c[0]), float(c[1]))):
            have = [t for t in members if f in results.get(t, {}).get(shot, {}).get(h, {})]
            if have and len(have) == len([t for t in members if t in {u.task for u in units}]):
                mean.setdefault(shot, {}).setdefault(h, {})[f] = sum(results[t][shot][h][f] for t in have) / len(have)
                drops = [paired.get(t, {}).get(shot, {}).get(h, {}).get(f) for t in have]
                mean_ci.setdefault(shot, {}).setdefault(h, {})[f] = {
                    "se": mean_se([stderr.get(t, {}).get(shot, {}).get(h, {}).get(f) for t in have]),
                    "drop": None if None in drops else sum(d["drop"] for d in drops) / len(drops),
                    "drop_se": None if None in drops else mean_se([d["se"] for d in drops])}
    hp = sorted({u.head_percent for u in units})
    fp = sorted({u.ffn_percent for u in units})
    out = {"sweep": sweep, "ranking": ranking, "layout": "results[task][shots-K][head %][ffn %] = primary metric x100",
           "head_percents": hp, "ffn_percents": fp,
           "counts": {"heads": {f"{p:g}": count_for_percent(p, cfg.num_layers * cfg.num_heads) for p in hp},
                      "ffn": {f"{p:g}": count_for_percent(p, cfg.num_layers) for p in fp}},
           "results": results, "mean_over_tasks": mean, "mean_over_tasks_of": members,
           "stderr": stderr, "paired": paired, "mean_over_tasks_ci": mean_ci, PER_DOC_KEY: per_doc,
           "missing_units": missing, "meta": run_metadata(**settings)}
    write_json(table, out)
    return out


__all__ = ["Unit", "sweep_units", "run_sweep", "merge_table", "unit_masks"]
