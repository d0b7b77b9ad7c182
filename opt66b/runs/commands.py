"""Model-level sub-commands of run.py: `convert` (pytorch_model*.bin -> safetensors shards) and `device-map`
(the layer placement a --device-map / --max-memory would choose; no checkpoint needed, sizes come from the
config, opt66b/placement.py, so a user can plan a machine before downloading 131 GB)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    register_convert(sub)
    register_device_map(sub)


def register_convert(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import example

    p = sub.add_parser(
        "convert", help="convert a pytorch_model*.bin OPT checkpoint to safetensors shards",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert an official OPT checkpoint (pytorch_model.bin or sharded .bin + index) to "
                    "safetensors, one shard at a time with torch.load(weights_only=True, mmap=True).",
        epilog=example("python run.py convert ~/hf/opt-1.3b --out ~/ckpt/opt-1.3b"))
    p.add_argument("src", type=Path, help="directory with config.json and pytorch_model*.bin")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="output directory (created)")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from opt66b.convert import convert_bin_checkpoint

    if args.out is None:
        raise ValueError("give the output directory with --out DIR")
    convert_bin_checkpoint(args.src, args.out)
    return 0


def register_device_map(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_json_arg, example

    p = sub.add_parser(
        "device-map", help="show the layer placement for an OPT size and memory budgets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print which decoder layers go on which device, GiB of weights per device, and which "
                    "layers would be streamed from host memory (--offload). Same rules as every sub-command's "
                    "--device-map/--max-memory options.",
        epilog=example("python run.py device-map --random-weights opt-66b --max-memory cuda:0=70GiB,cpu=200GiB",
                       "python run.py device-map --random-weights opt-66b --device-map 0-31:cuda:0,32-63:cuda:1 "
                       "--json map.json"))
    p.add_argument("--random-weights", default="opt-66b", metavar="SIZE",
                   help="official size name whose shape is placed, e.g. opt-30b (default opt-66b; no weights are read)")
    p.add_argument("--model", default=None, help="or: a checkpoint directory whose config.json is used")
    p.add_argument("--device-map", default="auto", help="auto (default), ranges, or a .json file")
    p.add_argument("--max-memory", default=None, help="e.g. cuda:0=70GiB,cuda:1=70GiB,cpu=200GiB")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16",
                   help="weight dtype whose bytes are placed (default: float16, as the released checkpoints)")
    add_json_arg(p, "the map (usable as a --device-map file)")
    p.set_defaults(func=_device_map)


def _device_map(args: argparse.Namespace) -> int:
    import torch

    from opt66b.runs.options import emit_json
    from opt66b.config import config_for_size, config_from_hf
    from opt66b.placement import build_device_map, compress_ranges, parse_max_memory

    cfg = config_from_hf(args.model) if args.model else config_for_size(args.random_weights)
    dm = build_device_map(args.device_map, cfg, getattr(torch, args.dtype), parse_max_memory(args.max_memory))
    if args.json is not None:
        emit_json(args.json, {"head": dm.head, "layers": compress_ranges(dm.layers)})
    if args.json is None or str(args.json) != "-":
        print(dm.summary())
    return 0
