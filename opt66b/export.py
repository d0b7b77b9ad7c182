"""Physically pruned checkpoints: drop the masked heads' and FFNs' weights and write a smaller model.

A head mask (L, H) and an FFN mask (L,) of zeros and ones, as the sweeps and `run.py eval` use them,
become a checkpoint without those weights:

    head h of layer l removed:  q_proj/k_proj/v_proj lose rows h*Dh..(h+1)*Dh-1 (weights and biases),
                                out_proj loses the same input columns; out_proj's bias stays (the mask
                                keeps it: a masked head contributes 0 to out_proj's input, not its bias)
    every head of layer l:      q/k/v and out_proj.weight go; out_proj.bias is all that is left
    FFN of layer l removed:     fc1 and fc2 go, and a pre-LN layer's final_layer_norm (it only feeds the
                                FFN); a post-LN (350m) layer keeps it: the mask still applies it

config.json records what is gone in transformers' `pruned_heads` convention ({"layer": [head ids]},
string keys) and in "opt66b_pruned_ffn" ([layer ids]), plus "opt66b_export" (source, its sha256s,
counts). Head ids keep the ORIGINAL numbering: the model still has `num_heads` logical heads per
layer, masks and scores stay (L, H), and a removed head reads as zero. So masks made for the full
model apply to the exported one, and exporting an exported model prunes it further.

The decoder computes the same function as the masked full model: on the same inputs the logits
differ only by float summation order (out_proj sums h*Dh products instead of H*Dh, of which the
extra ones were exact zeros; tests/test_export.py measures it).

Memory: tensors are streamed from the source shards (memory-mapped) into one output shard at a
time, so the peak is about one output shard plus the largest source tensor, never the model.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

from .config import PRUNED_FFN_KEY, PRUNED_HEADS_KEY, OPTConfig, config_from_hf
from .convert import COPIED_FILES, _nbytes
from .fileio import Progress, atomic_save_file, atomic_write_bytes, atomic_write_text, sha256_file
from .model import OPT
from .placement import dtype_bytes, head_params, layer_params
from .weights import INDEX_NAME, _ST_DTYPES, checkpoint_files, key_map, read_safetensors_header

EXPORT_KEY = "opt66b_export"  # provenance record in config.json
MANIFEST_NAME = ".export-manifest.json"  # in an unfinished output directory: what is being written (resume)
DEFAULT_SHARD_BYTES = 2 << 30
_LAYER_PARAM = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


# -- what a mask removes ------------------------------------------------------------------------------
def pruned_config(cfg: OPTConfig, head_mask: torch.Tensor | None = None, ffn_mask: torch.Tensor | None = None,
                  head_source: str = "head_mask", ffn_source: str = "ffn_mask") -> OPTConfig:
    """`cfg` with the heads / FFNs set to 0 in the masks removed as well (what it already lacks stays
    removed, whatever the mask says there). Masks must be 0/1, (L, H) and (L,); `*_source` names
    them in errors. Raises ValueError when nothing would be left of the attention."""
    pruned = {layer: set(heads) for layer, heads in cfg.pruned_heads.items()}
    ffn = set(cfg.pruned_ffn)
    if head_mask is not None:
        head_mask = _binary(head_mask, (cfg.num_layers, cfg.num_heads), head_source, "(layers, heads)")
        for layer, head in torch.nonzero(head_mask == 0).tolist():
            pruned.setdefault(layer, set()).add(head)
    if ffn_mask is not None:
        ffn_mask = _binary(ffn_mask, (cfg.num_layers,), ffn_source, "(layers,)")
        ffn.update(torch.nonzero(ffn_mask == 0).flatten().tolist())
    if sum(len(h) for h in pruned.values()) == cfg.num_layers * cfg.num_heads:
        raise ValueError(f"{head_source}: removes every head of every layer ({cfg.num_layers} x {cfg.num_heads}); "
                         "nothing of the attention would be left, keep at least one head")
    return replace(cfg, pruned_heads={k: tuple(v) for k, v in pruned.items()}, pruned_ffn=tuple(ffn))


def _binary(mask: torch.Tensor, shape: tuple[int, ...], source: str, layout: str) -> torch.Tensor:
    mask = torch.as_tensor(mask).detach().float().cpu()
    if tuple(mask.shape) != shape:
        raise ValueError(f"{source}: shape {tuple(mask.shape)} does not fit the model, which needs {layout} = {shape}")
    bad = mask[(mask != 0) & (mask != 1)]
    if bad.numel():
        raise ValueError(f"{source}: holds values other than 0 and 1 (e.g. {bad[0].item():g}); export removes "
                         "units, it cannot scale them")
    return mask


def config_for_counts(cfg: OPTConfig, heads: int, ffns: int) -> OPTConfig:
    """`cfg` with `heads` more heads and `ffns` more FFNs removed, taken in flat (layer-major) order.

    For sizes only: every head has the same parameters (4 D Dh + 3 Dh), every FFN too (2 D F + F + D,
    plus a pre-LN layer's final LayerNorm), so the counts removed decide the sizes, not which units."""
    free_heads = [(l, h) for l in range(cfg.num_layers) for h in cfg.kept_heads(l)]
    free_ffn = [l for l in range(cfg.num_layers) if cfg.has_ffn(l)]
    if not 0 <= heads <= len(free_heads) or not 0 <= ffns <= len(free_ffn):
        raise ValueError(f"cannot remove {heads} heads and {ffns} FFNs: the model has {len(free_heads)} and "
                         f"{len(free_ffn)}")
    mask = torch.ones(cfg.num_layers, cfg.num_heads)  # (L, H)
    for layer, head in free_heads[:heads]:
        mask[layer, head] = 0.0
    ffn = torch.ones(cfg.num_layers)  # (L,)
    ffn[free_ffn[:ffns]] = 0.0
    return pruned_config(cfg, mask, ffn)


def model_params(cfg: OPTConfig) -> int:
    return head_params(cfg) + sum(layer_params(cfg, i) for i in range(cfg.num_layers))


def removal_summary(src: OPTConfig, dst: OPTConfig, dtype: torch.dtype) -> dict[str, Any]:
    """Counts, parameters and bytes (at `dtype`) that going from `src` to `dst` removes."""
    before, after = model_params(src), model_params(dst)
    heads = sum(len(h) for h in dst.pruned_heads.values()) - sum(len(h) for h in src.pruned_heads.values())
    return {"heads_removed": heads, "heads_total": src.num_layers * src.num_heads,
            "heads_left": src.num_layers * src.num_heads - sum(len(h) for h in dst.pruned_heads.values()),
            "ffn_removed": len(dst.pruned_ffn) - len(src.pruned_ffn), "ffn_total": src.num_layers,
            "parameters_before": before, "parameters_after": after, "parameters_removed": before - after,
            "dtype": str(dtype).removeprefix("torch."), "bytes_before": before * dtype_bytes(dtype),
            "bytes_after": after * dtype_bytes(dtype), "bytes_removed": (before - after) * dtype_bytes(dtype)}


# -- slicing one tensor ---------------------------------------------------------------------------
def slice_tensor(name: str, t: torch.Tensor, src: OPTConfig, dst: OPTConfig) -> torch.Tensor | None:
    """Parameter `name` (canonical, e.g. decoder.layers.3.self_attn.q_proj.weight) of the `src` model
    as the `dst` model stores it; None when `dst` has no such parameter."""
    m = _LAYER_PARAM.fullmatch(name)
    if m is None:
        return t
    layer, rest = int(m.group(1)), m.group(2)
    if rest.startswith(("fc1.", "fc2.")) or (rest.startswith("final_layer_norm.") and src.do_layer_norm_before):
        return t if dst.has_ffn(layer) else None
    if not rest.startswith("self_attn.") or rest == "self_attn.out_proj.bias":
        return t
    src_heads, dst_heads = src.kept_heads(layer), dst.kept_heads(layer)
    if dst_heads == src_heads:
        return t
    if not dst_heads:
        return None
    dh = src.head_dim
    where = [src_heads.index(h) for h in dst_heads]  # positions of the kept heads among the stored ones
    index = torch.cat([torch.arange(p * dh, (p + 1) * dh) for p in where])  # (h * Dh,)
    dim = 1 if rest == "self_attn.out_proj.weight" else 0  # out_proj: input columns; q/k/v: output rows
    return t.index_select(dim, index)


# -- the export ---------------------------------------------------------------------------------------
def check_output_dir(src_dir: Path, out_dir: Path) -> None:
    """--out must lie outside the source checkpoint and be new or empty (or an unfinished export)."""
    src, out = Path(src_dir).resolve(), Path(out_dir).resolve()
    if out == src or src in out.parents:
        raise ValueError(f"--out {out_dir}: lies inside the source checkpoint {src_dir}; choose a directory "
                         "outside it")
    if out.is_file():
        raise ValueError(f"--out {out_dir}: is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ValueError(f"--out {out_dir}: exists and is not empty; give a new directory (an unfinished export "
                         "to the same directory resumes)")


def export_pruned(src_dir: str | Path, out_dir: str | Path, head_mask: torch.Tensor | None = None,
                  ffn_mask: torch.Tensor | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                  provenance: dict[str, Any] | None = None, head_source: str = "head_mask",
                  ffn_source: str = "ffn_mask", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the checkpoint of `src_dir` without the heads/FFNs the masks zero to `out_dir`.

    Everything is checked before anything is written. Shards are written one at a time, each
    atomically; a killed export resumes (same manifest) and skips finished shards. config.json, written
    last, marks a finished export. Returns the config's export record.
    """
    log = log or (lambda msg: None)
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    check_output_dir(src_dir, out_dir)
    src = config_from_hf(src_dir)
    dst = pruned_config(src, head_mask, ffn_mask, head_source, ffn_source)
    stored = checkpoint_files(src_dir)
    with torch.device("meta"):
        want = {n: tuple(p.shape) for n, p in OPT(dst).named_parameters()}
        have = [n for n, _ in OPT(src).named_parameters()]
    mapped, _ = key_map(stored, src, have)  # every source key accounted for, as the loader does
    headers = {path: read_safetensors_header(path) for path in sorted(set(stored.values()))}
    for name in have:
        key, path = mapped[name]
        info = headers[path].get(key)
        if info is None or info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: {key!r} is missing or not a float tensor; is the checkpoint complete?")
    shards = _shard_layout(want, mapped, headers, max_shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    fingerprint = {"source": str(src_dir.resolve()), "pruned": dst.pruned_hf_dict(), "shards": names,
                   "source_config_sha256": sha256_file(src_dir / "config.json")}
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST_NAME
    if manifest.is_file() and json.loads(manifest.read_text()) != fingerprint:
        raise ValueError(f"--out {out_dir}: holds an unfinished export of other masks or another source; "
                         "give a new directory or delete it")
    atomic_write_text(manifest, json.dumps(fingerprint, indent=2) + "\n")
    weight_map, total = _write_shards(shards, names, want, mapped, headers, src, dst, out_dir, log)
    atomic_write_text(out_dir / INDEX_NAME, json.dumps({"metadata": {"total_size": total},
                                                        "weight_map": weight_map}, indent=2) + "\n")
    for fname in COPIED_FILES:
        if fname != "config.json" and (src_dir / fname).is_file():
            atomic_write_bytes(out_dir / fname, (src_dir / fname).read_bytes())
    raw = _exported_config(src_dir, src, dst, stored, mapped, headers, provenance)
    atomic_write_text(out_dir / "config.json", json.dumps(raw, indent=2) + "\n")
    manifest.unlink()
    log(f"[export] wrote {len(shards)} shard(s), {total / 2**30:.3f} GiB to {out_dir}")
    return raw[EXPORT_KEY]


def _write_shards(shards: list[list[str]], names: list[str], want: dict[str, tuple[int, ...]], mapped: dict,
                  headers: dict, src: Any, dst: Any, out_dir: Path, log: Callable[[str], None]) -> tuple[dict, int]:
    """Each shard's sliced tensors, one shard at a time, atomically; a shard already there (a killed
    earlier export of the same manifest) is kept. Returns the index's weight map and total bytes."""
    weight_map: dict[str, str] = {}
    total = 0
    bar = Progress(len(shards), "export shards")
    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}
        for shard, fname in zip(shards, names):
            for name in shard:
                weight_map[_out_key(name)] = fname
                total += _nbytes(list(want[name]), headers[mapped[name][1]][mapped[name][0]]["dtype"])
            if (out_dir / fname).is_file():
                log(f"[export] {fname} exists (unfinished earlier run), kept")
                bar.update()
                continue
            tensors = {}
            for name in shard:
                key, path = mapped[name]
                if path not in handles:
                    handles[path] = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
                t = slice_tensor(name, handles[path].get_tensor(key), src, dst)
                if t is None or tuple(t.shape) != want[name]:
                    raise AssertionError(f"{name}: sliced to {None if t is None else tuple(t.shape)}, "
                                         f"the pruned model needs {want[name]}")
                tensors[_out_key(name)] = t.contiguous()
            atomic_save_file(tensors, out_dir / fname, metadata={"format": "pt"})
            del tensors
            bar.update()
    return weight_map, total


def _exported_config(src_dir: Path, src: Any, dst: Any, stored: dict, mapped: dict, headers: dict,
                     provenance: dict[str, Any] | None) -> dict[str, Any]:
    """The pruned checkpoint's config.json: the source's, with the removed heads and FFNs and the export
    record (source files by sha256, what was removed, how the masks were chosen, earlier exports)."""
    src_raw = json.loads((src_dir / "config.json").read_text())
    source_files = sorted({*stored.values(), src_dir / "config.json",
                           *([src_dir / INDEX_NAME] if (src_dir / INDEX_NAME).is_file() else [])})
    hashes, bar = {}, Progress(len(source_files), "export: sha256 of the source files")
    for path in source_files:
        hashes[path.name] = sha256_file(path)
        bar.update()
    embed_key, embed_path = mapped["decoder.embed_tokens.weight"]
    record = {"source": str(src_dir.resolve()), "source_sha256": hashes,
              **removal_summary(src, dst, _ST_DTYPES[headers[embed_path][embed_key]["dtype"]]), **(provenance or {})}
    earlier = src_raw.get(EXPORT_KEY)
    if earlier:  # the source is itself an export: keep where it came from
        record["history"] = [*earlier.get("history", []), {k: v for k, v in earlier.items() if k != "history"}]
    raw = {k: v for k, v in src_raw.items() if k not in (PRUNED_HEADS_KEY, PRUNED_FFN_KEY, EXPORT_KEY)}
    raw.update(dst.pruned_hf_dict())
    raw[EXPORT_KEY] = record
    return raw


def _out_key(name: str) -> str:
    """HF OPTForCausalLM naming: model.decoder.* and an untied lm_head.weight."""
    return name if name == "lm_head.weight" else "model." + name


def _shard_layout(want: dict[str, tuple[int, ...]], mapped: dict, headers: dict, max_bytes: int) -> list[list[str]]:
    """Parameters in model order, cut into shards of at most max_bytes (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in want.items():
        key, path = mapped[name]
        nbytes = _nbytes(list(shape), headers[path][key]["dtype"])
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards
