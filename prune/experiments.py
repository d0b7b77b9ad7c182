"""The pruning study's experiments as functions of a loaded model: head importance, the oracle FFN
study and the head / FFN / grid pruning sweeps (Bansal et al. 2023 §4-5).

Each takes (model, tokenizer, info) from `opt66b.load`, the data directory, task names and shot
counts, writes its unit files under `out` through one opt66b.runs.store.UnitStore (a unit on disk is
reused only when its fingerprint matches; recompute=True replaces mismatching units), and returns
{"out": ..., "work": {"forward_passes", "backward_passes", "tokens"}} for what it computed.

    model, tok, info = opt66b.load("~/ckpt/opt-1.3b")
    run_head_importance(model, tok, info, "data", ["copa"], [0, 1], "runs/imp", n_docs=100)
    run_ffn_oracle(model, tok, info, "data", ["copa"], [0, 1], "runs/ffn", limit=100)
    run_prune_sweep(model, tok, info, "data", ["copa"], [0, 1], "runs/prune", sweep="heads",
                    importance="runs/imp")
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from opt66b.runs.results import file_hashes
from opt66b.layer_major import DEFAULT_CHUNK_BUDGET
from opt66b.runs.layout import shots_dir
from opt66b.runs.store import UnitStore, Work, in_memory_info, model_fingerprint
from tasks.evaluate import evaluation_store


def _setup(model: Any, info: dict[str, Any] | None, data: str | Path, tasks: Sequence[str], shots: Sequence[int],
           paper_quirks: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(info, Task objects by name, metadata settings recorded in every output)."""
    from tasks.registry import check_task_args, get_task

    check_task_args(list(tasks), list(shots))
    info = info or in_memory_info(model)
    objects = {t: get_task(t, data, paper_quirks=paper_quirks) for t in dict.fromkeys(tasks)}
    files = [f for task in objects.values() for f in task.data_files()]
    settings = {"model": info, "data_sha256": file_hashes(files), "tasks": list(objects), "shots": list(shots),
                "paper_quirks": paper_quirks}
    return info, objects, settings


def _evaluations(limit: int | None, batch_tokens: int, seed: int):
    """(model, tokenizer, task, shots) -> TaskEvaluation, built once per (task, shot)."""
    from tasks.evaluate import TaskEvaluation

    def make(model, tokenizer, task, shots):
        return TaskEvaluation(model, tokenizer, task, shots, limit=limit, seed=seed, batch_tokens=batch_tokens)
    return make


