"""Convert an official OPT `pytorch_model*.bin` checkpoint into safetensors shards.

Mirrors what huggingface/safetensors bindings/python/convert.py (the SFconvertbot) does, shard by
shard (docs/porting.md), with two differences: tensors are loaded with
`torch.load(weights_only=True, mmap=True)` (no pickle code runs, and a 10 GB shard is paged in from
disk instead of copied into RAM), and every output file is written atomically so an interrupted
conversion resumes where it stopped.

    src/config.json, pytorch_model.bin                 -> dst/config.json,
    src/config.json, pytorch_model-0000N-of-0000M.bin     model-0000N-of-0000M.safetensors,
                     + pytorch_model.bin.index.json       model.safetensors.index.json,
                                                          tokenizer files (copied as they are)

A tied `lm_head.weight` that shares its storage with `embed_tokens.weight` in the same shard is
dropped (safetensors cannot store aliased tensors; `load_model` ties it back). An untied or
separately stored copy is kept as it is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import torch

from .config import config_from_hf
from .fileio import atomic_save_file, atomic_write_bytes, atomic_write_text
from .weights import confined_path

BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
ST_INDEX = "model.safetensors.index.json"
COPIED_FILES = ("config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json")
EMBED_SUFFIX = "decoder.embed_tokens.weight"


def bin_shards(src: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The .bin shard files of `src` in order, and the index's {key: file name} map (None for a
    single pytorch_model.bin). Raises FileNotFoundError / ValueError naming the file."""
    index = src / BIN_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise ValueError(f"{index}: not a valid index JSON object ({err}); re-download it") from err
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: has no 'weight_map' object; re-download it")
        for key, name in weight_map.items():
            if not isinstance(name, str):
                raise ValueError(f"{index}: key {key!r} maps to {type(name).__name__} {name!r:.40}, expected a file name")
            confined_path(src, name, f"{index}: key {key!r}")
        names = sorted(set(weight_map.values()))
        for name in names:
            if not (src / name).is_file():
                keys = sorted(k for k, v in weight_map.items() if v == name)
                raise FileNotFoundError(f"{index}: names {name} (for keys such as {keys[0]!r}), which is missing "
                                        f"from {src}; download it")
        return [src / n for n in names], weight_map
    single = src / BIN_SINGLE
    if single.is_file():
        return [single], None
    have_st = (src / "model.safetensors").is_file() or (src / ST_INDEX).is_file()
    hint = " It already holds safetensors: load it directly with --model." if have_st else ""
    raise FileNotFoundError(f"{src}: neither {BIN_SINGLE} nor {BIN_INDEX} found.{hint}")


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    """torch.load one shard safely: weights_only=True always; mmap=True when the file is in the
    zip format (legacy pre-1.6 files cannot be mapped and are read into memory instead)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as err:  # pickle/zip errors come in many types; name the file whatever they are
        raise ValueError(f"{path}: cannot be read as a weights-only PyTorch checkpoint "
                         f"({type(err).__name__}: {err}); is the download complete?") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, expected a state dict of tensors")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor")
    return state


def drop_tied_copies(state: dict[str, torch.Tensor], path: Path, log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    """Remove `lm_head.weight` when it aliases the embedding; clone any other aliased tensor
    (safetensors refuses shared storage). Returns a new dict."""
    out = dict(state)
    embed = next((k for k in out if k.endswith(EMBED_SUFFIX)), None)
    head = out.get("lm_head.weight")
    if embed is not None and head is not None and _same_storage(head, out[embed]) and head.shape == out[embed].shape:
        del out["lm_head.weight"]
        log(f"{path.name}: dropped lm_head.weight (shares storage with {embed}; the loader ties it back)")
    seen: dict[tuple[int, int], str] = {}
    for key, t in out.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and ident in seen:
            log(f"{path.name}: {key!r} shares storage with {seen[ident]!r}; stored as a copy")
            out[key] = t.clone()
        else:
            seen[ident] = key
    return out


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.storage_offset() == b.storage_offset()


def convert_bin_checkpoint(src: str | Path, dst: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """Convert `src` (config.json + pytorch_model*.bin) into `dst` (config.json + safetensors
    shards + model.safetensors.index.json + tokenizer files). One .bin shard is loaded at a time;
    output shards that already exist are kept (resume after an interruption). Returns dst."""

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: source checkpoint directory not found")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src / 'config.json'}: missing; the converted checkpoint needs the model's config.json")
    config_from_hf(src)  # typed validation before hours of conversion
    if src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: the output directory must differ from the source")
    shards, bin_map = bin_shards(src)
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i, path in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        out = dst / name
        if out.is_file():  # written atomically, so an existing file is complete
            from safetensors import safe_open

            with safe_open(str(out), framework="pt") as f:
                for key in f.keys():
                    weight_map[key] = name
                    sl = f.get_slice(key)
                    total += _nbytes(sl.get_shape(), sl.get_dtype())
            log(f"[convert] {i + 1}/{n} {name} exists, kept")
            continue
        log(f"[convert] {i + 1}/{n} {path.name} -> {name}")
        state = drop_tied_copies(load_bin(path), path, log)
        if bin_map is not None:
            wrong = sorted(k for k, v in bin_map.items() if v == path.name and k not in state
                           and not (k == "lm_head.weight" and any(s.endswith(EMBED_SUFFIX) for s in state)))
            if wrong:
                raise ValueError(f"{src / BIN_INDEX}: maps {wrong[:4]} to {path.name}, which does not contain them; "
                                 "the index and the shards disagree, re-download them")
        tensors = {k: t.contiguous() for k, t in state.items()}
        dst.mkdir(parents=True, exist_ok=True)  # only now: a source that fails to load leaves no dst behind
        atomic_save_file(tensors, out, metadata={"format": "pt"})
        for key, t in tensors.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
        del state, tensors
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    atomic_write_text(dst / ST_INDEX, json.dumps(index, indent=2) + "\n")
    for fname in COPIED_FILES:
        if (src / fname).is_file():
            atomic_write_bytes(dst / fname, (src / fname).read_bytes())
    log(f"[convert] wrote {n} shard(s), {len(weight_map)} tensors, {total / 2**30:.2f} GiB to {dst}")
    return dst


_ST_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _nbytes(shape: list[int], dtype: str) -> int:
    count = 1
    for s in shape:
        count *= s
    return count * _ST_BYTES.get(dtype, 4)
