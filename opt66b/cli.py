"""Model-level sub-commands of run.py: `convert` (pytorch_model*.bin -> safetensors shards)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from .cli_options import example

    p = sub.add_parser(
        "convert", help="convert a pytorch_model*.bin OPT checkpoint to safetensors shards",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert an official OPT checkpoint (pytorch_model.bin or sharded .bin + index) to "
                    "safetensors, one shard at a time with torch.load(weights_only=True, mmap=True).",
        epilog=example("python run.py convert ~/hf/opt-1.3b --out ~/ckpt/opt-1.3b"))
    p.add_argument("src", type=Path, help="directory with config.json and pytorch_model*.bin")
    p.add_argument("dst", type=Path, nargs="?", default=None, help=argparse.SUPPRESS)  # old spelling of --out
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="output directory (created)")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert_bin_checkpoint

    out = args.out or args.dst
    if out is None:
        raise ValueError("give the output directory with --out DIR")
    convert_bin_checkpoint(args.src, out)
    return 0
