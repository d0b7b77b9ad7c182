"""The `prune heads|ffn|grid` step: pruning sweeps as resumable unit loops (the FFN oracle's loop is
prune/oracle.py, the transfer study's prune/transfer.py).

Mirrors the paper's released code (main.py with mask_heads; its plotting scripts iterative_pruning,
combined_pruning, crosstask_accuracy); docs/method.md ("Pruning"). Each cell (task, shot, heads %, FFN %) is
one evaluation, written atomically to its own small JSON file; a rerun skips cells whose file exists, so a
killed run loses only the evaluations in flight. The evaluations the missing cells need (identical masks
once) are the work units, split over torchrun processes by their cost (opt66b.runs.distributed.my_units);
each process keeps its results in the run's evaluation cache on disk (tasks.evaluation.EvaluationCache),
where rank 0 reads every cell back, writes the cell files and merges the table (prune/sweep_tables.py). With
streamed layers a (task, shot)'s evaluations run together in layer order (prune/chunks.evaluate_together:
each streamed layer fetched once per chunk of batches for all of them; resumable per chunk).

Layout under OUT for `run.py prune heads --ranking own`:
    OUT/heads-own/shots-0/copa/h10_f0.json     one cell (task copa, 0-shot, 10% of heads)
    OUT/heads-own.json                          the merged table
    OUT/evaluations/<digest>.json               the evaluation cache (shared with every step of `all`)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from opt66b.fileio import Progress
from opt66b.runs.distributed import barrier, my_units, rank_world
from opt66b.runs.layout import shots_dir, sweep_unit
from opt66b.runs.settings import option
from tasks.metrics import primary_points, public_metrics
from tasks.settings import EvaluatingStep
from tasks.uncertainty import PER_DOC_KEY

from .masks import cell_masks, count_for_percent, ranking_name

SWEEPS = ("heads", "ffn", "grid")
DEFAULT_PERCENTS = {"heads": list(range(0, 100, 10)), "ffn": list(range(0, 100, 10)),
                    "grid_heads": list(range(0, 90, 10)), "grid_ffn": list(range(0, 60, 10))}

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

    def evaluation_of(self, cell: "Cell", cfg: Any) -> tuple:
        """The evaluation a cell needs, as the plan knows it before any ranking is read: (evaluation key,
        head mask id, FFN mask id), a mask id being None for no mask (0%, or a percentage that masks 0 units)
        and else (kind, ranking source, count). Two cells with one id are one evaluation; two rankings that
        happen to mask the same units are one at run time (the cache) and two here: an upper bound."""
        source = ranking_name(self.ranking, cell.task)
        heads = count_for_percent(cell.head_percent, cfg.num_layers * cfg.num_heads)
        ffns = count_for_percent(cell.ffn_percent, cfg.num_layers)
        return (cell.shots_key, ("heads", source, heads) if heads else None, ("ffn", source, ffns) if ffns else None)

    def units(self, shape: Any, tokenizer: Any, done: Any = None) -> list[Any]:
        """The work units (opt66b.cost) the run splits and the plan prices: each evaluation the sweep's cells
        need and `done` (a key -> bool; evaluations earlier steps or processes left in the cache) does not
        have, in the cells' order. With streamed layers a (task, shot)'s new evaluations run together in
        layer-order chunks (prune/chunks.evaluate_together): one unit, one layer sweep per chunk, its first run
        the others' base (an unmasked run only when a cell needs it)."""
        from opt66b.cost import Run, WorkUnit
        from opt66b.layer_major import chunk_cost

        cfg, objects, hp, fp = shape.cfg, self.task_objects(), *self.percents()
        skipped_per_ffn = sum(shape.rule.ffn_params) / max(sum(1 for p in shape.rule.ffn_params if p), 1)
        done = done or (lambda key: False)
        groups: dict[tuple, list[tuple]] = {}
        for cell in sweep_cells(self.sweep, list(objects), self.shots, hp, fp):
            task, k = objects[cell.task], cell.shots
            key = (self.evaluation_key(task, k, cfg), *self.evaluation_of(cell, cfg)[1:])
            group = groups.setdefault((cell.task, k), [])
            if not done(key) and key not in group:
                group.append(key)
        units = []
        for (name, k), keys in groups.items():
            passes = self.passes(objects[name], k, cfg, tokenizer)
            runs = [Run(passes, ffn_skipped=(key[2][2] if key[2] else 0) * skipped_per_ffn,
                        layer_order=shape.streams_to is not None) for key in keys]
            if shape.streams_to is None:
                units += [WorkUnit(("prune", name, k, *key[1:]), [run], provides=(key,)) for key, run in zip(keys, runs)]
                continue
            if not keys:
                continue
            _, held, chunks = chunk_cost(passes.unit_tokens, self.chunk_budget(shape), len(runs),
                                         cfg.hidden_size, shape.dtype_bytes)
            units.append(WorkUnit(("prune", name, k), runs, provides=tuple(keys), held=held, sweeps=chunks))
        return units


