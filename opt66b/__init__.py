"""opt66b: a hand-written OPT decoder with native head/FFN masks, capture, KV reuse and strict loading.

The public names below are imported on first use (PEP 562), so a submodule that needs no torch,
such as `opt66b.runs.options` (the argparse grammar behind `run.py --help`), imports without it.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS = {
    "Capture": "capture", "frozen": "capture", "head_attribution": "capture", "load": "runs.loading",
    "OPT_CONFIGS": "config", "OPTConfig": "config", "config_for_size": "config", "config_from_hf": "config",
    "OPT": "model", "DecoderOutput": "model", "position_ids_from_mask": "model",
    "OPTTokenizer": "tokenizer", "load_tokenizer": "tokenizer",
    "CheckpointError": "weights", "load_model": "weights", "save_checkpoint": "weights",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'opt66b' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
