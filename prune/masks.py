"""Rankings and masks for pruning: which heads / FFNs a p% step removes, and mask files on disk.

Mirrors the mask construction of amazon-science/llm-interpret (lm_eval/models/opt.py; facts in
docs/method.md, "Masks" and "Pruning"):

    heads: flatten the (L, H) importance, sort ascending, zero the first floor(p * L*H / 100)
    FFNs:  take the ordered list of layer ids (least important first), zero the first floor(p * L / 100)

Differences from the paper's released code, both deliberate: the head sort is *stable* (torch.sort there is
not, so the paper's tie order is unspecified; ours is "lower flat index first"), and masks are
saved as safetensors, never pickle. The aggregate ranking is the arithmetic mean of the raw task
importances (docs/method.md), with no per-task normalisation; `normalize_per_layer` is Michel et al.'s
optional per-layer L2 normalisation and is off unless a caller asks for it.

Flat head index = layer * H + head (layer-major, 0-based), as `importance.view(-1)` in the paper.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import torch

from opt66b.fileio import read_json
from opt66b.runs.layout import shots_dir
from opt66b.runs.results import read_tensors

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


# -- where a sweep's rankings come from, and the masks they give ----------------------------------------------------------------------
def ranking_name(ranking: str, task: str) -> str:
    """Which task's file supplies the ranking: own -> the task itself, aggregate, or another task."""
    return task if ranking == "own" else ranking


def head_importance_file(importance_dir: Path, ranking: str, task: str, shots: int) -> Path:
    path = shots_dir(importance_dir, shots) / f"{ranking_name(ranking, task)}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: head importance missing for ranking {ranking!r} (task {task}, "
                                f"{shots}-shot); run `run.py importance heads` for it first")
    return path


def ffn_ranking_for(ffn_dir: Path, ranking: str, task: str, shots: int, num_layers: int) -> list[int]:
    """The FFN order (least important first) from `run.py importance ffn` output."""
    path = shots_dir(ffn_dir, shots) / f"{ranking_name(ranking, task)}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FFN importance missing for ranking {ranking!r} (task {task}, "
                                f"{shots}-shot); run `run.py importance ffn` for it first")
    return read_ffn_ranking(path, num_layers)


def read_ffn_ranking(path: Path, num_layers: int) -> list[int]:
    """The 'ranking' (layer ids, least important first) of a `run.py importance ffn` JSON file."""
    data = read_json(path)
    if "ranking" not in data:
        raise KeyError(f"{path}: no 'ranking' key; the FFN study of this task is incomplete, rerun it")
    order = [int(i) for i in data["ranking"]]
    if sorted(order) != list(range(num_layers)):
        raise ValueError(f"{path}: 'ranking' is not a permutation of the model's {num_layers} layers")
    return order


def cell_masks(unit: Any, cfg: Any, ranking: str, importance_dir: Path | None,
               ffn_dir: Path | None) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """(head_mask (L, H) or None, ffn_mask (L,) or None, provenance) for one sweep cell (its task, shot and
    percentages), from the ranking files of `ranking`."""
    info: dict[str, Any] = {}
    head_mask = ffn_mask = None
    if unit.head_percent:
        if importance_dir is None:
            raise ValueError("head pruning needs --importance DIR (output of `run.py importance heads`)")
        path = head_importance_file(importance_dir, ranking, unit.task, unit.shots)
        importance = read_importance(path, cfg.num_layers, cfg.num_heads)
        head_mask = head_mask_for_percent(importance, unit.head_percent)
        info["head_importance"] = str(path)
        info["head_sha256"] = hashlib.sha256(importance.float().numpy().tobytes()).hexdigest()  # ranking by content
    if unit.ffn_percent:
        if ffn_dir is None:
            raise ValueError("FFN pruning needs --ffn-importance DIR (output of `run.py importance ffn`)")
        order = ffn_ranking_for(ffn_dir, ranking, unit.task, unit.shots, cfg.num_layers)
        ffn_mask = ffn_mask_for_percent(order, unit.ffn_percent, cfg.num_layers)
        info["ffn_ranking"] = order
    info["heads_masked"] = count_for_percent(unit.head_percent, cfg.num_layers * cfg.num_heads)
    info["ffns_masked"] = count_for_percent(unit.ffn_percent, cfg.num_layers)
    return head_mask, ffn_mask, info