@dataclass(frozen=True)
class Cell:
    """One cell of a sweep: a task, a shot count and the percentages of heads and FFNs pruned."""

    task: str
    shots: int
    head_percent: float = 0
    ffn_percent: float = 0

    def path(self, root: Path) -> Path:
        return sweep_unit(root, self.shots, self.task, self.head_percent, self.ffn_percent)

    @property
    def shots_key(self) -> tuple[str, int]:
        return self.task, self.shots


def sweep_cells(sweep: str, tasks: Sequence[str], shots: Sequence[int], head_percents: Sequence[float],
                ffn_percents: Sequence[float]) -> list[Cell]:
    """Every cell of a sweep, grouped by (task, shot)."""
    if sweep not in SWEEPS:
        raise ValueError(f"unknown sweep {sweep!r}; choose from {', '.join(SWEEPS)}")
    cells = {"heads": [(h, 0) for h in head_percents], "ffn": [(0, f) for f in ffn_percents],
             "grid": [(h, f) for h in head_percents for f in ffn_percents]}[sweep]
    return [Cell(t, k, h, f) for t in tasks for k in shots for h, f in cells]


# -- the sweep loop ----------------------------------------------------------------------------------
def run_prune(model: Any, tokenizer: Any, info: dict[str, Any] | None, s: PruneSettings, cache: Any = None,
              evaluations: EvaluationFactory | None = None) -> dict[str, Any]:
    """The sweep s.sweep ("heads", "ffn" or "grid") with s.ranking ("own", "aggregate" or a task name: cross-
    task transfer) from the outputs of `importance heads` (s.importance) and/or `importance ffn`
    (s.ffn_importance). Cells under s.out/<sweep>-<ranking>/, table s.out/<sweep>-<ranking>.json (returned as
    "table"). cache: a tasks.evaluation.EvaluationCache of this model shared with other steps (evaluations
    they ran are not run again); by default one on disk under s.out/evaluations. With streamed layers each
    (task, shot)'s evaluations run together in layer-order chunks of s.chunk_budget(...) bytes.
    evaluations(model, tokenizer, task, shots): builds each evaluation (default s.evaluation)."""
    s.check()
    objects, run = sweep_run(model, tokenizer, info, s, cache, evaluations)
    table = run_sweep(s, objects, run)
    return {"out": s.out, "table": table, "work": run.work.as_dict()}


@dataclass
class SweepRun:
    """What every sweep of one call shares: the model (and its shape, for the units' costs; None: equal
    costs), the unit store, the work counter, the evaluation cache, how evaluations are built, what every
    table records."""

    model: Any
    tokenizer: Any
    store: Any
    work: Any
    cache: Any
    evaluations: EvaluationFactory
    recorded: dict[str, Any]
    shape: Any = None


def sweep_run(model: Any, tokenizer: Any, info: dict[str, Any] | None, s: Any, cache: Any = None,
              evaluations: EvaluationFactory | None = None) -> tuple[dict[str, Any], SweepRun]:
    """(Task objects of s.tasks, the SweepRun every sweep of one call shares) for an EvaluatingStep `s`."""
    from opt66b.cost import ModelShape
    from opt66b.runs.store import Work, in_memory_info, model_fingerprint
    from tasks.evaluation import EvaluationCache

    info = info or in_memory_info(model)
    objects = s.task_objects()
    recorded = {**s.recorded(info, objects), "batch_tokens": s.batch_tokens, "limit": s.limit, "seed": s.seed,
                "importance": s.importance, "ffn_importance": getattr(s, "ffn_importance", None)}
    cache = cache or EvaluationCache(model, Path(s.out) / "evaluations", model_fingerprint(info))
    return objects, SweepRun(model, tokenizer, s.unit_store(info), Work(), cache, evaluations or s.evaluation,
                             recorded, ModelShape.of(model))


def run_sweep(s: PruneSettings, tasks: dict[str, Any], run: SweepRun) -> Path:
    """Every cell of the sweep s.sweep with ranking s.ranking not yet on disk: the evaluations they need that
    the cache lacks, this process's share of them (by cost), then (rank 0, after every process) the cell files
    from the cache and the merged table s.out/<sweep>-<ranking>.json (prune/sweep_tables.py). The unit store
    fingerprints each cell with its task's identity, shot, percentages and the content of the rankings its
    masks come from; a cell on disk is reused only when they match. Returns the table path; metric values are
    the task's primary metric in points (x100)."""
    from .sweep_tables import merge_table

    hp, fp = s.percents()
    root = Path(s.out) / f"{s.sweep}-{s.ranking}"
    cells = sweep_cells(s.sweep, list(tasks), s.shots, hp, fp)
    todo = _cells_to_write(s, tasks, cells, root, run)
    _evaluate(s, tasks, todo, run)
    barrier()
    table = Path(s.out) / f"{s.sweep}-{s.ranking}.json"
    if rank_world()[0] != 0:
        return table
    cfg = run.model.config
    for cell, head_mask, ffn_mask, info, fields in todo:
        metrics = run.cache.get(run.cache.key_of(s.evaluation_identity(tasks[cell.task], cell.shots, cfg),
                                                 head_mask, ffn_mask))
        metric = tasks[cell.task].PRIMARY_METRIC
        info = {k: v for k, v in info.items() if k != "head_sha256"}
        run.store.write_json(cell.path(root), {
            "task": cell.task, "shots": cell.shots, "head_percent": cell.head_percent,
            "ffn_percent": cell.ffn_percent, "ranking": s.ranking, "metric": metric,
            "value": primary_points(metrics, metric), "metrics": public_metrics(metrics),
            PER_DOC_KEY: metrics.get(PER_DOC_KEY), **info}, **fields)
    merge_table(root, table, s.sweep, s.ranking, cells, cfg, run.recorded)
    return table


