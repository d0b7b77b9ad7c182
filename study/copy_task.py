"""The synthetic in-context copying task, prefix matching, and the induction-head pruning experiment.

Sequences follow Bansal et al. (ACL 2023) Algorithm 1 (docs/method.md, "Prefix matching"): distinct
random tokens from OPT's merge-rank pool, the 4% most and 4% least frequent merges excluded, after a BOS
(`</s>`, id 2). The copying task asks the model to continue a repeat:

    index:   0    1 .. L        L+1 .. 2L
    tokens:  BOS  s0 .. s(L-1)  s0  .. s(L-1)
    logits at index L+j predict s(j), for j = 1 .. L-1 (the second repeat, minus s0: the token
    before it, s(L-1), has no earlier occurrence, so nothing in context says s0 comes next)

accuracy = mean over those L-1 targets of [argmax logits == target]. A model that copies through an
induction head gets near 1; a model without one gets near 0 (1 in 46,000 by chance).

Prefix matching (the paper's Algorithm 1, without its off-by-one spurious key): with R repeats, a
query at a token of repeat r >= 2 sums its attention over the positions right after each earlier
occurrence of its token; the score averages that over queries, so 1 means a perfect induction head.
"""

from __future__ import annotations

import torch

from opt66b import Capture, OPT, OPTTokenizer, frozen

EXCLUDE_RATIO = 0.04  # the paper's --frequent_exclude_ratio: drop 4% of merge ranks at each end


def token_pool(tokenizer: OPTTokenizer, exclude_ratio: float = EXCLUDE_RATIO) -> torch.Tensor:
    """(P,) vocab ids of the merged tokens by merge rank, minus the first and last `exclude_ratio`
    share (46,000 of OPT's 50,000 merges)."""
    ranked = tokenizer.merge_ranked_ids()
    cut = int(exclude_ratio * len(ranked))
    return torch.tensor(ranked[cut:len(ranked) - cut], dtype=torch.long)


def repeated_sequence(pool: torch.Tensor, length: int, repeats: int, seed: int, bos_id: int = 2) -> torch.Tensor:
    """(1 + repeats * length,) ids: BOS then `length` distinct pool tokens (seeded), repeated."""
    if length < 2 or length > pool.numel():
        raise ValueError(f"length must be in 2..{pool.numel()} (the pool size), got {length}")
    g = torch.Generator().manual_seed(seed)
    seq = pool[torch.randperm(pool.numel(), generator=g)[:length]]  # (length,) distinct tokens
    return torch.cat([torch.tensor([bos_id]), seq.repeat(repeats)])


def prefix_matching(model: OPT, pool: torch.Tensor, seeds: int = 4, length: int = 25, repeats: int = 4,
                    bos_id: int = 2) -> torch.Tensor:
    """(L, H) mean prefix-matching score in [0, 1] over `seeds` sequences (seed s has length + 2s
    tokens, as the paper's 25 + 2s). 1: every query attends only to tokens that followed its own
    token earlier (an induction head); ~0: it looks elsewhere (BOS, the previous token, ...)."""
    cfg = model.config
    total = torch.zeros(cfg.num_layers, cfg.num_heads)
    device = model.decoder.embed_tokens.weight.device
    for s in range(seeds):
        n = length + 2 * s
        ids = repeated_sequence(pool, n, repeats, s, bos_id)
        cap = Capture(probs=True)
        with torch.no_grad():
            model(ids.view(1, -1).to(device), capture=cap, logits="none")  # (1, T)
        # Query at index q = 1 + r*n + j (repeat r >= 1, token j); its token followed an earlier
        # occurrence at index 1 + m*n + j for m < r, so the keys are 2 + m*n + j.
        queries, keys = [], []
        for r in range(1, repeats):
            for j in range(n):
                for m in range(r):
                    queries.append(1 + r * n + j)
                    keys.append(2 + m * n + j)
        q, k = torch.tensor(queries), torch.tensor(keys)
        n_queries = (repeats - 1) * n
        for layer in range(cfg.num_layers):
            probs = cap.probs[layer][0].float().cpu()  # (H, T, T)
            total[layer] += probs[:, q, k].sum(dim=1) / n_queries  # (H,)
    return total / seeds


