"""Rankings and masks for pruning: which heads / FFNs a p% step removes, and mask files on disk.

Mirrors the mask construction of amazon-science/llm-interpret (lm_eval/models/opt.py; facts in
docs/method.md, "Masks" and "Pruning"):

    heads: flatten the (L, H) importance, sort ascending, zero the first floor(p * L*H / 100)
    FFNs:  take the ordered list of layer ids (least important first), zero the first floor(p * L / 100)

Differences from the paper's code, both deliberate: the head sort is *stable* (torch.sort there is
not, so the paper's tie order is unspecified; ours is "lower flat index first"), and masks are
saved as safetensors, never pickle. The aggregate ranking is the arithmetic mean of the raw task
importances (docs/method.md), with no per-task normalisation; `normalize_per_layer` is Michel et al.'s
optional per-layer L2 normalisation and is off unless a caller asks for it.

Flat head index = layer * H + head (layer-major, 0-based), as `importance.view(-1)` in the paper.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import torch

from opt66b.runs.results import read_tensors
from opt66b.runs.mask_files import FFN_MASK_KEY, HEAD_MASK_KEY, read_masks, write_masks  # noqa: F401 (re-exported)
IMPORTANCE_KEY = "importance"
UNIFORM_IMPORTANCE_KEY = "importance_uniform"  # the same scores with every layer over the position count
PAPER_DENOMINATOR_KEY = "importance_paper_denominator"  # the paper's: its last layer over target tokens
# What IMPORTANCE_KEY (the ranking every step reads) holds is the protocol's choice (tasks/protocol.py,
# Protocol.denominator); both variants are always written under their own names too.


def count_for_percent(percent: float, total: int) -> int:
    """Units removed at `percent`: floor(percent * total / 100), computed exactly (no float round-off).

    OPT-66B heads (total 4608): 10 -> 460, 90 -> 4147; FFNs (total 64): 10 -> 6, 90 -> 57.
    """
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not math.isfinite(percent):
        raise ValueError(f"percent must be a finite number in [0, 100], got {percent!r}")
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    # Fraction(str(x)) reads 12.5 as 25/2 exactly: the floor never depends on binary float round-off.
    exact = Fraction(str(percent)) * total / 100
    return math.floor(exact)


def _check_importance(importance: torch.Tensor, name: str = "importance") -> torch.Tensor:
    importance = torch.as_tensor(importance)
    if importance.dim() != 2:
        raise ValueError(f"{name} must have shape (layers, heads), got {tuple(importance.shape)}")
    if not importance.is_floating_point():
        importance = importance.double()
    if not bool(torch.isfinite(importance).all()):
        bad = torch.nonzero(~torch.isfinite(importance))[0].tolist()
        raise ValueError(f"{name} has a non-finite value at (layer, head) = {tuple(bad)}; recompute it")
    return importance


def head_ranking(importance: torch.Tensor) -> torch.Tensor:
    """Flat head indices (layer*H + head), least important first: (L, H) -> (L*H,) int64.

    Stable ascending sort: equal scores keep flat-index order (lower layer, then lower head first).
    """
    importance = _check_importance(importance)
    flat = importance.reshape(-1)  # (L*H,) layer-major
    return torch.sort(flat, stable=True).indices


def head_mask_for_percent(importance: torch.Tensor, percent: float) -> torch.Tensor:
    """(L, H) float32 mask with the floor(percent*L*H/100) least important heads set to 0, others 1."""
    importance = _check_importance(importance)
    layers, heads = importance.shape
    n_off = count_for_percent(percent, layers * heads)
    mask = torch.ones(layers * heads, dtype=torch.float32)  # (L*H,)
    mask[head_ranking(importance)[:n_off]] = 0.0
    return mask.view(layers, heads)  # (L, H)


def ffn_ranking(drops: Sequence[float] | torch.Tensor) -> list[int]:
    """Layer ids ordered by metric drop when each FFN is knocked out, ascending, stable (docs/method.md).

    `drops[i]` = base metric - metric without FFN i. FFNs whose removal helps come first; ties keep
    the lower layer first, as Python's sorted() in the paper's scripts.
    """
    values = [float(v) for v in torch.as_tensor(drops).reshape(-1).tolist()]
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"FFN drops must be finite, got {values}")
    return sorted(range(len(values)), key=lambda i: values[i])


def _check_ffn_ranking(ranking: Sequence[int], num_layers: int) -> list[int]:
    order = [int(i) for i in ranking]
    if sorted(order) != list(range(num_layers)):
        raise ValueError(f"FFN ranking must be a permutation of the layer ids 0..{num_layers - 1}, "
                         f"got {len(order)} entries: {order[:10]}{' ...' if len(order) > 10 else ''}")
    return order


def ffn_mask_for_percent(ranking: Sequence[int], percent: float, num_layers: int) -> torch.Tensor:
    """(L,) float32 mask with the first floor(percent*L/100) layers of `ranking` set to 0, others 1."""
    order = _check_ffn_ranking(ranking, num_layers)
    mask = torch.ones(num_layers, dtype=torch.float32)  # (L,)
    mask[order[:count_for_percent(percent, num_layers)]] = 0.0
    return mask


def aggregate_importance(importances: Sequence[torch.Tensor]) -> torch.Tensor:
    """Arithmetic mean of raw (L, H) task importances -> (L, H) float32 (no normalisation, as the paper)."""
    if len(importances) == 0:
        raise ValueError("aggregate_importance needs at least one (layers, heads) tensor, got none")
    checked = [_check_importance(imp, f"importance #{i}") for i, imp in enumerate(importances)]
    shapes = {tuple(t.shape) for t in checked}
    if len(shapes) != 1:
        raise ValueError(f"importances to aggregate have different shapes: {sorted(shapes)}")
    stacked = torch.stack([t.double() for t in checked])  # (tasks, L, H)
    return stacked.mean(dim=0).float()


def normalize_per_layer(importance: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """Divide each layer's row by its L2 norm: (L, H) -> (L, H) (Michel et al. 2019 / HF bertology).

    eps (Michel's 1e-20) only guards an all-zero layer, which stays all zero.
    """
    importance = _check_importance(importance)
    norms = importance.pow(2).sum(dim=-1).sqrt()  # (L,)
    return importance / (norms.unsqueeze(-1) + eps)  # (L, H) / (L, 1)


# -- files --------------------------------------------------------------------------------------
def read_importance(path: str | Path, num_layers: int | None = None, num_heads: int | None = None,
                    key: str = IMPORTANCE_KEY) -> torch.Tensor:
    """Read the (L, H) tensor `key` of an importance file as float64, checking shape and values.

    key: "importance" (the paper's denominators) or "importance_uniform" (every layer over positions)."""
    tensors, _ = read_tensors(path)
    if key not in tensors:
        raise KeyError(f"{path}: no '{key}' tensor (found {sorted(tensors)}); "
                       f"is this an output of `run.py importance heads`?")
    imp = tensors[key]
    if imp.dim() != 2 or (num_layers is not None and imp.shape[0] != num_layers) or \
            (num_heads is not None and imp.shape[1] != num_heads):
        raise ValueError(f"{path}: '{key}' has shape {tuple(imp.shape)}, expected (layers, heads)"
                         f"{'' if num_layers is None else f' = ({num_layers}, {num_heads})'}")
    return _check_importance(imp.double(), f"{path}: '{key}'")
