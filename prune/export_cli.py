"""`run.py export-pruned`: write the checkpoint a pruning point describes (opt66b/export.py), or with
--dry-run print what it removes. Lives in prune because masks may come from the study's rankings
(`run.py importance heads|ffn` outputs plus a percentage, exactly as the sweeps build them)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-pruned", help="write a smaller checkpoint without the masked heads and FFNs (or --dry-run)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Remove the heads and FFNs a pruning point masks from an OPT checkpoint: q/k/v rows and "
                    "out_proj columns of removed heads (out_proj's bias stays), fc1/fc2 of removed FFNs. The "
                    "result loads with --model like any checkpoint and scores as the masked model does. Heads "
                    "keep their original ids: head masks stay (layers, heads) and removed heads read as zero. "
                    "Masks: mask files (--head-mask/--ffn-mask, 0/1, as run.py eval reads them) or a ranking "
                    "plus a percentage, as the sweeps build them (--head-importance FILE --head-percent P, "
                    "--ffn-ranking FILE --ffn-percent P). --dry-run prints parameters and bytes removed, "
                    "without weights (--random-weights for an official size; percentages alone count units).",
        epilog="examples:\n"
               "  python run.py export-pruned --dry-run --random-weights opt-66b --head-percent 70 --ffn-percent 20\n"
               "  python run.py export-pruned --model ~/ckpt/opt-1.3b --head-importance "
               "runs/1.3b/importance/shots-0/aggregate.safetensors --head-percent 70 --ffn-ranking "
               "runs/1.3b/ffn/shots-0/aggregate.json --ffn-percent 20 --out ~/ckpt/opt-1.3b-h70-f20\n"
               "  python run.py export-pruned --model ~/ckpt/opt-1.3b --head-mask masks.safetensors "
               "--out ~/ckpt/opt-1.3b-pruned")
    p.add_argument("--model", type=Path, default=None,
                   help="source checkpoint directory (default: the embedded tiny OPT)")
    p.add_argument("--out", type=Path, default=None, help="output directory, new or empty (not with --dry-run)")
    p.add_argument("--head-mask", type=Path, default=None, help="mask file with 'head_mask' (layers, heads) of 0/1")
    p.add_argument("--ffn-mask", type=Path, default=None, help="mask file with 'ffn_mask' (layers,) of 0/1")
    p.add_argument("--head-importance", type=Path, default=None,
                   help="head importance file of `run.py importance heads` (e.g. OUT/shots-0/aggregate.safetensors)")
    p.add_argument("--head-percent", type=float, default=None, help="remove the lowest-ranked P%% of heads")
    p.add_argument("--ffn-ranking", type=Path, default=None,
                   help="FFN ranking file of `run.py importance ffn` (e.g. OUT/shots-0/aggregate.json)")
    p.add_argument("--ffn-percent", type=float, default=None, help="remove the lowest-ranked P%% of FFNs")
    p.add_argument("--shard-size", default="2GiB", help="largest output shard (default 2GiB)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed; read no weights")
    p.add_argument("--random-weights", default=None, metavar="SIZE",
                   help="with --dry-run: an official size's shape instead of --model, e.g. opt-66b (no weights)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                   help="bytes of the dry run at this dtype (default: the checkpoint's; float16 for --random-weights)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    import torch

    from opt66b.config import config_for_size, config_from_hf
    from opt66b.export import export_pruned
    from opt66b.placement import parse_size
    from opt66b.runs.loading import TINY_MODEL_DIR

    if args.random_weights and not args.dry_run:
        raise ValueError("--random-weights describes an official shape without weights; it needs --dry-run (export needs --model)")
    if args.random_weights and args.model:
        raise ValueError("give --random-weights or --model, not both")
    model_dir = None if args.random_weights else (args.model or TINY_MODEL_DIR)
    if model_dir is not None and not model_dir.is_dir():
        raise FileNotFoundError(f"--model {model_dir}: checkpoint directory not found")
    cfg = config_for_size(args.random_weights) if args.random_weights else config_from_hf(model_dir)
    head, ffn, provenance = masks_from_args(args, cfg)
    if args.dry_run:
        dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if args.random_weights else _stored_dtype(model_dir))
        print(dry_run_report(cfg, args.random_weights or str(model_dir), head, ffn, dtype, counts_only=provenance["counts_only"]))
        return 0
    if args.out is None:
        raise ValueError("export-pruned needs --out DIR (or --dry-run)")
    if head is None and ffn is None:
        raise ValueError("nothing to remove: give --head-mask/--ffn-mask or a ranking with --head-percent/--ffn-percent")
    record = export_pruned(model_dir, args.out, head, ffn, max_shard_bytes=parse_size(args.shard_size),
                           provenance={k: v for k, v in provenance.items() if k != "counts_only"},
                           head_source=str(args.head_mask or args.head_importance or "head mask"),
                           ffn_source=str(args.ffn_mask or args.ffn_ranking or "ffn mask"),
                           log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(f"{args.out}: removed {record['heads_removed']} heads and {record['ffn_removed']} FFNs, "
          f"{record['parameters_removed'] / 1e9:.4f}B of {record['parameters_before'] / 1e9:.4f}B parameters")
    return 0


def masks_from_args(args: argparse.Namespace, cfg: Any):
    """(head_mask (L, H) or None, ffn_mask (L,) or None, provenance) from the options.

    Without a ranking (--dry-run with percentages only) the masks remove the first units in flat
    order: sizes depend on how many units go, not which (opt66b.export.config_for_counts)."""
    from opt66b.fileio import sha256_file
    from tasks.evaluation import load_eval_masks

    from .masks import count_for_percent, ffn_mask_for_percent, head_mask_for_percent, read_importance
    from .masks import read_ffn_ranking

    L, H = cfg.num_layers, cfg.num_heads
    prov: dict[str, Any] = {"counts_only": False}
    for flag, value in (("--head-percent", args.head_percent), ("--ffn-percent", args.ffn_percent)):
        if value is not None:
            count_for_percent(value, 1)  # range and type check, names the value
    if args.head_mask and (args.head_importance or args.head_percent is not None):
        raise ValueError("give --head-mask or --head-importance with --head-percent, not both")
    if args.ffn_mask and (args.ffn_ranking or args.ffn_percent is not None):
        raise ValueError("give --ffn-mask or --ffn-ranking with --ffn-percent, not both")
    for flag, value, pct in (("--head-importance", args.head_importance, "--head-percent"),
                             ("--ffn-ranking", args.ffn_ranking, "--ffn-percent")):
        if value is not None and getattr(args, pct[2:].replace("-", "_")) is None:
            raise ValueError(f"{flag} needs {pct} P: the share of units to remove")
    for flag, path in (("--head-mask", args.head_mask), ("--ffn-mask", args.ffn_mask),
                       ("--head-importance", args.head_importance), ("--ffn-ranking", args.ffn_ranking)):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{flag} {path}: file not found")
    # the files `run.py eval` reads; soft: fractional values get export's own message (it cannot scale)
    head, ffn = load_eval_masks(args.head_mask, args.ffn_mask, L, H, soft=True)
    for key, path in (("head_mask", args.head_mask), ("ffn_mask", args.ffn_mask)):
        if path is not None:
            prov.update({key: str(path), f"{key}_sha256": sha256_file(path)})
    if args.head_importance:
        head = head_mask_for_percent(read_importance(args.head_importance, L, H), args.head_percent)
        prov.update(head_importance=str(args.head_importance), head_importance_sha256=sha256_file(args.head_importance),
                    head_percent=args.head_percent)
    elif args.head_percent is not None:
        head = _first_units(L * H, count_for_percent(args.head_percent, L * H)).view(L, H)  # (L*H,) -> (L, H)
        prov.update(counts_only=True, head_percent=args.head_percent)
    if args.ffn_ranking:
        ffn = ffn_mask_for_percent(read_ffn_ranking(args.ffn_ranking, L), args.ffn_percent, L)
        prov.update(ffn_ranking=str(args.ffn_ranking), ffn_ranking_sha256=sha256_file(args.ffn_ranking),
                    ffn_percent=args.ffn_percent)
    elif args.ffn_percent is not None:
        ffn = _first_units(L, count_for_percent(args.ffn_percent, L))
        prov.update(counts_only=True, ffn_percent=args.ffn_percent)
    if prov["counts_only"] and not args.dry_run:
        raise ValueError("a percentage alone does not say which units to remove: give --head-importance / "
                         "--ffn-ranking with it, or mask files (percentages alone only with --dry-run)")
    return head, ffn, prov


def _first_units(total: int, off: int):
    import torch

    mask = torch.ones(total)
    mask[:off] = 0.0
    return mask


def _stored_dtype(model_dir: Path):
    from opt66b.weights import _ST_DTYPES, canonical_key, checkpoint_files, read_safetensors_header

    for key, path in checkpoint_files(model_dir).items():
        if canonical_key(key) == "decoder.embed_tokens.weight" or key == "lm_head.weight":
            return _ST_DTYPES[read_safetensors_header(path)[key]["dtype"]]
    raise ValueError(f"{model_dir}: no embedding tensor found")


def dry_run_report(cfg: Any, name: str, head, ffn, dtype, counts_only: bool) -> str:
    """The lines --dry-run prints: what the heads, the FFNs and both together remove."""
    from opt66b.export import pruned_config, removal_summary

    gib = 1 << 30
    both = removal_summary(cfg, pruned_config(cfg, head, ffn), dtype)
    heads = removal_summary(cfg, pruned_config(cfg, head, None), dtype)
    ffns = removal_summary(cfg, pruned_config(cfg, None, ffn), dtype)
    before = both["parameters_before"]
    lines = [f"{name}: {cfg.num_layers} layers x {cfg.num_heads} heads, {before / 1e9:.3f}B parameters, "
             f"{both['bytes_before'] / gib:.2f} GiB as {both['dtype']}",
             f"  heads: remove {heads['heads_removed']} of {heads['heads_total']}: "
             f"{heads['parameters_removed'] / 1e9:.3f}B parameters, {heads['bytes_removed'] / gib:.2f} GiB",
             f"  FFNs:  remove {ffns['ffn_removed']} of {ffns['ffn_total']}: "
             f"{ffns['parameters_removed'] / 1e9:.3f}B parameters, {ffns['bytes_removed'] / gib:.2f} GiB",
             f"  total: remove {both['parameters_removed'] / 1e9:.3f}B parameters "
             f"({100 * both['parameters_removed'] / before:.1f}%), {both['bytes_removed'] / gib:.2f} GiB; "
             f"left {both['parameters_after'] / 1e9:.3f}B parameters, {both['bytes_after'] / gib:.2f} GiB"]
    if counts_only:
        lines.append("  (no ranking given: every head has the same parameters, every FFN too, so these "
                     "numbers depend only on how many are removed, not which)")
    return "\n".join(lines)
