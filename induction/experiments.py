"""The task-agnostic induction study as functions of a loaded model: prefix matching and copying
scores per head over seeded random sequences (Bansal et al. 2023 §7, Appendix A.8).

    model, tok, info = opt66b.load("~/ckpt/opt-1.3b")
    run_prefix_matching(model, tok, info, "runs/induction", seeds=100)
    run_copying(model, tok, info, "runs/induction", seeds=100)
    run_capacity("runs/induction", "runs/importance", "runs/capacity")   # induction.capacity

Seed s draws its sequence with numpy default_rng(s) from the merge-rank pool (induction/sequences.py);
per-seed units are fingerprinted (opt66b.runs.store) and reused on rerun. Each returns {"summary":
{variant: {"mean", "var", "scores"}}, "work": forward passes and tokens computed by this call}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from opt66b.fileio import sha256_file
from opt66b.runs.store import UnitStore, Work, in_memory_info, model_fingerprint

from . import sequences as sq
from .copying import VARIANTS as COPYING_VARIANTS
from .copying import copying_seed
from .prefix_matching import VARIANTS, prefix_matching_seed
from .runner import run_seeds


def _run(kind: str, model: Any, tokenizer: Any, info: dict[str, Any] | None, out: str | Path, seeds: int,
         first_seed: int, variants: Sequence[str], exclude_ratio: float, start_length: int, length_step: int,
         top: int, recompute: bool, fields: dict[str, Any],
         make: Callable[[list[int], int, int], torch.Tensor],
         score: Callable[[torch.Tensor, list[str], int], dict[str, torch.Tensor]],
         passes: Callable[[list[str]], int]) -> dict[str, Any]:
    if seeds < 1 or first_seed < 0:
        raise ValueError(f"--seeds must be >= 1 and --first-seed >= 0, got {seeds} and {first_seed}")
    if start_length < 1 or length_step < 0:
        raise ValueError("--start-length must be >= 1 and --length-step >= 0")
    info = info or in_memory_info(model)
    cfg = model.config
    seed_list = list(range(first_seed, first_seed + seeds))
    pool = sq.token_pool(tokenizer, exclude_ratio)
    if max(pool) >= cfg.vocab_size:
        raise ValueError(f"token pool reaches id {max(pool)} but the model has {cfg.vocab_size} embedding rows; "
                         "does the tokenizer belong to this model?")

    def length(seed: int) -> int:
        return sq.base_length(seed, start_length, length_step)

    longest = 4 * length(seed_list[-1]) + 1
    if longest > cfg.max_positions:
        raise ValueError(f"seed {seed_list[-1]} needs {longest} positions but the model has {cfg.max_positions}; "
                         "use fewer seeds or a smaller --start-length/--length-step")
    merges = tokenizer.merges_path
    settings = {**info, "exclude_ratio": exclude_ratio, "pool_size": len(pool),
                "merges_sha256": sha256_file(merges) if merges else None, "start_length": start_length,
                "length_step": length_step, "rng": "numpy.random.default_rng(seed)"}
    store = UnitStore({**model_fingerprint(info), "exclude_ratio": exclude_ratio, "start_length": start_length,
                       "length_step": length_step, **fields}, recompute=recompute)
    work = Work()

    def counted(tokens: torch.Tensor, vs: list[str]) -> dict[str, torch.Tensor]:
        n = passes(vs)
        work.add(forward=n, tokens=n * tokens.numel())
        return score(tokens, vs, (tokens.numel() - 1) // 4)

    summary = run_seeds(kind, seed_list, list(variants), out, lambda s: make(pool, s, length(s)), counted, settings,
                        top=top, store=store)
    return {"summary": summary, "work": work.as_dict()}


def run_prefix_matching(model: Any, tokenizer: Any, info: dict[str, Any] | None, out: str | Path, *,
                        seeds: int = 100, first_seed: int = 0, variants: Sequence[str] = VARIANTS,
                        exclude_ratio: float = sq.EXCLUDE_RATIO, start_length: int = sq.START_LENGTH,
                        length_step: int = sq.LENGTH_STEP, top: int = 20, recompute: bool = False) -> dict[str, Any]:
    """Prefix-matching score per head, seeds first_seed.. (BOS + 4 repeats of 25 + 2s distinct tokens,
    one forward each). Writes out/prefix_matching_<variant>.{safetensors,json} and out/seeds/*."""
    bos = tokenizer.bos_id
    return _run("prefix_matching", model, tokenizer, info, out, seeds, first_seed, variants, exclude_ratio,
                start_length, length_step, top, recompute, {},
                make=lambda pool, s, n: sq.prefix_sequence(pool, s, bos, n),
                score=lambda tokens, vs, n: prefix_matching_seed(model, tokens, n, vs),
                passes=lambda vs: 1)


def run_copying(model: Any, tokenizer: Any, info: dict[str, Any] | None, out: str | Path, *, seeds: int = 100,
                first_seed: int = 0, variants: Sequence[str] = COPYING_VARIANTS, exclude_ratio: float = sq.EXCLUDE_RATIO,
                start_length: int = sq.START_LENGTH, length_step: int = sq.LENGTH_STEP, head_chunk: int = 8,
                top: int = 20, recompute: bool = False) -> dict[str, Any]:
    """Copying score per head, seeds first_seed.. (BOS + 4(25 + 2s) distinct tokens; one forward per
    variant). head_chunk bounds memory; as the batch shape of the per-head products it can move
    the last float bits, so it is part of the units' fingerprint. Writes out/copying_<variant>.{safetensors,json}."""
    bos = tokenizer.bos_id
    return _run("copying", model, tokenizer, info, out, seeds, first_seed, variants, exclude_ratio,
                start_length, length_step, top, recompute, {"head_chunk": head_chunk},
                make=lambda pool, s, n: sq.copying_sequence(pool, s, bos, 4 * n),
                score=lambda tokens, vs, n: copying_seed(model, tokens, vs, head_chunk=head_chunk),
                # only the residual variant runs the model; the direct-path ones (paper, index_fix, text) run
                # layer pieces on the embedding-level input (no model pass), as study/plan.py counts them
                passes=lambda vs: int("residual" in vs))