def heads_above(scores: torch.Tensor, threshold: float = 0.5) -> list[tuple[int, int]]:
    """(layer, head) pairs whose score is >= threshold, highest score first."""
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    heads = scores.shape[1]
    return [(int(i) // heads, int(i) % heads) for i in order if scores.flatten()[i] >= threshold]


def mask_without(num_layers: int, num_heads: int, pruned: list[tuple[int, int]]) -> torch.Tensor:
    """(L, H) head mask of ones with the `pruned` (layer, head) entries zeroed."""
    mask = torch.ones(num_layers, num_heads)
    for layer, head in pruned:
        mask[layer, head] = 0.0
    return mask


def copy_batch(pool: torch.Tensor, seeds: int, length: int, bos_id: int = 2) -> torch.Tensor:
    """(seeds, 1 + 2*length) ids: row s is BOS + seq + seq for seed s."""
    return torch.stack([repeated_sequence(pool, length, 2, s, bos_id) for s in range(seeds)])


def copy_accuracy(model: OPT, ids: torch.Tensor, head_mask: torch.Tensor | None = None) -> float:
    """Accuracy of predicting tokens 1..L-1 of the second repeat of (B, 1 + 2L) `ids` (see module
    docstring for the alignment), under an optional (L, H) head mask."""
    length = (ids.shape[1] - 1) // 2
    device = model.decoder.embed_tokens.weight.device
    with torch.no_grad():
        out = model(ids.to(device), head_mask=head_mask, logits="none")
        hidden = out.hidden[:, length + 1:2 * length]  # (B, L-1, W): indices L+1 .. 2L-1 predict s1 .. s(L-1)
        pred = model.logits(hidden).argmax(dim=-1).cpu()  # (B, L-1)
    target = ids[:, length + 2:]  # (B, L-1): s1 .. s(L-1) of the second repeat
    return float((pred == target).float().mean())


def copy_importance(model: OPT, ids: torch.Tensor) -> torch.Tensor:
    """(L, H) gradient head importance on the copying task (the paper's proxy, §1 of the method spec):
    mean over rows and positions of |a . dNLL/da|, a the head's output before out_proj, NLL the mean
    loss of the predictable second-repeat tokens. Small = the task barely depends on the head."""
    length = (ids.shape[1] - 1) // 2
    device = model.decoder.embed_tokens.weight.device
    cap = Capture(heads=True, grads=True)
    with frozen(model), torch.enable_grad():
        out = model(ids.to(device), capture=cap, logits="none")
        logits = model.logits(out.hidden[:, length + 1:2 * length]).float()  # (B, L-1, V)
        target = ids[:, length + 2:].to(device)  # (B, L-1)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())  # (B*(L-1), V) rows
        heads = cap.head_list()  # L tensors (B, H, T, Dh)
        grads = torch.autograd.grad(loss, heads)
    scores = [(a * g).sum(-1).abs().mean(dim=(0, 2)) for a, g in zip(heads, grads)]  # each (H,)
    return torch.stack(scores).float().cpu()  # (L, H)


def pruning_experiment(model: OPT, pool: torch.Tensor, seeds: int = 16, length: int = 25,
                       threshold: float = 0.5, bos_id: int = 2) -> dict:
    """The organism check: copy accuracy with all heads, with the induction heads (prefix matching
    >= threshold) pruned, and with as many control heads pruned. Two controls: the least important
    heads by copying-task gradient importance (`copy_importance`, the primary control) and the heads
    with the lowest prefix-matching scores. Prefix matching and accuracy use seeds 0..seeds-1."""
    cfg = model.config
    pm = prefix_matching(model, pool, seeds=seeds, length=length, bos_id=bos_id)
    ids = copy_batch(pool, seeds, length, bos_id)
    importance = copy_importance(model, ids)
    induction = heads_above(pm, threshold)
    k = len(induction)
    others = lambda scores: [h for h in heads_above(-scores, -float("inf")) if h not in induction]
    control = others(importance)[:k]  # heads_above(-x) lists the smallest x first
    control_pm = others(pm)[:k]
    acc = lambda pruned: copy_accuracy(model, ids, mask_without(cfg.num_layers, cfg.num_heads, pruned))
    return {
        "seeds": seeds, "length": length, "threshold": threshold,
        "prefix_matching": pm.tolist(), "copy_importance": importance.tolist(),
        "induction_heads": [list(h) for h in induction],
        "control_heads": [list(h) for h in control],
        "control_heads_prefix_matching": [list(h) for h in control_pm],
        "accuracy_full": acc([]),
        "accuracy_induction_pruned": acc(induction),
        "accuracy_control_pruned": acc(control),
        "accuracy_control_prefix_matching_pruned": acc(control_pm),
    }
