"""Where a NaN or infinity comes from: the weights (which file, which tensor) or the activations.

A non-finite log-likelihood or head score says only that something overflowed or was corrupt. The
user needs the cause: a checkpoint whose tensor holds NaN (a bad download, a broken fine-tune or
conversion) is fixed by replacing that file; finite weights that overflow in float16 are fixed by
another --dtype. So:

  * `check_weights_finite(model, ...)` runs at every load (opt66b.runs.loading.load) over the weights that
    are resident, a chunked isfinite per tensor (a small fraction of reading them), and refuses a
    model with a NaN/inf weight before any step computes or writes anything;
  * `explain_nonfinite(...)` runs when a step meets a non-finite value later (streamed layers are not
    resident at load, and activations can overflow): it scans the checkpoint's tensors as stored and
    as cast to the compute dtype, and names the shard file and tensor, or says the weights are finite.
"""

from __future__ import annotations

import re
from pathlib import Path
import torch

from opt66b.runs.results import NonFiniteError

CHUNK = 1 << 24  # elements tested at a time: the bool temporary stays at 16 MiB for any tensor


def count_nonfinite(t: torch.Tensor) -> tuple[int, int]:
    """(NaN count, inf count) of a tensor, chunk by chunk."""
    flat = t.detach().reshape(-1)  # (numel,)
    nan = inf = 0
    for start in range(0, flat.numel(), CHUNK):
        part = flat[start:start + CHUNK]
        if bool(torch.isfinite(part).all()):
            continue
        nan += int(torch.isnan(part).sum())
        inf += int(torch.isinf(part).sum())
    return nan, inf


def _layer(name: str) -> str:
    m = re.search(r"layers\.(\d+)\.", name)
    return f"layer {m.group(1)} " if m else ""


def _describe(nan: int, inf: int) -> str:
    return " and ".join(x for x in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if x)


def stored_location(model_dir: Path, param: str) -> tuple[str, str]:
    """(shard file name, stored key) holding parameter `param` of a checkpoint directory."""
    from opt66b.weights import canonical_key, checkpoint_files

    files = checkpoint_files(model_dir)
    for key, path in files.items():
        if canonical_key(key) == param:
            return path.name, key
    if param == "decoder.embed_tokens.weight" and "lm_head.weight" in files:
        return files["lm_head.weight"].name, "lm_head.weight"
    return "?", param


def check_weights_finite(model: torch.nn.Module, model_dir: Path | None, dtype: torch.dtype) -> None:
    """NonFiniteError naming the first resident weight with a NaN or inf (its shard file and key when
    the model was read from `model_dir`). Weights on the meta device (streamed layers) are skipped."""
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            continue
        nan, inf = count_nonfinite(p)
        if nan or inf:
            where = f"{name!r}"
            if model_dir is not None:
                file, key = stored_location(model_dir, name)
                where = f"{model_dir}/{file}: tensor {key!r}"
            cast = f" (as {str(dtype).removeprefix('torch.')})" if model_dir is not None else ""
            raise NonFiniteError(f"{where} ({_layer(name)}weights) holds {_describe(nan, inf)}{cast}; "
                                 f"{_fix(model_dir, inf and not nan)}", cause_known=True)


def _fix(model_dir: Path | None, only_inf: bool) -> str:
    if only_inf:
        return ("values beyond the dtype's range: load with --dtype float32 or bfloat16, or re-convert the "
                "checkpoint")
    return "the checkpoint is corrupt: re-download or re-convert that shard" if model_dir else "rebuild the model"


def scan_checkpoint(model_dir: Path, dtype: torch.dtype | None) -> list[str]:
    """'file: key (layer i) holds N NaN' for every stored tensor that is non-finite as stored or once
    cast to `dtype`, reading one tensor at a time."""
    from safetensors import safe_open

    from opt66b.weights import checkpoint_files

    found = []
    by_file: dict[Path, list[str]] = {}
    for key, path in checkpoint_files(model_dir).items():
        by_file.setdefault(path, []).append(key)
    for path, keys in sorted(by_file.items()):
        with safe_open(str(path), framework="pt") as f:
            for key in keys:
                t = f.get_tensor(key)
                nan, inf = count_nonfinite(t)
                how = ""
                if not (nan or inf) and dtype is not None and t.dtype != dtype:
                    nan, inf = count_nonfinite(t.to(dtype))
                    how = f" once cast to {str(dtype).removeprefix('torch.')}"
                if nan or inf:
                    found.append(f"{path.name}: {key!r} ({_layer(key)}weights) holds {_describe(nan, inf)}{how}")
    return found


def explain_nonfinite(model_dir: Path | None, dtype: torch.dtype | None) -> str:
    """One sentence on the cause of a non-finite value met while running a model."""
    if model_dir is None:
        return ("the random weights are finite, so the overflow is in the activations: try --dtype float32 "
                "or bfloat16")
    bad = scan_checkpoint(model_dir, dtype)
    if bad:
        more = f" (+{len(bad) - 3} more tensors)" if len(bad) > 3 else ""
        return f"cause: {model_dir}/{'; '.join(bad[:3])}{more}; re-download or re-convert that shard"
    return (f"the weights in {model_dir} are finite (also as {str(dtype).removeprefix('torch.')}), so the "
            "overflow is in the activations: try --dtype float32 or bfloat16")
