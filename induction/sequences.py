"""Random token sequences for the task-agnostic induction study (prefix matching and copying).

Mirrors the token pool and sequence shapes of amazon-science/llm-interpret
lm_eval/prefix_matching_copying.py (paper Appendix A.8; docs/method.md), with one
deliberate fix: the paper draws tokens with numpy's *global, never seeded* RNG, so its sequences
cannot be reproduced; here every draw goes through `numpy.random.default_rng(seed)` for seed s, and
the sequences are saved next to the scores.

Pool: merges.txt line r produces one token (merge rank r, a frequency proxy). With 50,000 merges and
exclude_ratio 0.04 the first and last int(0.04 * 50000) = 2000 ranks are dropped, leaving ranks
2000..47999 (46,000 candidates); byte-level base tokens and specials are never in the pool.

Lengths per seed s: prefix matching uses base length 25 + 2s repeated 4 times after BOS
(T = 4(25+2s) + 1 = 101..893 for s = 0..99); copying uses 4(25+2s) distinct tokens after BOS.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from opt66b import OPTTokenizer

EXCLUDE_RATIO = 0.04  # the paper's --frequent_exclude_ratio
REPEATS = 4  # prefix matching: the base sequence appears 4 times
START_LENGTH, LENGTH_STEP = 25, 2  # base length 25 + 2s for seed s


def token_pool(tokenizer: OPTTokenizer, exclude_ratio: float = EXCLUDE_RATIO) -> list[int]:
    """Vocabulary ids of merge ranks [cut, n - cut), cut = int(exclude_ratio * n), in rank order."""
    if not 0 <= exclude_ratio < 0.5:
        raise ValueError(f"exclude_ratio must be in [0, 0.5), got {exclude_ratio}")
    ranked = tokenizer.merge_ranked_ids()
    n = len(ranked)
    cut = int(exclude_ratio * n)
    pool = ranked[cut:n - cut]
    if len(set(pool)) != len(pool):
        raise ValueError(f"{tokenizer.merges_path}: merges produce repeated tokens; the pool must be distinct ids")
    return pool


def base_length(seed: int, start: int = START_LENGTH, step: int = LENGTH_STEP) -> int:
    """The paper's per-seed base length 25 + 2s."""
    if seed < 0:
        raise ValueError(f"seeds are non-negative, got {seed}")
    return start + step * seed


def draw_distinct(pool: Sequence[int], n: int, seed: int) -> torch.Tensor:
    """(n,) int64 distinct tokens drawn without replacement from `pool` by numpy default_rng(seed)."""
    if n > len(pool):
        raise ValueError(f"cannot draw {n} distinct tokens from a pool of {len(pool)}; "
                         "lower the sequence length or the exclude ratio")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pool), size=n, replace=False)
    return torch.as_tensor(np.asarray(pool, dtype=np.int64)[idx])


def prefix_sequence(pool: Sequence[int], seed: int, bos_id: int, length: int | None = None,
                    repeats: int = REPEATS) -> torch.Tensor:
    """(1 + repeats * L,) int64: BOS then `repeats` copies of L = length (default 25 + 2s) distinct tokens."""
    length = base_length(seed) if length is None else length
    seq = draw_distinct(pool, length, seed)
    return torch.cat([torch.tensor([bos_id]), seq.repeat(repeats)])


def copying_sequence(pool: Sequence[int], seed: int, bos_id: int, length: int | None = None) -> torch.Tensor:
    """(1 + N,) int64: BOS then N = length (default 4 (25 + 2s)) distinct, non-repeated tokens."""
    length = REPEATS * base_length(seed) if length is None else length
    return torch.cat([torch.tensor([bos_id]), draw_distinct(pool, length, seed)])


def pack(seqs: Sequence[torch.Tensor], pad_id: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D sequences into (S, Tmax) int64 plus (S,) lengths (how they are saved)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    out = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), pad_id, dtype=torch.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, lengths


def unpack(tokens: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of `pack`."""
    return [tokens[i, :int(n)] for i, n in enumerate(lengths)]
