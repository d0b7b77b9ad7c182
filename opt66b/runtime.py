"""Shared command-line plumbing for loading a model: the options every sub-command takes.

`add_model_args(parser)` declares --model, --dtype, --device (and the placement options of
placement.py); `load_from_args(args)` returns the model, its tokenizer and a JSON-able description
recorded in every output file. With no --model the embedded tiny OPT (opt66b/assets/tiny-opt) is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from .io import sha256_file
from .tokenizer import OPTTokenizer, load_tokenizer
from .weights import load_model

TINY_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "tiny-opt"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", type=Path, default=None,
                   help="HF OPT checkpoint directory with safetensors (default: the embedded tiny OPT)")
    g.add_argument("--tokenizer", type=Path, default=None,
                   help="directory with vocab.json + merges.txt (default: the model directory)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weight dtype (default: float32 on CPU, float16 on GPU)")
    g.add_argument("--device", default=None, help="compute device, e.g. cpu or cuda:0 (default: cuda if available)")


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_from_args(args: argparse.Namespace, log=None) -> tuple[Any, OPTTokenizer, dict[str, Any]]:
    """Load model + tokenizer as the options say; returns (model, tokenizer, model_info)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    model_dir = Path(args.model) if args.model else TINY_MODEL_DIR
    device = resolve_device(getattr(args, "device", None))
    dtype = resolve_dtype(getattr(args, "dtype", None), device)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: model directory not found")
    tok_dir = Path(args.tokenizer) if getattr(args, "tokenizer", None) else model_dir
    log(f"loading {model_dir} as {str(dtype).removeprefix('torch.')} on {device}")
    model = load_model(model_dir, dtype=dtype, device=device, log=log)
    tokenizer = load_tokenizer(tok_dir)
    cfg = model.config
    info = {
        "model": str(model_dir),
        "config_sha256": sha256_file(model_dir / "config.json"),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "layers": cfg.num_layers,
        "heads": cfg.num_heads,
    }
    return model, tokenizer, info