def run_head_importance(model: Any, tokenizer: Any, info: dict[str, Any] | None, data: str | Path,
                        tasks: Sequence[str], shots: Sequence[int], out: str | Path, *, n_docs: int = 2500,
                        seed: int = 1234, max_length: int | None = None, normalize_per_layer: bool = False,
                        paper_quirks: bool = False, denominator: str = "uniform", seen_tasks: Sequence[str] | None = None,
                        update_aggregate: bool = False, layerwise_backward: bool = False,
                        recompute: bool = False, chunk_budget: int | None = DEFAULT_CHUNK_BUDGET) -> dict[str, Any]:
    """Gradient head importance per (task, shot): out/shots-K/<task>.safetensors with
    'importance_paper_denominator' (L, H) (the paper's: its last layer over target tokens),
    'importance_uniform' (every layer over the position count) and 'importance', the ranking every
    later step reads: the one `denominator` names ("uniform", --protocol corrected; "paper", --protocol
    paper). paper_quirks: the paper's importance targets (prune.cli's --protocol paper). Also
    out/shots-K/aggregate.safetensors, the mean over the seen tasks present (prune/aggregate.py;
    seen_tasks default: the paper's 14; update_aggregate replaces one whose members changed).
    n_docs: first N docs of the importance split; seed: the few-shot demo sampler (the paper's 1234).
    One forward + backward per example (the layer-wise bounded-memory backward when the model
    streams its layers, or with layerwise_backward=True: recorded, not fingerprinted, since it moves
    only the last float bits). chunk_budget: with streamed layers, the bytes a chunk of examples may
    keep on the compute device (every layer's input; prune/importance.example_chunks)."""
    from opt66b.runs.distributed import barrier, my_units, rank_world
    from opt66b.fileio import Progress
    from opt66b.runs.results import run_metadata
    from tasks.evaluate import task_fingerprint

    from .aggregate import PAPER_SEEN_TASKS, check_aggregate_before, write_aggregate
    from .importance import head_score_sums, importance_from_sums
    from .masks import IMPORTANCE_KEY, PAPER_DENOMINATOR_KEY, UNIFORM_IMPORTANCE_KEY

    if n_docs < 1:
        raise ValueError(f"--n-docs must be >= 1, got {n_docs}")
    info, objects, settings = _setup(model, info, data, tasks, shots, paper_quirks)
    out = Path(out)
    length = model.config.max_positions if max_length is None else max_length
    if not 0 < length <= model.config.max_positions:
        raise ValueError(f"--max-length must be in [1, {model.config.max_positions}] (the model's positions), got {length}")
    if denominator not in ("paper", "uniform"):
        raise ValueError(f"denominator must be 'paper' or 'uniform', got {denominator!r}")
    store = UnitStore({**model_fingerprint(info), "seed": seed, "n_docs": n_docs, "max_length": length,
                       "normalize_per_layer": normalize_per_layer, "paper_quirks": paper_quirks,
                       "denominator": denominator}, recompute=recompute)
    for k in shots:  # an aggregate this run would change is refused now, not after hours of work
        check_aggregate_before(shots_dir(out, k), list(objects), seen_tasks or PAPER_SEEN_TASKS, update_aggregate)
    work = Work()
    # (task, shot) is the unit: split across torchrun processes, skipped when its fingerprint matches.
    for name, k in my_units([(t, k) for k in shots for t in objects]):
        path = shots_dir(out, k) / f"{name}.safetensors"
        fields = {**task_fingerprint(objects[name]), "shots": k}
        if store.done(path, **fields):
            continue
        examples = objects[name].importance_examples(n_docs, k, random.Random(seed), paper_quirks=paper_quirks)
        bar = Progress(len(examples), f"importance {name} {k}-shot")
        total, counts = head_score_sums(model, tokenizer, examples, max_length=length, progress=bar.update,
                                        layerwise=layerwise_backward, chunk_budget=chunk_budget)
        work.add(forward=counts["examples"], backward=counts["examples"], tokens=counts["positions"])
        variants = {key: importance_from_sums(total, counts, denom, normalize_per_layer)
                    for key, denom in ((PAPER_DENOMINATOR_KEY, "paper"), (UNIFORM_IMPORTANCE_KEY, "uniform"))}
        variants[IMPORTANCE_KEY] = variants[PAPER_DENOMINATOR_KEY if denominator == "paper" else UNIFORM_IMPORTANCE_KEY].clone()
        store.write_tensors(path, variants, run_metadata(**{
            **settings, "task": name, "shots": k, "seed": seed, "n_docs": n_docs, "counts": counts,
            "normalize_per_layer": normalize_per_layer, "max_length": max_length, "denominator": denominator,
            "backward": "layer-wise" if layerwise_backward or getattr(model, "streamer", None) else "full",
            "importance_is": PAPER_DENOMINATOR_KEY if denominator == "paper" else UNIFORM_IMPORTANCE_KEY}), **fields)
    barrier()
    if rank_world()[0] == 0:
        for k in shots:
            write_aggregate(shots_dir(out, k), seen_tasks or PAPER_SEEN_TASKS, update=update_aggregate,
                            settings={**settings, "shots": k, "seed": seed})
    return {"out": out, "work": work.as_dict()}


def run_ffn_oracle(model: Any, tokenizer: Any, info: dict[str, Any] | None, data: str | Path, tasks: Sequence[str],
                   shots: Sequence[int], out: str | Path, *, limit: int | None = None, seed: int = 42,
                   batch_tokens: int = 4096, cached: bool = True, paper_quirks: bool = False,
                   record_budget: int | None = DEFAULT_CHUNK_BUDGET, recompute: bool = False) -> dict[str, Any]:
    """Oracle FFN importance: per (task, shot) and layer l, base metric - metric with FFN l alone
    removed (points). Units out/shots-K/<task>/layer-XXX.json, merged out/shots-K/<task>.json
    ('drop', 'base', 'ranking'), out/shots-K/aggregate.json. cached=False re-runs every layer (reference).
    record_budget: host bytes of recorded layer inputs held at once (chunked knock-outs, same results;
    None: the whole task at once)."""
    from .oracle import run_ffn_importance

    info, objects, settings = _setup(model, info, data, tasks, shots, paper_quirks)
    settings["batch_tokens"] = batch_tokens  # recorded with the results (a batch shape can move the last bits)
    store = evaluation_store(info, limit=limit, seed=seed, paper_quirks=paper_quirks, recompute=recompute)
    work = Work()
    run_ffn_importance(model, tokenizer, objects, shots, Path(out), _evaluations(limit, batch_tokens, seed),
                       cached=cached, settings={**settings, "limit": limit, "seed": seed}, store=store, work=work,
                       record_budget=record_budget)
    return {"out": Path(out), "work": work.as_dict()}


