"""The oracle FFN study as a resumable unit loop: every FFN knocked out alone, per (task, shot).

Mirrors amazon-science/llm-interpret's mask_iterative_fc runs and scripts/plotting/fc_importance.py;
docs/method.md ("FFN importance"). The measure itself (drop = base - metric with FFN l removed) is
prune/importance.ffn_importance; this module runs it over tasks and shots, chunk by chunk
(prune/chunks.py), and writes the files:

    OUT/shots-K/task/layer-XXX.json      one knocked-out layer's metrics (+ base.json)
    OUT/shots-K/task/chunks-C/           each chunk's partial log-likelihoods (resume)
    OUT/shots-K/task.json                {drop, base, ranking}
    OUT/shots-K/aggregate.json           the mean drop over the seen tasks and its ranking
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from opt66b.runs.distributed import barrier, my_units, rank_world
from opt66b.fileio import Progress, read_json
from opt66b.runs.results import write_json
from opt66b.layer_major import DEFAULT_CHUNK_BUDGET, streams_layers
from opt66b.runs.layout import knockout_base, knockout_unit, shots_dir
from opt66b.runs.store import UnitStore, Work
from tasks.evaluate import task_fingerprint

from .chunks import chunk_store
from .masks import ffn_ranking
from .sweeps import EvaluationFactory, evaluation_work



def run_ffn_importance(model: Any, tokenizer: Any, tasks: dict[str, Any], shots: Sequence[int], out_dir: Path,
                       make_evaluation: EvaluationFactory, cached: bool = True,
                       settings: dict[str, Any] | None = None, store: UnitStore | None = None,
                       work: Work | None = None, record_budget: int | None = DEFAULT_CHUNK_BUDGET) -> list[Path]:
    """Per (task, shot): knock each FFN out alone; units OUT/shots-K/task/layer-XXX.json (+ base.json);
    merged OUT/shots-K/task.json {drop, base, ranking}; OUT/shots-K/aggregate.json ranks the mean drop.

    The (task, shot) pair is the torchrun split unit here: the layer loop shares one recorded base
    pass (layer inputs), which must stay in one process. store: fingerprints the files (see
    run_sweep); work counts one scorer plan per run (the base run plus one per new layer; with
    cached=True a knockout run recomputes layers l.. only). record_budget: host bytes the recorded
    layer inputs may take at once; the base and the knock-outs then run that many scoring batches at a
    time (chunks, saved under OUT/shots-K/task/chunks-C/ so a killed run resumes per chunk). None:
    one chunk holding the whole task (the unbounded behaviour of earlier releases). With streamed
    layers the chunk runs layer by layer (opt66b/layer_major.py: weights cross once per chunk) and
    record_budget bounds its live states on the compute device instead (L + 1 streams, not L).
    """
    from opt66b.runs.results import run_metadata

    from .importance import ffn_importance

    store = store or UnitStore({})
    num_layers = model.config.num_layers
    pairs = [(t, k) for t in tasks for k in shots]
    written = []
    for task_name, k in my_units(pairs):
        unit_dir = shots_dir(out_dir, k) / task_name
        merged = shots_dir(out_dir, k) / f"{task_name}.json"
        fields = {**task_fingerprint(tasks[task_name]), "shots": k}
        if store.done(merged, **fields):
            continue
        done = {}
        for layer in range(num_layers):
            p = knockout_unit(unit_dir, layer)
            if store.done(p, **fields, layer=layer):
                done[layer] = read_json(p)["metrics"]
        evaluation = make_evaluation(model, tokenizer, tasks[task_name], k)
        metric = tasks[task_name].PRIMARY_METRIC

        def save(layer: int, metrics: dict[str, float], _dir: Path = unit_dir, _fields=fields) -> None:
            store.write_json(knockout_unit(_dir, layer), {"layer": layer, "metrics": metrics}, **_fields,
                             layer=layer)

        todo = num_layers - len(done)
        chunking = {}
        if cached and todo and hasattr(evaluation, "run_knockouts"):
            layer_major = streams_layers(model)  # Scorer.run_knockouts takes layer order then
            size = evaluation.scorer.chunk_units(record_budget, num_layers + 1 if layer_major else num_layers)
            order = "layer order, states on the compute device" if layer_major else "batch order"
            bar = Progress(-(-len(evaluation.scorer.units) // size),
                           f"ffn oracle {task_name} {k}-shot (chunks of {size} batches, {order})")
            names = {"base": "base", **{layer: f"layer-{layer:03d}" for layer in range(num_layers)}}
            chunking = {"chunk_units": size, "chunks": chunk_store(store, unit_dir, fields, evaluation, size,
                                                                   names, bar)}
        else:
            bar = Progress(todo, f"ffn oracle {task_name} {k}-shot") if todo else None
        res = ffn_importance(evaluation, num_layers, metric, done=done, on_layer=save, cached=cached,
                             progress=bar.update if bar and not chunking else None, **chunking)
        if work is not None:
            per_run = evaluation_work(evaluation)
            for _ in range(1 + todo):
                work.add(**per_run)
        write_json(knockout_base(unit_dir), {"metrics": res["base_metrics"]})
        res.update(task=task_name, shots=k, meta=run_metadata(**{**(settings or {}), "shots": k, "cached": cached}))
        store.write_json(merged, res, **fields)
        written.append(merged)
    barrier()
    if rank_world()[0] == 0:
        for k in shots:
            write_ffn_aggregate(shots_dir(out_dir, k), list(tasks))
    return written


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


__all__ = ["run_ffn_importance", "write_ffn_aggregate"]
