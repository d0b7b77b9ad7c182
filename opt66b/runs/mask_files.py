"""Mask files: safetensors with "head_mask" (L, H) and/or "ffn_mask" (L,), float32.

Values are 1 (keep) and 0 (prune). Fractional values scale a head's or FFN's output (soft masks,
a legitimate research tool) and are accepted only when asked for (`soft=True`, the CLI's
--soft-masks), so a mask saved from scores or probabilities by mistake is not run silently.
Values outside [0, 1] are always an error.

The model is the one place that knows what a mask is, so the file format lives here too: `run.py
eval --head-mask F` (tasks) and the pruning sweeps (prune) read and write masks through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from opt66b.runs.results import read_tensors, write_tensors

HEAD_MASK_KEY = "head_mask"
FFN_MASK_KEY = "ffn_mask"


def write_masks(path: str | Path, head_mask: torch.Tensor | None = None, ffn_mask: torch.Tensor | None = None,
                metadata: dict[str, Any] | None = None) -> Path:
    """Atomically write a safetensors file with "head_mask" (L, H) and/or "ffn_mask" (L,), float32."""
    tensors: dict[str, torch.Tensor] = {}
    if head_mask is not None:
        head_mask = torch.as_tensor(head_mask, dtype=torch.float32)
        if head_mask.dim() != 2:
            raise ValueError(f"{path}: head_mask must have shape (layers, heads), got {tuple(head_mask.shape)}")
        tensors[HEAD_MASK_KEY] = head_mask
    if ffn_mask is not None:
        ffn_mask = torch.as_tensor(ffn_mask, dtype=torch.float32)
        if ffn_mask.dim() != 1:
            raise ValueError(f"{path}: ffn_mask must have shape (layers,), got {tuple(ffn_mask.shape)}")
        tensors[FFN_MASK_KEY] = ffn_mask
    if head_mask is not None and ffn_mask is not None and head_mask.shape[0] != ffn_mask.shape[0]:
        raise ValueError(f"{path}: head_mask has {head_mask.shape[0]} layers but ffn_mask has {ffn_mask.shape[0]}")
    if not tensors:
        raise ValueError(f"{path}: nothing to write; give head_mask and/or ffn_mask")
    return write_tensors(path, tensors, metadata)


def read_masks(path: str | Path, num_layers: int | None = None, num_heads: int | None = None,
               soft: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Read (head_mask (L, H) or None, ffn_mask (L,) or None) from a mask file, checking shapes and values.

    Pass the model's num_layers / num_heads to have a mismatch reported here, naming the file.
    Values must lie in [0, 1]; values strictly between 0 and 1 need soft=True.
    """
    tensors, _ = read_tensors(path)
    unknown = sorted(set(tensors) - {HEAD_MASK_KEY, FFN_MASK_KEY})
    if unknown or not tensors:
        raise KeyError(f"{path}: a mask file holds '{HEAD_MASK_KEY}' (layers, heads) and/or "
                       f"'{FFN_MASK_KEY}' (layers,); found keys {sorted(tensors)}")
    head, ffn = tensors.get(HEAD_MASK_KEY), tensors.get(FFN_MASK_KEY)
    if head is not None:
        want = (num_layers if num_layers is not None else head.shape[0],
                num_heads if num_heads is not None else (head.shape[1] if head.dim() == 2 else -1))
        if head.dim() != 2 or tuple(head.shape) != want:
            raise ValueError(f"{path}: '{HEAD_MASK_KEY}' has shape {tuple(head.shape)}, expected (layers, heads) "
                             f"= {want}; was it made for another model?")
        head = head.float()
    if ffn is not None:
        want_l = num_layers if num_layers is not None else ffn.shape[0]
        if ffn.dim() != 1 or ffn.shape[0] != want_l:
            raise ValueError(f"{path}: '{FFN_MASK_KEY}' has shape {tuple(ffn.shape)}, expected (layers,) = "
                             f"({want_l},); was it made for another model?")
        ffn = ffn.float()
    for name, t in ((HEAD_MASK_KEY, head), (FFN_MASK_KEY, ffn)):
        if t is not None:
            check_mask_values(t, f"{path}: '{name}'", soft)
    return head, ffn


def check_mask_values(mask: torch.Tensor, where: str, soft: bool = False) -> None:
    """ValueError naming the first bad entry unless every value is finite and in [0, 1] (and in
    {0, 1} unless soft)."""
    flat = mask.detach().float().cpu().reshape(-1)  # (numel,)
    bad = ~torch.isfinite(flat) | (flat < 0) | (flat > 1)
    rule = "masks hold 1 (keep) or 0 (prune)"
    if not soft:
        bad |= (flat != 0) & (flat != 1)
        rule += "; fractional values need --soft-masks"
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        index = tuple(int(j) for j in torch.unravel_index(torch.tensor(i), mask.shape)) if mask.dim() else ()
        raise ValueError(f"{where}{list(index)} = {float(flat[i])} ({int(bad.sum())} such value(s)): {rule}, "
                         "values outside [0, 1] are never allowed; regenerate the mask")