def run_prune_sweep(model: Any, tokenizer: Any, info: dict[str, Any] | None, data: str | Path, tasks: Sequence[str],
                    shots: Sequence[int], out: str | Path, *, sweep: str, ranking: str = "own",
                    importance: str | Path | None = None, ffn_importance: str | Path | None = None,
                    head_percents: Sequence[float] | None = None, ffn_percents: Sequence[float] | None = None,
                    limit: int | None = None, seed: int = 42, batch_tokens: int = 4096, paper_quirks: bool = False,
                    recompute: bool = False, cache: Any = None, chunk_budget: int | None = DEFAULT_CHUNK_BUDGET) -> dict[str, Any]:
    """Pruning sweep `sweep` ("heads", "ffn" or "grid") with `ranking` ("own", "aggregate" or a task
    name: cross-task transfer) from the outputs of run_head_importance (`importance`) and/or
    run_ffn_oracle (`ffn_importance`). Units under out/<sweep>-<ranking>/, table out/<sweep>-<ranking>.json
    (returned as "table"). cache: a tasks.evaluate.EvaluationCache of this model shared with other
    steps (evaluations they ran are not run again). chunk_budget: with streamed layers, the bytes a
    (task, shot)'s layer-order states may take on the compute device (prune/chunks.py)."""
    from .sweeps import run_sweep

    info, objects, settings = _setup(model, info, data, tasks, shots, paper_quirks)
    settings["batch_tokens"] = batch_tokens  # recorded with the results (a batch shape can move the last bits)
    store = evaluation_store(info, limit=limit, seed=seed, paper_quirks=paper_quirks, recompute=recompute)
    work = Work()
    table = run_sweep(model, tokenizer, objects, sweep, ranking, shots, Path(out), _evaluations(limit, batch_tokens, seed),
                      importance_dir=importance, ffn_dir=ffn_importance, head_percents=head_percents,
                      ffn_percents=ffn_percents, settings={**settings, "limit": limit, "seed": seed, "importance": importance,
                                                          "ffn_importance": ffn_importance},
                      store=store, work=work, cache=cache, chunk_budget=chunk_budget)
    return {"out": Path(out), "table": table, "work": work.as_dict()}


def run_transfer_study(model: Any, tokenizer: Any, info: dict[str, Any] | None, data: str | Path,
                       tasks: Sequence[str], shots: Sequence[int], out: str | Path, *, correlations: dict[str, Any],
                       importance: str | Path, transfer_tasks: Sequence[str] | None = None,
                       head_percents: Sequence[float] | None = None, limit: int | None = None, seed: int = 42,
                       batch_tokens: int = 4096, paper_quirks: bool = False, partners: Sequence[str] | None = None,
                       recompute: bool = False, cache: Any = None, chunk_budget: int | None = DEFAULT_CHUNK_BUDGET) -> dict[str, Any]:
    """Cross-task transfer as the paper runs it (Fig. 9): for each chosen task and shot, head sweeps
    with the rankings of its highest- and lowest-SRCC partners (prune/transfer.py picks them from
    `correlations`, the content of correlations.json); own and aggregate come from the ordinary
    sweeps. Writes out/transfer.json (returned as "table"). cache: as run_prune_sweep's; by default
    one for this call, shared by its partner sweeps (their 0% cells are the same evaluation)."""
    from tasks.evaluate import EvaluationCache

    from .sweeps import run_sweep
    from .transfer import (DEFAULT_PERCENTS, PAPER_TRANSFER_TASKS, PARTNER_CHOICES, PARTNERS_BY_PROTOCOL, run_transfer,
                           transfer_plan)

    partners = list(partners or PARTNERS_BY_PROTOCOL["paper" if paper_quirks else "corrected"])
    unknown = [p for p in partners if p not in PARTNER_CHOICES]
    if unknown:
        raise ValueError(f"--partners must be among {', '.join(PARTNER_CHOICES)}, got {unknown}")
    corr = {**correlations, "shots": {k: v for k, v in correlations.get("shots", {}).items() if int(k) in shots}}
    plan = transfer_plan(corr, transfer_tasks or PAPER_TRANSFER_TASKS, variants=[PARTNER_CHOICES[p] for p in partners])
    missing = sorted({r["task"] for r in plan["runs"]} - set(tasks))
    if missing:
        raise ValueError(f"--tasks must include the transfer targets {missing} (their data is needed)")
    info, objects, settings = _setup(model, info, data, tasks, shots, paper_quirks)
    settings["batch_tokens"] = batch_tokens  # recorded with the results (a batch shape can move the last bits)
    store = evaluation_store(info, limit=limit, seed=seed, paper_quirks=paper_quirks, recompute=recompute)
    work = Work()
    make = _evaluations(limit, batch_tokens, seed)
    cache = cache or EvaluationCache(model)

    def sweep(task, source, shot, out_dir, pcts):
        return run_sweep(model, tokenizer, {task: objects[task]}, "heads", source, shot, out_dir, make,
                         importance_dir=importance, head_percents=pcts,
                         settings={**settings, "limit": limit, "seed": seed, "importance": importance,
                                   "ffn_importance": None}, store=store, work=work, cache=cache,
                         chunk_budget=chunk_budget)

    table = run_transfer(plan, Path(out), sweep, list(head_percents or DEFAULT_PERCENTS))
    return {"out": Path(out), "table": table, "work": work.as_dict()}

