"""Seed loop shared by `run.py induction prefix` and `run.py induction copying`: resumable per seed,
mean and unbiased variance over seeds, safetensors + JSON outputs.

Mirrors the seed loop of amazon-science/llm-interpret lm_eval/prefix_matching_copying.py
(seeds 0..99, each seed weighted equally, `torch.var` (unbiased) over seeds; docs/method.md), with
explicit per-seed RNGs and no pickle.

Layout written under OUT:
    seeds/{kind}_{variant}_seed_{s}.safetensors  "scores" (L, H), "tokens" (T,)   one per finished seed
    {kind}_{variant}.safetensors   "mean", "var" (L, H), "scores" (S, L, H), "tokens" (S, Tmax) padded
                                   with <pad> (1), "lengths" (S,), "seeds" (S,)
    {kind}_{variant}.json          settings, seeds, top heads (layer, head, mean, var)
kind is "prefix_matching" or "copying". A killed run resumes: finished seeds whose fingerprint
matches (opt66b.runs.store) are read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from opt66b.fileio import Progress
from opt66b.runs.results import check_finite_heads, read_tensors, run_metadata, write_json, write_tensors
from opt66b.runs.store import UnitStore

from .sequences import pack

ScoreFn = Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]]  # (tokens, variants) -> {variant: (L, H)}


def seed_path(out: Path, kind: str, variant: str, seed: int) -> Path:
    return out / "seeds" / f"{kind}_{variant}_seed_{seed}.safetensors"


def run_seeds(kind: str, seeds: Sequence[int], variants: Sequence[str], out: str | Path,
              make_tokens: Callable[[int], torch.Tensor], score: ScoreFn, settings: dict[str, Any],
              top: int = 20, store: UnitStore | None = None,
              costs: Sequence[float] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Score this process's share of the seeds (by `costs`, opt66b.runs.distributed.my_units; seeds whose
    unit files hold the same fingerprint are skipped), then, after every process, aggregate per variant
    (rank 0 writes the aggregates).

    make_tokens(seed) -> (T,) int64 sequence; score(tokens, missing_variants) -> {variant: (L, H)}
    store fingerprints each seed file (kind, variant, seed
    on top of its common fields). Returns {variant: {"mean", "var", "scores"}}.
    """
    from opt66b.runs.distributed import barrier, is_main, my_units

    out = Path(out)
    store = store or UnitStore({})
    if not seeds:
        raise ValueError("no seeds to run; pass --seeds N with N >= 1")
    mine = my_units(list(seeds), costs)
    progress = Progress(len(mine), kind)
    for s in mine:
        tokens = make_tokens(s)
        missing = [v for v in variants if not store.done(seed_path(out, kind, v, s), kind=kind, variant=v, seed=s)]
        if missing:
            results = score(tokens, missing)
            for v in missing:
                check_finite_heads(results[v], f"{kind} ({v}) seed {s}")
                meta = run_metadata(kind=kind, variant=v, seed=s, **settings)
                store.write_tensors(seed_path(out, kind, v, s), {"scores": results[v], "tokens": tokens}, meta,
                                    kind=kind, variant=v, seed=s)
        progress.update()
    barrier()  # every process's seeds are on disk
    return {v: _aggregate(out, kind, v, seeds, settings, top, write=is_main()) for v in variants}


def _aggregate(out: Path, kind: str, variant: str, seeds: Sequence[int], settings: dict[str, Any],
               top: int, write: bool = True) -> dict[str, torch.Tensor]:
    scores, seqs = [], []
    for s in seeds:
        path = seed_path(out, kind, variant, s)
        tensors, _ = read_tensors(path)
        if "scores" not in tensors or "tokens" not in tensors:
            raise KeyError(f"{path}: lacks 'scores' or 'tokens'; delete it to recompute seed {s}")
        scores.append(tensors["scores"])
        seqs.append(tensors["tokens"])
    stacked = torch.stack(scores)  # (S, L, H)
    mean = stacked.mean(0)
    # Unbiased variance over seeds as the paper's torch.var; undefined (NaN) for a single seed.
    var = stacked.var(0, unbiased=True) if len(seeds) > 1 else torch.full_like(mean, float("nan"))
    if not write:
        return {"mean": mean, "var": var, "scores": stacked}
    tokens, lengths = pack(seqs)
    meta = run_metadata(kind=kind, variant=variant, seeds=list(seeds), **settings)
    write_tensors(out / f"{kind}_{variant}.safetensors",
                  {"mean": mean, "var": var, "scores": stacked, "tokens": tokens, "lengths": lengths,
                   "seeds": torch.tensor(list(seeds), dtype=torch.int64)}, meta)
    write_json(out / f"{kind}_{variant}.json", {**meta, "top_heads": top_heads(mean, var, top)})
    return {"mean": mean, "var": var, "scores": stacked}


def top_heads(mean: torch.Tensor, var: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """The k highest-mean heads as [{"layer", "head", "score", "var"}], best first."""
    n_heads = mean.shape[1]
    order = torch.argsort(mean.flatten(), descending=True, stable=True)[:k]
    return [{"layer": int(i) // n_heads, "head": int(i) % n_heads, "score": float(mean.flatten()[i]),
             "var": None if torch.isnan(var.flatten()[i]) else float(var.flatten()[i])} for i in order]
