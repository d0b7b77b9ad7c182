"""Prefix-matching score per attention head (the paper's "Algorithm 1" as its code runs it, and a fix).

Mirrors amazon-science/llm-interpret lm_eval/prefix_matching_copying.py (paper Appendix A.8,
Algorithm 1; the peer definition is TransformerLens' induction score; docs/method.md).

Input: BOS + the same L distinct tokens repeated R (= 4) times, one forward pass. For a query j in
repeats 2..R, a head's score is the attention mass from j onto the positions that *follow* an earlier
occurrence of token_j (summed over all earlier copies), averaged over the (R-1)L queries. BOS
attention is neither excluded nor renormalised, so a score lies in [0, 1]: 1 is a perfect induction
head, a previous-token or BOS-sink head scores ~0.

    position   0    1   2  ...  L    L+1  L+2 ... 2L   2L+1 ...
    token     BOS   a1  a2 ...  aL   a1   a2  ... aL   a1   ...
    query j = L+2 (token a2): earlier a2 at 2           -> key 3    (a3)       both variants
    query j = 2L  (token aL): earlier aL at L           -> key L+1  (a1)       both variants
                              paper's k = nL + (j mod L) + 1, n = 0: key 1 (a1) -- spurious

Variants:
    "paper": keys k = n*L + (j mod L) + 1 for n = 0 .. floor(j/L) - 1. When j mod L = 0 (the last
        token of repeats 2..R) n = 0 gives k = 1, the first token after BOS, which follows no
        occurrence of token_j: R-1 of the (R-1)L queries carry one spurious key.
    "corrected": keys k = j - n*L + 1 for every n >= 1 with j - n*L >= 1 (a real earlier occurrence).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from opt66b import OPT, Capture

VARIANTS = ("paper", "corrected")


def key_mask(length: int, total: int, variant: str) -> torch.Tensor:
    """(T, T) float32 0/1 target keys per query row (T = total positions, L = length). Rows of BOS
    and of the first repeat are all zero."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown prefix-matching variant {variant!r}; choose from {VARIANTS}")
    repeats, rest = divmod(total - 1, length)
    if length < 1 or rest != 0 or repeats < 2:
        raise ValueError(f"a prefix-matching sequence is BOS + >= 2 repeats of L tokens; "
                         f"got T={total} positions for L={length}")
    mask = torch.zeros(total, total)
    for j in range(length + 1, total):
        if variant == "paper":
            keys = [n * length + (j % length) + 1 for n in range(j // length)]
        else:
            keys = [j - n * length + 1 for n in range(1, (j - 1) // length + 1)]
        mask[j, keys] = 1.0
    return mask


def prefix_scores(attn: torch.Tensor, length: int, variant: str = "paper") -> torch.Tensor:
    """Per-head score from one sequence's post-softmax attention.

    attn: (H, T, T) rows = queries, columns = keys, for BOS + R repeats of `length` tokens.
    Returns (H,) float32: mean over queries j = L+1 .. T-1 of the summed attention on the key set.
    """
    if attn.dim() != 3 or attn.shape[1] != attn.shape[2]:
        raise ValueError(f"attention must be (heads, T, T), got shape {tuple(attn.shape)}")
    total = attn.shape[-1]
    mask = key_mask(length, total, variant).to(attn.device)
    per_query = (attn.float() * mask).sum(-1)  # (H, T) mass on the target keys
    return per_query[:, length + 1:].mean(-1)  # (H,) over the (R-1)L queries


class _ScoringCapture(Capture):
    """A Capture that turns each layer's attention into prefix scores at once and keeps no pattern,
    so one forward on a 64-layer model holds one layer's (H, T, T) at a time."""

    def __init__(self, length: int, variants: Sequence[str], num_layers: int, num_heads: int):
        super().__init__(probs=True)
        self.length = length
        self.masks: dict[tuple[str, torch.device], torch.Tensor] = {}
        self.variants = list(variants)
        self.scores = {v: torch.full((num_layers, num_heads), float("nan")) for v in self.variants}

    def record_probs(self, layer: int, probs: torch.Tensor) -> None:
        if probs.shape[0] != 1:
            raise ValueError(f"prefix matching runs one sequence per forward, got batch {probs.shape[0]}")
        attn = probs[0]  # (H, T, T)
        for v in self.variants:
            key = (v, attn.device)
            if key not in self.masks:
                self.masks[key] = key_mask(self.length, attn.shape[-1], v).to(attn.device)
            per_query = (attn * self.masks[key]).sum(-1)  # (H, T)
            self.scores[v][layer] = per_query[:, self.length + 1:].mean(-1).cpu()


@torch.no_grad()
def prefix_matching_seed(model: OPT, tokens: torch.Tensor, length: int,
                         variants: Iterable[str] = VARIANTS) -> dict[str, torch.Tensor]:
    """One forward on `tokens` (T,) = BOS + R x `length` tokens; returns {variant: (L, H) scores}."""
    variants = list(variants)
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown prefix-matching variant {v!r}; choose from {VARIANTS}")
    cfg = model.config
    cap = _ScoringCapture(length, variants, cfg.num_layers, cfg.num_heads)
    device = model.decoder.embed_tokens.weight.device
    model(tokens.view(1, -1).to(device), capture=cap, logits="none")  # (1, T)
    return cap.scores
