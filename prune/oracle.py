"""The FFN oracle (Bansal et al. 2023 §4.2): the `importance ffn` step, every FFN knocked out alone.

drop[l] = base metric - metric with FFN l alone removed, in points of the task's primary metric on its
evaluation split, per (task, shot); the ranking lists the layers by ascending drop. Mirrors the paper's
released code (its mask_iterative_fc runs and scripts/plotting/fc_importance.py); docs/method.md ("FFN
importance"). A knock-out at layer l cannot change layers before l, so each run resumes from the base
run's recorded input of layer l (`ffn_oracle`, cached) instead of recomputing the whole model (naive);
the runs go chunk by chunk (prune/chunks.py, Scorer.run_knockouts), so memory is set by the chunk.

    OUT/shots-K/task/layer-XXX.json      one knocked-out layer's metrics (+ base.json)
    OUT/shots-K/task/chunks-C/           each chunk's partial log-likelihoods (resume)
    OUT/shots-K/task.json                {drop, base, ranking}
    OUT/shots-K/aggregate.json           the mean drop over the seen tasks and its ranking
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from opt66b.fileio import Progress, read_json
from opt66b.cost import ModelShape
from opt66b.layer_major import streams_layers
from opt66b.runs.layout import knockout_base, knockout_unit, shots_dir
from opt66b.runs.results import write_json
from opt66b.runs.settings import option
from tasks.metrics import primary_points
from tasks.settings import EvaluatingStep

from .chunks import chunk_store
from .masks import ffn_ranking


@dataclass(frozen=True, kw_only=True)
class FFNOracleSettings(EvaluatingStep):
    """`run.py importance ffn`: every FFN knocked out alone, chunk by chunk."""

    COMMAND = ("importance", "ffn")
    naive: bool = option(False)
    oracle_memory: float | None = option(None)

    def check(self) -> None:
        self.check_tasks(self.limit)
        if self.oracle_memory is not None and self.oracle_memory <= 0:
            raise ValueError(f"--oracle-memory must be > 0 GiB, got {self.oracle_memory}")

    def chunk_budget(self, shape: Any, on_host: bool = False) -> int:
        """--oracle-memory when given (per process), else the rule of every step (TaskStep.chunk_budget)."""
        if self.oracle_memory is not None:
            return int(self.oracle_memory * (1 << 30))
        return super().chunk_budget(shape, on_host)

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, int]:
        return run_ffn_oracle(*loaded, self)["work"]

    def units(self, shape: Any, tokenizer: Any, done: Any = None) -> list[Any]:
        """The work units (opt66b.cost) the run splits and the plan prices: per (task, shot), each chunk of
        scoring batches with its base run and one knock-out per layer resuming at its layer (chunk_cost: in
        batch order the chunk's recorded layer inputs sit on the host; with streamed layers it runs in layer
        order, L + 1 live streams on the compute device, the streamed weights crossing once). --naive: one
        unit per (task, shot), every knock-out from layer 0."""
        from opt66b.cost import Run, WorkUnit
        from opt66b.layer_major import chunk_cost

        cfg, skipped = shape.cfg, shape.rule.ffn_params
        layer_major = shape.streams_to is not None and not self.naive
        budget = self.chunk_budget(shape, on_host=not layer_major)
        units = []
        for name, task in self.task_objects().items():
            for k in self.shots:
                passes = self.passes(task, k, cfg, tokenizer)
                if self.naive:
                    runs = [Run(passes), *(Run(passes, ffn_skipped=skipped[layer]) for layer in range(cfg.num_layers))]
                    units.append(WorkUnit(("oracle", name, k), runs))
                    continue
                size, held, _ = chunk_cost(passes.unit_tokens, budget, cfg.num_layers + (1 if layer_major else 0),
                                           cfg.hidden_size, shape.dtype_bytes)
                for first in range(0, len(passes.units), size):
                    part = passes.chunk(first, size)
                    runs = [Run(part, layer_order=layer_major),
                            *(Run(part, start_layer=layer, ffn_skipped=skipped[layer], layer_order=layer_major)
                              for layer in range(cfg.num_layers))]
                    units.append(WorkUnit(("oracle", name, k, first, size), runs, held=held if layer_major else 0,
                                          host=0 if layer_major else held, sweeps=int(layer_major)))
        return units


def run_ffn_oracle(model: Any, tokenizer: Any, info: dict[str, Any] | None, s: FFNOracleSettings,
                   evaluations: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The oracle of every (task, shot) not yet on disk (module docstring), then (rank 0) each shot's
    aggregate. The work units are chunks of a (task, shot)'s scoring batches (FFNOracleSettings.units): this
    process runs its share of them (by cost) and saves each chunk's log-likelihoods; after every process,
    each (task, shot) is merged by one process from the chunk files. With --naive every knock-out re-runs the
    whole model (the reference), a (task, shot) at a time. evaluations(model, tokenizer, task, shots): builds
    each evaluation (default s.evaluation; tests pass stand-ins). Returns {"out", "work": what was computed}."""
    from opt66b.runs.distributed import barrier, my_units, rank_world
    from opt66b.runs.store import Work, in_memory_info
    from tasks.evaluation import task_fingerprint

    s.check()
    info = info or in_memory_info(model)
    objects = s.task_objects()
    recorded = {**s.recorded(info, objects), "batch_tokens": s.batch_tokens, "limit": s.limit, "seed": s.seed}
    store, work, make = s.unit_store(info), Work(), evaluations or s.evaluation
    fields = {(t, k): {**task_fingerprint(objects[t]), "shots": k} for t in objects for k in s.shots}
    pending = [key for key in fields if not store.done(shots_dir(s.out, key[1]) / f"{key[0]}.json", **fields[key])]
    barrier()  # every process has read the files before any process writes one (the same split everywhere)
    if not s.naive and hasattr(model, "parameters"):  # a model (not a test's stand-in): chunks split by cost
        _run_chunks(model, tokenizer, s, objects, pending, fields, store, work, make)
        barrier()  # every chunk is on disk: the merges below read them
    budget = s.chunk_budget(ModelShape.of(model)) if hasattr(model, "parameters") else None  # None: a stand-in
    for name, k in my_units(pending):
        res = _oracle_unit(make(model, tokenizer, objects[name], k), objects[name].PRIMARY_METRIC,
                           model.config.num_layers, streams_layers(model), shots_dir(s.out, k) / name, fields[(name, k)],
                           store, not s.naive, budget, work)
        res.update(task=name, shots=k, meta=_meta(recorded, k, not s.naive))
        store.write_json(shots_dir(s.out, k) / f"{name}.json", res, **fields[(name, k)])
    barrier()
    if rank_world()[0] == 0:
        for k in s.shots:
            write_ffn_aggregate(shots_dir(s.out, k), list(objects))
    return {"out": s.out, "work": work.as_dict()}