def _cells_to_write(s: PruneSettings, tasks: dict[str, Any], cells: list[Cell], root: Path, run: SweepRun) -> list:
    """The cells not yet on disk, each with its masks, provenance and fingerprint fields (every process reads
    the same files, so every process computes the same list)."""
    from tasks.evaluation import task_fingerprint

    task_ids = {name: task_fingerprint(task) for name, task in tasks.items()}
    todo = []
    for cell in cells:
        head_mask, ffn_mask, info = cell_masks(cell, run.model.config, s.ranking, s.importance, s.ffn_importance)
        fields = {**task_ids[cell.task], "shots": cell.shots, "head_percent": cell.head_percent,
                  "ffn_percent": cell.ffn_percent, "ranking": s.ranking, "head_ranking_sha256": info.get("head_sha256"),
                  "ffn_ranking": info.get("ffn_ranking")}
        if not run.store.done(cell.path(root), **fields):
            todo.append((cell, head_mask, ffn_mask, info, fields))
    return todo


def _evaluate(s: PruneSettings, tasks: dict[str, Any], todo: list, run: SweepRun) -> None:
    """This process's share of the evaluations the missing cells need: s.units with `done` = in the cache,
    split by cost; each evaluation run (or, with streamed layers, a (task, shot)'s together) into the cache."""
    from opt66b.cost import ModelShape
    from opt66b.layer_major import streamed_compute

    cfg = run.model.config
    masks: dict[tuple, tuple[Any, Any]] = {}  # evaluation id -> the masks of a cell that needs it
    identities: dict[tuple, str] = {}  # evaluation id -> its cache identity
    cells: dict[tuple, tuple[str, int]] = {}  # evaluation id -> (task, shot) of a cell that needs it
    for cell, head_mask, ffn_mask, *_ in todo:
        key = (s.evaluation_key(tasks[cell.task], cell.shots, cfg), *s.evaluation_of(cell, cfg)[1:])
        masks.setdefault(key, (head_mask, ffn_mask))
        identities.setdefault(key, s.evaluation_identity(tasks[cell.task], cell.shots, cfg))
        cells.setdefault(key, cell.shots_key)

    def done(key: tuple) -> bool:  # no missing cell needs it, or the cache has it
        return key not in masks or run.cache.key_of(identities[key], *masks[key]) in run.cache

    units = s.units(run.shape, run.tokenizer, done) if run.shape is not None else _plain_units(cells)
    costs = [u.flops(run.shape.rule) for u in units] if run.shape is not None else None
    barrier()  # every process has listed the units before any writes to the cache they were listed from
    mine = my_units(units, costs)
    bar = Progress(len(mine), f"prune {s.sweep} ({s.ranking})") if mine else None
    evaluation, current = None, None
    for unit in mine:
        name, k = unit.key[1], unit.key[2]
        if current != (name, k):
            current, evaluation = (name, k), run.evaluations(run.model, run.tokenizer, tasks[name], k)
        wanted = [masks[key] for key in unit.provides]
        identity = identities[unit.provides[0]]
        if streamed_compute(run.model) is not None and hasattr(evaluation, "run_knockouts"):  # together, layer order
            from tasks.evaluation import task_fingerprint

            from .chunks import evaluate_together

            task_dir = shots_dir(Path(s.out) / f"{s.sweep}-{s.ranking}", k) / name
            computed = evaluate_together(evaluation, wanted, run.cache, s.chunk_budget(run.shape or ModelShape.of(run.model)),
                                         run.store, task_dir, {**task_fingerprint(tasks[name]), "shots": k},
                                         f"prune {s.sweep} ({s.ranking}) {name} {k}-shot", identity)
        else:
            computed = run.cache.run(evaluation, *wanted[0], identity=identity)[1]
        if computed and run.shape is not None:
            run.work.add_unit(unit, run.shape.rule)
        bar.update()


def _plain_units(cells: dict[tuple, tuple[str, int]]) -> list[Any]:
    """Without the model's shape (a stand-in model): one unit per needed evaluation, equal costs."""
    from opt66b.cost import WorkUnit

    return [WorkUnit(("prune", *cells[key], *key[1:]), provides=(key,)) for key in cells]


__all__ = ["Cell", "PruneSettings", "SweepRun", "run_prune", "run_sweep", "sweep_cells"]
