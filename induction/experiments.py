"""The `induction prefix` and `induction copying` steps: prefix-matching and copying scores per head over
seeded random sequences (Bansal et al. 2023 §6.3, Appendix A.8).

    model, tok, info = opt66b.load("~/ckpt/opt-1.3b")
    run_prefix_matching(model, tok, info, PrefixSettings(seeds=100, out="runs/induction"))
    run_copying(model, tok, info, CopyingSettings(seeds=100, out="runs/induction"))

Seed s draws its sequence with numpy default_rng(s) from the merge-rank pool (induction/sequences.py);
per-seed units are fingerprinted (opt66b.runs.store) and reused on rerun. Each returns {"summary":
{variant: {"mean", "var", "scores"}}, "work": forward passes and tokens computed by this call}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from opt66b.fileio import sha256_file
from opt66b.runs.store import UnitStore, Work, in_memory_info, model_fingerprint

from opt66b.cost import ModelShape
from opt66b.runs.settings import ModelStep, option

from . import sequences as sq
from .copying import DIRECT
from .copying import VARIANTS as COPYING_VARIANTS
from .copying import copying_seed
from .prefix_matching import VARIANTS as PREFIX_VARIANTS
from .prefix_matching import prefix_matching_seed
from .runner import run_seeds


def _run(s: "ScoreSettings", model: Any, tokenizer: Any, info: dict[str, Any] | None, fields: dict[str, Any],
         make: Callable[[list[int], int, int], torch.Tensor],
         score: Callable[[torch.Tensor, list[str], int], dict[str, torch.Tensor]],
         passes: Callable[[list[str]], int]) -> dict[str, Any]:
    """The seed loop of either score: sequences from the merge-rank pool, per-seed units, the summary."""
    variants = s.check()
    seeds, first_seed, exclude_ratio = s.seeds, s.first_seed, s.exclude_ratio
    start_length, length_step = s.start_length, s.length_step
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
                       "length_step": length_step, **fields}, recompute=s.recompute)
    work = Work()

    shape = ModelShape.of(model)
    units = {u.key[1]: u for u in s.units(shape, tokenizer)}
    by_length = {length(seed) * sq.REPEATS + 1: units[seed] for seed in seed_list}  # a sequence's unit, by its length

    def counted(tokens: torch.Tensor, vs: list[str]) -> dict[str, torch.Tensor]:
        n = passes(vs)
        work.add(forward=n, tokens=n * tokens.numel(), flops=by_length[tokens.numel()].flops(shape.rule))
        return score(tokens, vs, (tokens.numel() - 1) // 4)

    summary = run_seeds("prefix_matching" if s.KIND == "prefix" else "copying", seed_list, variants, s.out, lambda seed: make(pool, seed, length(seed)), counted,
                        settings, top=s.top, store=store, costs=[units[seed].flops(shape.rule) for seed in seed_list])
    return {"summary": summary, "work": work.as_dict()}


def selected_variants(kind: str, variant: str) -> list[str]:
    """The score variants --variant asks for: "all" = every variant of the score, "both" = the paper's
    released code and its correction (prefix: corrected; copying: text); corrected exists for prefix
    matching only, index_fix, attended_logits and residual for copying only (ValueError otherwise)."""
    available = list(PREFIX_VARIANTS if kind == "prefix" else COPYING_VARIANTS)
    both = ["paper", "corrected"] if kind == "prefix" else ["paper", "text"]
    variants = {"all": available, "both": both}.get(variant, [variant])
    if any(v not in available for v in variants):
        raise ValueError(f"--variant {variant} does not exist for `induction {kind}`; "
                         f"choose from {', '.join(available)}, both or all")
    return variants


@dataclass(frozen=True, kw_only=True)
class ScoreSettings(ModelStep):
    """What `run.py induction prefix` and `induction copying` share: per-head scores on repeated random
    sequences, one per seed."""

    KIND: ClassVar[str] = ""  # prefix | copying
    seeds: int = option(100)
    first_seed: int = option(0, flag="--seed")
    variant: str = option("all")
    out: Path = option(None)
    exclude_ratio: float = option(sq.EXCLUDE_RATIO)
    start_length: int = option(sq.START_LENGTH)
    length_step: int = option(sq.LENGTH_STEP)
    top: int = option(20)

    def check(self) -> list[str]:
        """The variants asked for, after checking every value."""
        if self.seeds < 1 or self.first_seed < 0:
            raise ValueError(f"--seeds must be >= 1 and --seed >= 0, got {self.seeds} and {self.first_seed}")
        if self.start_length < 1 or self.length_step < 0:
            raise ValueError("--start-length must be >= 1 and --length-step >= 0")
        return selected_variants(self.KIND, self.variant)

    def units(self, shape: Any, tokenizer: Any = None, done: Any = None) -> list[Any]:
        """The work units (opt66b.cost) the run splits and the plan prices: one sequence (seed) each. Prefix
        matching runs one captured forward (the attention probabilities kept); copying's residual variant runs
        one, its direct-path variants (paper, index_fix, attended_logits, text) run layer pieces on the
        embedding-level input, no model pass: counted in FLOPs only (q, k, v of the input, the (T, T)
        attention, the OV readout; "text" adds the attention-weighted readout, a (T, T) x (T, T) per head)."""
        from opt66b.cost import Passes, Run, WorkUnit

        cfg, variants = shape.cfg, self.check()
        d = cfg.hidden_size
        units = []
        for seed in range(self.first_seed, self.first_seed + self.seeds):
            t = sq.REPEATS * sq.base_length(seed, self.start_length, self.length_step) + 1
            one = Run(Passes((((1, t, t, t, 0, 0),),)), scores=True)
            if self.KIND == "prefix":
                units.append(WorkUnit((self.KIND, seed), [one], extra=cfg.num_heads * t * t * 4))
                continue
            readout = cfg.num_layers * (2 * t * d * d + 2 * t * t * d)  # unembedded ids through W_O, (T, T) per head
            pieces = cfg.num_layers * (2 * t * 3 * d * d + 2 * t * t * d) + readout
            direct = len(set(DIRECT) & set(variants))
            weighted = cfg.num_layers * cfg.num_heads * 2 * t ** 3 * ("text" in variants)
            units.append(WorkUnit((self.KIND, seed), [one] if "residual" in variants else [],
                                  extra_flops=readout * ("residual" in variants) + pieces * direct + weighted))
        return units

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, int]:
        model = loaded[0]
        res = (run_prefix_matching if self.KIND == "prefix" else run_copying)(*loaded, self)
        name = "prefix_matching" if self.KIND == "prefix" else "copying"
        heads = model.config.num_heads
        for v, scores in res["summary"].items():
            flat = int(torch.argmax(scores["mean"]))
            print(f"{name} {v}: top head layer {flat // heads} head {flat % heads} "
                  f"score {float(scores['mean'].flatten()[flat]):.4f} -> {self.out}/{name}_{v}.json")
        return res["work"]


@dataclass(frozen=True, kw_only=True)
class PrefixSettings(ScoreSettings):
    """`run.py induction prefix`: prefix-matching scores."""

    COMMAND = ("induction", "prefix")
    KIND = "prefix"


@dataclass(frozen=True, kw_only=True)
class CopyingSettings(ScoreSettings):
    """`run.py induction copying`: copying scores, `head_chunk` heads at a time in the direct-path variants."""

    COMMAND = ("induction", "copying")
    KIND = "copying"
    head_chunk: int = option(8)


def run_prefix_matching(model: Any, tokenizer: Any, info: dict[str, Any] | None, s: PrefixSettings) -> dict[str, Any]:
    """Prefix-matching score per head, seeds s.first_seed.. (BOS + 4 repeats of 25 + 2s distinct tokens, one
    forward each). Writes s.out/prefix_matching_<variant>.{safetensors,json} and s.out/seeds/*."""
    bos = tokenizer.bos_id
    return _run(s, model, tokenizer, info, {},
                make=lambda pool, seed, n: sq.prefix_sequence(pool, seed, bos, n),
                score=lambda tokens, vs, n: prefix_matching_seed(model, tokens, n, vs),
                passes=lambda vs: 1)


def run_copying(model: Any, tokenizer: Any, info: dict[str, Any] | None, s: CopyingSettings) -> dict[str, Any]:
    """Copying score per head, seeds s.first_seed.. (BOS + 4(25 + 2s) distinct tokens; one forward per
    variant that runs the model). s.head_chunk bounds memory; as the batch shape of the per-head products it
    can move the last float bits, so it is part of the units' fingerprint. Writes
    s.out/copying_<variant>.{safetensors,json}."""
    bos = tokenizer.bos_id
    return _run(s, model, tokenizer, info, {"head_chunk": s.head_chunk},
                make=lambda pool, seed, n: sq.copying_sequence(pool, seed, bos, 4 * n),
                score=lambda tokens, vs, n: copying_seed(model, tokens, vs, head_chunk=s.head_chunk),
                # only the residual variant runs the model; the direct-path ones (copying.DIRECT) run
                # layer pieces on the embedding-level input (no model pass), as the plan counts them
                passes=lambda vs: int("residual" in vs))
