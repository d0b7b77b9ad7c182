"""Prefix-matching score per attention head (the paper's "Algorithm 1" as its code runs it, a fix, and its text).

Mirrors amazon-science/llm-interpret lm_eval/prefix_matching_copying.py (paper Appendix A.8,
Algorithm 1; the peer definition is TransformerLens' induction score; docs/method.md).

Input: BOS + the same L distinct tokens repeated R (= 4) times, one forward pass. For a query j in
repeats 2..R, a head's score reads the attention from j onto the positions that *follow* an earlier
occurrence of token_j, averaged over the (R-1)L queries. BOS attention is neither excluded nor
renormalised, so a score lies in [0, 1]: a previous-token or BOS-sink head scores ~0.

    position   0    1   2  ...  L    L+1  L+2 ... 2L   2L+1 ...
    token     BOS   a1  a2 ...  aL   a1   a2  ... aL   a1   ...
    query j = L+2 (token a2): earlier a2 at 2           -> key 3    (a3)       both variants
    query j = 2L  (token aL): earlier aL at L           -> key L+1  (a1)       both variants
                              paper's k = nL + (j mod L) + 1, n = 0: key 1 (a1) -- spurious

Variants:
    "paper": the paper's released code: the attention *summed* over keys k = n*L + (j mod L) + 1 for
        n = 0 .. floor(j/L) - 1. When j mod L = 0 (the last token of repeats 2..R) n = 0 gives k = 1,
        the first token after BOS, which follows no occurrence of token_j: R-1 of the (R-1)L queries
        carry one spurious key. A perfect induction head scores 1.
    "corrected": the same sum over keys k = j - n*L + 1 for every n >= 1 with j - n*L >= 1 (a real
        earlier occurrence): the code's spurious key removed.
    "text": Appendix A.8 as written, "the average of all attention pattern entries attending from a
        given token back to tokens that succeeded the same token in earlier repeats": the *mean* over
        the corrected keys instead of their sum. A query in repeat r has r - 1 such keys, so a head
        putting all its attention on them scores 1/(r - 1) there: at most (1 + 1/2 + 1/3) / 3 = 0.61
        with R = 4, however sharp the head. The ranking of heads is what the paper reads from it.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from opt66b import OPT, Capture

VARIANTS = ("paper", "corrected", "text")


def key_mask(length: int, total: int, variant: str) -> torch.Tensor:
    """(T, T) float32 weights of the target keys per query row (T = total positions, L = length): 1 on
    each key ("paper", "corrected": a sum), 1/(number of keys) ("text": a mean). Rows of BOS and of the
    first repeat are all zero."""
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
        mask[j, keys] = 1.0 / len(keys) if variant == "text" else 1.0
    return mask


def prefix_scores(attn: torch.Tensor, length: int, variant: str = "paper") -> torch.Tensor:
    """Per-head score from one sequence's post-softmax attention.

    attn: (H, T, T) rows = queries, columns = keys, for BOS + R repeats of `length` tokens.
    Returns (H,) float32: mean over queries j = L+1 .. T-1 of the attention on the key set, summed
    ("paper", "corrected") or averaged ("text") over the keys.
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
