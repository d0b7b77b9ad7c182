"""Several masked runs of one evaluation, a chunk of scoring batches at a time, resumable per chunk.

The FFN oracle (prune/oracle.py) runs the unmasked evaluation and L knock-outs of it; with streamed
layers the pruning sweeps (prune/sweeps.py) run every percentage of a (task, shot) together. Both go
through `TaskEvaluation.run_knockouts` (tasks/scoring.py): chunk by chunk, in batch order (records of
every layer's input on the host) or in layer order (opt66b/layer_major.py: the live states of every
run on the compute device, each streamed layer fetched once per chunk). What a chunk holds is
`copies` times the residual stream of its batches, so the chunk is the largest number of batches
whose copies fit the memory budget (`Scorer.chunk_units`). Each chunk's partial sums (per-request
log-likelihoods and greedy misses, for the requests its batches score) are kept in one fingerprinted
safetensors file (opt66b.runs.layout.knockout_chunk): a killed run resumes at the first missing chunk, and
a chunk file is reused only for the same evaluation, runs and chunk size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch

from opt66b.fileio import Progress
from opt66b.runs.results import read_tensors
from opt66b.runs.layout import knockout_chunk
from opt66b.runs.store import UnitStore


def chunk_store(store: UnitStore, task_dir: Path, fields: dict[str, Any], evaluation: Any, size: int,
                names: dict[Any, str], bar: Progress) -> dict[str, Any]:
    """{"done", "on_chunk"} for TaskEvaluation.run_knockouts: each chunk's partial log-likelihoods and
    greedy misses, for the unique requests its batches score only, in a fingerprinted safetensors unit.
    names: run key ("base" and each run's key) -> the tensor-name prefix it is stored under."""
    units = evaluation.scorer.units
    owners = {first: torch.unique(torch.cat([p.owner for u in units[first:first + size] for p in (u.main, *u.conts)]))
              for first in range(0, len(units), size)}
    n = len(evaluation.scorer.unique)
    keys = {name: key for key, name in names.items()}
    done: dict[int, dict[Any, tuple[torch.Tensor, torch.Tensor]]] = {}
    for first, idx in owners.items():
        path = knockout_chunk(task_dir, size, first)
        if not store.done(path, **fields, chunk=first, chunk_units=size):
            continue
        tensors = read_tensors(path)[0]
        if any(f"{name}.lls" not in tensors for name in keys):  # written for other runs: run the chunk again
            continue
        part = {}
        for name, key in keys.items():
            lls, misses = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.long)
            lls[idx], misses[idx] = tensors[f"{name}.lls"], tensors[f"{name}.misses"]
            part[key] = (lls, misses)
        done[first] = part
        bar.update()

    def save(first: int, part: dict[Any, tuple[torch.Tensor, torch.Tensor]]) -> None:
        idx = owners[first]
        tensors = {"owners": idx}
        for key, (lls, misses) in part.items():
            tensors[f"{names[key]}.lls"], tensors[f"{names[key]}.misses"] = lls[idx], misses[idx]
        store.write_tensors(knockout_chunk(task_dir, size, first), tensors, None, **fields, chunk=first,
                            chunk_units=size)
        bar.update()
    return {"done": done, "on_chunk": save}


def evaluate_together(evaluation: Any, masks: Sequence[tuple[Any, Any]], cache: Any, budget: int | None,
                      store: UnitStore, task_dir: Path, fields: dict[str, Any], label: str,
                      identity: str | None = None) -> int:
    """Every (head_mask, ffn_mask) of `masks` not yet in `cache` (tasks.evaluation.EvaluationCache), in layer
    order over chunks (one fetch of each streamed layer per chunk for all of them): the first is the others'
    base (every run starts at layer 0, so none shares another's layers, and no unmasked run is added that no
    cell asked for); their metrics go into the cache, where the caller finds them. Chunk files under
    task_dir/together-<masks digest>/chunks-C/, fingerprinted with `fields` and the runs' masks. Returns the
    runs computed (0 when every mask was cached), so the caller can count their work. identity: the
    evaluation's key in the cache (tasks.evaluation.evaluation_identity; default its own identity())."""
    new: dict[tuple, tuple[Any, Any]] = {}
    for head_mask, ffn_mask in masks:
        key = cache.key_of(identity, head_mask, ffn_mask) if identity else cache.key(evaluation, head_mask, ffn_mask)
        if key not in cache:
            new.setdefault(key, (head_mask, ffn_mask))
    if not new:
        return 0
    base, *rest = new.values()
    runs = [(i, head, ffn, 0) for i, (head, ffn) in enumerate(rest)]
    size = evaluation.scorer.chunk_units(budget, 1 + len(runs))
    chunks = -(-len(evaluation.scorer.units) // size)
    bar = Progress(chunks, f"{label}: {len(new)} runs in layer order, chunks of {size} batches")
    masks_id = hashlib.sha256(b"".join(h + b"|" + f + b";" for _, h, f in new)).hexdigest()
    names = {"base": "base", **{i: f"run-{i:03d}" for i, *_ in runs}}
    # the runs' own directory: torchrun processes splitting a (task, shot)'s cells never share chunk files
    res = evaluation.run_knockouts(runs, size, layer_major=True, base=base,
                                   **chunk_store(store, Path(task_dir) / f"together-{masks_id[:16]}",
                                                 {**fields, "runs_sha256": masks_id}, evaluation, size, names, bar))
    cache.put(evaluation, res["base"], *base, identity=identity)
    for i, head, ffn, _ in runs:
        cache.put(evaluation, res[i], head, ffn, identity=identity)
    return len(new)


__all__ = ["chunk_store", "evaluate_together"]