def _run_chunks(model: Any, tokenizer: Any, s: FFNOracleSettings, objects: dict[str, Any], pending: list,
                fields: dict, store: Any, work: Any, make: Callable[..., Any]) -> None:
    """This process's share of the chunk units of the pending (task, shot)s whose chunk file is not on disk:
    each chunk's base run and knock-outs, saved (prune/chunks.chunk_store)."""
    from opt66b.cost import ModelShape
    from opt66b.runs.distributed import barrier, my_units
    from opt66b.runs.layout import knockout_chunk

    shape = ModelShape.of(model)
    L = shape.cfg.num_layers

    def saved(unit: Any) -> bool:
        _, name, k, first, size = unit.key
        return store.done(knockout_chunk(shots_dir(s.out, k) / name, size, first), **fields[(name, k)], chunk=first,
                          chunk_units=size)

    units = [u for u in s.units(shape, tokenizer) if u.key[1:3] in pending and not saved(u)]
    barrier()  # every process has listed the chunks before any writes one
    mine = my_units(units, [u.flops(shape.rule) for u in units])
    groups: dict[tuple, list] = {}
    for unit in mine:
        groups.setdefault(unit.key[1:3], []).append(unit)
    runs = [(layer, None, ffn_knockout_mask(L, layer), layer) for layer in range(L)]
    names = {"base": "base", **{layer: f"layer-{layer:03d}" for layer in range(L)}}
    for (name, k), group in groups.items():
        evaluation, size = make(model, tokenizer, objects[name], k), group[0].key[4]
        order = "layer order, states on the compute device" if shape.streams_to else "batch order"
        bar = Progress(-(-len(evaluation.scorer.units) // size),
                       f"ffn oracle {name} {k}-shot (chunks of {size} batches, {order})")
        parts = chunk_store(store, shots_dir(s.out, k) / name, fields[(name, k)], evaluation, size, names, bar)
        evaluation.run_knockouts(runs, size, only={u.key[3] for u in group}, **parts)
        for unit in group:
            work.add_unit(unit, shape.rule)


def _meta(recorded: dict[str, Any], shots: int, cached: bool) -> dict[str, Any]:
    from opt66b.runs.results import run_metadata

    return run_metadata(**{**recorded, "shots": shots, "cached": cached})


def _oracle_unit(evaluation: Any, metric: str, num_layers: int, layer_major: bool, unit_dir: Path,
                 fields: dict[str, Any], store: Any, cached: bool, budget: int, work: Any) -> dict[str, Any]:
    """One (task, shot): the base run and every knock-out not yet on disk, in chunks of `budget` bytes of
    recorded inputs (or, layer_major: with streamed layers, layer-order states); writes each layer's unit
    and base.json."""
    done = {}
    for layer in range(num_layers):
        p = knockout_unit(unit_dir, layer)
        if store.done(p, **fields, layer=layer):
            done[layer] = read_json(p)["metrics"]

    def save(layer: int, metrics: dict[str, float]) -> None:
        store.write_json(knockout_unit(unit_dir, layer), {"layer": layer, "metrics": metrics}, **fields, layer=layer)

    todo, label = num_layers - len(done), f"ffn oracle {fields['task']} {fields['shots']}-shot"
    chunking, bar = {}, None
    if cached and todo and hasattr(evaluation, "run_knockouts"):
        size = evaluation.scorer.chunk_units(budget, num_layers + 1 if layer_major else num_layers)
        order = "layer order, states on the compute device" if layer_major else "batch order"
        bar = Progress(-(-len(evaluation.scorer.units) // size), f"{label} (chunks of {size} batches, {order})")
        names = {"base": "base", **{layer: f"layer-{layer:03d}" for layer in range(num_layers)}}
        chunking = {"chunk_units": size, "chunks": chunk_store(store, unit_dir, fields, evaluation, size, names, bar)}
    elif todo:
        bar = Progress(todo, label)
    res = ffn_oracle(evaluation, num_layers, metric, done=done, on_layer=save,
                     cached=cached, progress=bar.update if bar and not chunking else None, **chunking)
    stats = getattr(getattr(evaluation, "scorer", None), "stats", None)
    if stats and not chunking:  # chunked: each chunk unit was counted when it ran (_run_chunks)
        for _ in range(1 + todo):  # the base run and one (from layer 0 with --naive) run per new layer
            work.add(forward=stats["forward_passes"], tokens=stats["tokens_fed"])
    write_json(knockout_base(unit_dir), {"metrics": res["base_metrics"]})
    return res


def ffn_oracle(evaluation: Any, num_layers: int, metric: str, done: dict[int, dict[str, float]] | None = None,
               on_layer: Callable[[int, dict[str, float]], None] | None = None, cached: bool = True,
               progress: Callable[[int], None] | None = None, chunk_units: int | None = None,
               chunks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Oracle FFN importance: drop[l] = base - metric with FFN l alone knocked out (points, eval split).

    `evaluation` is a tasks.evaluation.TaskEvaluation (instances and scorer built once); its
    `run(ffn_mask=..., start_layer=l)` resumes from the recorded input of layer l, which a knockout
    at l cannot change, so only layers l.. are recomputed (cached=False re-runs the whole model:
    the naive reference). `done` holds already-computed layers' metrics (resume); `on_layer(l, m)`
    is called after each new layer (write its unit file there). chunk_units: run the base and the
    knock-outs `chunk_units` scoring batches at a time, so the recorded layer inputs held at once are
    one chunk's, not the task's (same results bit for bit); chunks: {"done", "on_chunk"} resume and
    save each chunk's partial log-likelihoods (TaskEvaluation.run_knockouts).

    Returns {"metric", "base", "base_metrics", "drop" (L floats), "metrics" (per layer), "ranking"}
    where ranking lists layer ids by ascending drop, stable (ties: lower layer first, as the paper's released code).
    """
    layers, base_metrics = list(range(num_layers)), None
    per_layer: dict[int, dict[str, float]] = dict(done or {})
    todo = [layer for layer in layers if layer not in per_layer]
    if cached and chunk_units is not None:
        # Bounded memory: the base and every knock-out, a chunk of scoring batches at a time, each chunk
        # resumed from its own recorded layer inputs (Scorer.run_knockouts); the same numbers bit for bit.
        runs = [(layer, None, ffn_knockout_mask(num_layers, layer), layer) for layer in todo]
        res = evaluation.run_knockouts(runs, chunk_units, **(chunks or {}))
        base_metrics = res["base"]
        for layer in todo:
            per_layer[layer] = res[layer]
            if on_layer is not None:
                on_layer(layer, res[layer])
    if base_metrics is None:
        base_metrics = evaluation.run(record_layer_inputs=cached) if cached else evaluation.run()
    base = primary_points(base_metrics, metric)
    for layer in layers:
        if layer in per_layer:
            continue
        mask = ffn_knockout_mask(num_layers, layer)
        if cached:
            metrics = evaluation.run(ffn_mask=mask, start_layer=layer)
        else:
            metrics = evaluation.run(ffn_mask=mask)
        per_layer[layer] = metrics
        if on_layer is not None:
            on_layer(layer, metrics)
        if progress is not None:
            progress(1)
    missing = [i for i in range(num_layers) if i not in per_layer]
    drop = [base - primary_points(per_layer[i], metric) for i in range(num_layers) if i in per_layer]
    result = {"metric": metric, "base": base, "base_metrics": base_metrics,
              "metrics": {str(i): per_layer[i] for i in sorted(per_layer)}}
    if not missing:
        result["drop"] = drop
        result["ranking"] = ffn_ranking(drop)
    else:
        result["missing_layers"] = missing
    return result


def ffn_knockout_mask(num_layers: int, layer: int) -> torch.Tensor:
    """(L,) float32 FFN mask with only `layer` switched off."""
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer {layer} out of range for a {num_layers}-layer model")
    mask = torch.ones(num_layers, dtype=torch.float32)  # (L,)
    mask[layer] = 0.0
    return mask


def write_ffn_aggregate(shot_dir: Path, tasks: Sequence[str]) -> Path | None:
    """aggregate.json: the mean drop over the paper's seen tasks among `tasks` (all of them when none is
    seen; never the unseen or synthetic tasks beside seen ones), and its stable ranking. Written once
    every member has a complete FFN study."""
    from tasks.registry import seen_in

    tasks = seen_in(tasks) or list(tasks)
    drops = {}
    for t in tasks:
        p = shot_dir / f"{t}.json"
        if p.is_file() and "drop" in (data := read_json(p)):
            drops[t] = data["drop"]
    if len(drops) != len(tasks):
        print(f"[ffn aggregate] {shot_dir}: {len(tasks) - len(drops)} task(s) incomplete; aggregate not written",
              file=sys.stderr)
        return None
    n = len(next(iter(drops.values())))
    mean = [sum(d[i] for d in drops.values()) / len(drops) for i in range(n)]
    return write_json(shot_dir / "aggregate.json", {"tasks": sorted(drops), "drop": mean, "ranking": ffn_ranking(mean)})


__all__ = ["FFNOracleSettings", "ffn_knockout_mask", "ffn_oracle", "run_ffn_oracle", "write_ffn_aggregate"]
