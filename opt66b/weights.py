"""Load HF OPT checkpoints from safetensors shards: meta-device build, one read per tensor, strict accounting.

Checkpoint facts (docs/porting.md): keys come with or without the
`model.` prefix depending on the size; `lm_head.weight` may be stored, absent (tied), or the only
survivor of the tied pair (SFconvertbot conversions drop one name of a shared storage).

The model is built on the meta device (no memory), then each tensor is read once from its shard
(memory-mapped by safetensors) and moved to its target device and dtype in one step, so the
weights never exist twice. On CPU at the stored dtype the parameters stay zero-copy views of the
mapped file; a CPU dtype conversion (e.g. the fp32 upcast of fp16 shards) reads the bytes in
chunks into the new tensor instead, so the shard's pages never sit in memory beside the copy
(tests/benchmarks/bench_load_memory.py: peak 1.01x the loaded bytes for both). Every source key is mapped or declared ignored, every parameter is
filled exactly once; anything else is an error that names the key and the file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from torch import nn

from .config import OPTConfig, config_from_hf
from .fileio import read_json
from .model import OPT

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_ST_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
DeviceFor = Callable[[str], torch.device]  # parameter name -> device


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is; the message names the file and key."""


_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """Parse and validate a safetensors header without reading tensor data.

    Checks that the header is a complete JSON object, that every entry has a known dtype, a shape
    of non-negative integers and data_offsets [begin, end] whose length matches shape x dtype, and
    that every byte range lies inside the file: a truncated download or a hand-edited header fails
    here with the file's name and the tensor's key instead of deep inside a read.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header); re-download it")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors header (claims {n} bytes, file has "
                                  f"{size}); re-download or re-convert this shard")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header ({err}); re-download this shard") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is a JSON {type(header).__name__}, not an object; "
                              "the file is corrupt, re-download it")
    data_bytes = size - 8 - n
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"{path}: '__metadata__' must map names to strings; the header is corrupt")
    for key, info in header.items():
        _check_header_entry(path, key, info, data_bytes)
    return header


def _check_header_entry(path: Path, key: str, info: object, data_bytes: int) -> None:
    bad = f"{path}: tensor {key!r}"
    fix = "the header is corrupt, re-download or re-convert this shard"
    if not isinstance(info, dict):
        raise CheckpointError(f"{bad}: header entry is {type(info).__name__}, not an object; {fix}")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in info:
            raise CheckpointError(f"{bad}: header entry lacks '{field}' (has {sorted(info)}); {fix}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _ST_ITEMSIZE:
        raise CheckpointError(f"{bad}: unknown dtype {dtype!r:.40}; {fix}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise CheckpointError(f"{bad}: shape {shape!r:.60} is not a list of non-negative integers; {fix}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{bad}: data_offsets {offsets!r:.60} is not [begin, end] with 0 <= begin <= end; {fix}")
    begin, end = offsets
    if end > data_bytes:
        raise CheckpointError(f"{bad} ends at byte {end} of a {data_bytes}-byte data section; "
                              "the shard is truncated, re-download it")
    numel = 1
    for d in shape:
        numel *= d
    if end - begin != numel * _ST_ITEMSIZE[dtype]:
        raise CheckpointError(f"{bad}: data_offsets span {end - begin} bytes but shape {shape} x {dtype} needs "
                              f"{numel * _ST_ITEMSIZE[dtype]}; {fix}")


CHUNK_BYTES = 8 << 20  # read buffer of the converting path; small next to any real tensor


def _read_converted(path: Path, key: str, info: dict, stored: torch.dtype, dtype: torch.dtype) -> torch.Tensor:
    """Read tensor `key` of safetensors file `path` into a new CPU tensor of `dtype`, converting
    CHUNK_BYTES at a time with ordinary reads (the page cache is not this process's memory)."""
    out = torch.empty(info["shape"], dtype=dtype)
    flat = out.view(-1)  # (numel,)
    itemsize = torch.empty(0, dtype=stored).element_size()
    begin, end = info["data_offsets"]
    if end - begin != flat.numel() * itemsize:
        raise CheckpointError(f"{path}: tensor {key!r} spans {end - begin} bytes, its shape and dtype need "
                              f"{flat.numel() * itemsize}; the shard is corrupt, re-download it")
    step = max(CHUNK_BYTES // itemsize, 1) * itemsize
    buf = bytearray(min(step, max(end - begin, 1)))
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n + begin)
        done = 0  # elements converted so far
        while done < flat.numel():
            want = min(step, (flat.numel() - done) * itemsize)
            view = memoryview(buf)[:want]
            got = f.readinto(view)
            if got != want:
                raise CheckpointError(f"{path}: tensor {key!r} ends early (short read); re-download this shard")
            chunk = torch.frombuffer(view, dtype=torch.uint8).view(stored)  # (want // itemsize,)
            flat[done:done + chunk.numel()].copy_(chunk)
            done += chunk.numel()
    return out


def checkpoint_files(ckpt_dir: Path) -> dict[str, Path]:
    """Map every stored key to its shard file, from the index or from the single file."""
    ckpt_dir = Path(ckpt_dir).expanduser()
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: checkpoint directory not found")
    index = ckpt_dir / INDEX_NAME
    if index.is_file():
        return _index_files(ckpt_dir, index)
    single = ckpt_dir / SINGLE_NAME
    if single.is_file():
        return {key: single for key in read_safetensors_header(single)}
    bins = sorted(p.name for p in ckpt_dir.glob("pytorch_model*.bin"))
    hint = f" It has {bins[0]}...: convert it with `python run.py convert {ckpt_dir} OUT_DIR`." if bins else ""
    raise FileNotFoundError(f"{ckpt_dir}: neither {SINGLE_NAME} nor {INDEX_NAME} found.{hint}")


def _index_files(ckpt_dir: Path, index: Path) -> dict[str, Path]:
    """{key: shard path} from a shard index, every path confined to the checkpoint directory."""
    try:
        raw = read_json(index, "re-download it", want=dict)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    weight_map = raw.get("weight_map", raw)  # accelerate writes a flat {name: file} map
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no 'weight_map' object of {{tensor name: shard file}}; re-download it")
    files: dict[str, Path] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{index}: key {key!r} maps to {type(name).__name__} {name!r:.40}, "
                                  "expected a shard file name")
        files[key] = confined_path(ckpt_dir, name, f"{index}: key {key!r}")
        if not files[key].is_file():
            raise CheckpointError(f"{index}: key {key!r} is mapped to {name}, which does not exist in {ckpt_dir}")
    return files


def confined_path(root: Path, name: str, where: str) -> Path:
    """root / name for a file name read from a file inside `root`; refuses absolute names, `..` and
    symlinks that resolve outside root, so a checkpoint can only load its own files."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        raise CheckpointError(f"{where}: file name {name!r} must be relative to {root} without '..'; "
                              "a checkpoint may only name files inside its own directory")
    path = root / rel
    # The Hugging Face hub cache keeps snapshots/<revision>/<file> as links to ../../blobs/<hash>.
    allowed = [root.resolve()]
    if root.resolve().parent.name == "snapshots":
        allowed.append(root.resolve().parent.parent / "blobs")
    if path.exists() and not any(path.resolve().is_relative_to(a) for a in allowed):
        raise CheckpointError(f"{where}: {name} is a link to {path.resolve()}, outside {root}; "
                              "copy the file into the checkpoint directory instead")
    return path


def canonical_key(key: str) -> str:
    return key[len("model."):] if key.startswith("model.") else key


def key_map(stored: dict[str, Path], cfg: OPTConfig, targets: list[str]) -> tuple[dict[str, tuple[str, Path]], list[str]]:
    """Decide which stored key fills which parameter. Returns {param: (stored key, file)} and the
    list of stored keys deliberately ignored. Raises on unknown or missing keys."""
    by_canon: dict[str, tuple[str, Path]] = {}
    for key, path in stored.items():
        canon = canonical_key(key)
        if canon in by_canon:
            raise CheckpointError(f"{path}: key {key!r} duplicates {by_canon[canon][0]!r} in {by_canon[canon][1]}")
        by_canon[canon] = (key, path)
    ignored = []
    embed = "decoder.embed_tokens.weight"
    if cfg.tie_word_embeddings and "lm_head.weight" in by_canon:
        if embed in by_canon:
            ignored.append(by_canon.pop("lm_head.weight")[0])  # the tied copy of the embedding
        else:
            by_canon[embed] = by_canon.pop("lm_head.weight")  # the only survivor of the tied pair
    target_set = set(targets)
    unexpected = sorted(f"{by_canon[c][0]} (in {by_canon[c][1].name})" for c in by_canon if c not in target_set)
    if unexpected:
        raise CheckpointError(f"unexpected keys for this config: {unexpected[:8]}"
                              f"{' ...' if len(unexpected) > 8 else ''}; is config.json the checkpoint's own?")
    missing = sorted(t for t in targets if t not in by_canon)
    if missing:
        raise CheckpointError(f"missing keys in {sorted({p.parent for p in stored.values()})}: {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}")
    return by_canon, ignored


def check_key_map(mapped: dict[str, tuple[str, Path]], headers: dict[Path, dict], shapes: dict[str, tuple[int, ...]]) -> None:
    """Every mapped tensor exists in its file with the parameter's shape and a float dtype: the
    checks both loaders (resident and --offload mmap) run before reading any weight."""
    for name, (key, path) in mapped.items():
        info = headers[path].get(key)
        if info is None:
            raise CheckpointError(f"{path}: the index maps {key!r} to this file, but the file has no such tensor")
        if tuple(info["shape"]) != shapes[name]:
            raise CheckpointError(f"{path}: {key!r} has shape {tuple(info['shape'])}, this config needs "
                                  f"{shapes[name]}; does config.json match the weights?")
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{path}: {key!r} has dtype {info['dtype']}, expected a float type (F16/BF16/F32)")


def _set_param(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def load_model(ckpt_dir: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
               device_for: DeviceFor | None = None, log: Callable[[str], None] | None = None) -> OPT:
    """Load an OPT checkpoint directory (config.json + safetensors) into a new `OPT`.

    dtype: target dtype (None keeps each tensor's stored dtype). device: where every parameter goes,
    unless `device_for(param_name)` says otherwise (layer placement, see placement.py).
    Parameters come back with requires_grad=False: this is an analysis toolkit; call
    `model.requires_grad_(True)` to train.
    """
    ckpt_dir = Path(ckpt_dir).expanduser()
    cfg = config_from_hf(ckpt_dir)
    stored = checkpoint_files(ckpt_dir)
    with torch.device("meta"):
        model = OPT(cfg)
    targets = dict(model.named_parameters())
    mapped, ignored = key_map(stored, cfg, list(targets))
    headers = {path: read_safetensors_header(path) for path in sorted(set(p for _, p in mapped.values()))}
    check_key_map(mapped, headers, {name: tuple(p.shape) for name, p in targets.items()})
    by_file: dict[Path, list[str]] = {}
    for name, (_, path) in mapped.items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():  # one shard open at a time, tensors read once each
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in names:
                    key = mapped[name][0]
                    target = torch.device(device_for(name)) if device_for else torch.device(device)
                    stored = _ST_DTYPES[headers[path][key]["dtype"]]
                    if target.type == "cpu" and dtype is not None and dtype != stored:
                        # Converting on CPU: read the bytes in chunks straight into the new tensor.
                        # Going through the mmap view would leave the whole shard's pages resident
                        # next to the converted copy (peak 1.13x instead of ~1.0x for an upcast).
                        t = _read_converted(path, key, headers[path][key], stored, dtype)
                    else:
                        t = f.get_tensor(key)  # memory-mapped view of the file (zero-copy on CPU)
                        t = t.to(device=target, dtype=dtype or t.dtype)
                    _set_param(model, name, t)
        except CheckpointError:
            raise
        except Exception as err:  # safetensors raises its own error types for corrupt data
            raise CheckpointError(f"{path}: could not read tensors ({type(err).__name__}: {err})") from err
    if log and ignored:
        log(f"ignored stored keys (tied copy of the embedding): {ignored}")
    model.eval()
    return model


def save_checkpoint(model: OPT, out_dir: str | Path, dtype: torch.dtype | None = None,
                    max_shard_bytes: int | None = None, prefix: str = "model.", with_lm_head: bool = False) -> Path:
    """Write `model` as an HF-style checkpoint (config.json + safetensors, sharded above
    max_shard_bytes). `prefix` and `with_lm_head` choose among the real-world key layouts."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    tensors = {}
    for name, p in model.named_parameters():
        tensors[prefix + name] = p.detach().to(dtype or p.dtype).contiguous().cpu()
    if with_lm_head and cfg.tie_word_embeddings:
        tensors["lm_head.weight"] = tensors[prefix + "decoder.embed_tokens.weight"].clone()
    (out / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(tensors, str(out / SINGLE_NAME), metadata=meta)
        return out
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata=meta)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return out


def build_random_model(cfg: OPTConfig, dtype: torch.dtype, device_for: Callable[[str], torch.device],
                       seed: int = 0) -> OPT:
    """An OPT of shape `cfg` with random weights created directly on `device_for(name)`.

    LayerNorm weights 1, biases 0, matrices N(0, 0.02). Each parameter has its own seed
    (seed, parameter index), so values do not depend on the device map (for one device type).
    """
    with torch.device("meta"):
        model = OPT(cfg)
    for idx, (name, p) in enumerate(list(model.named_parameters())):
        dev = torch.device(device_for(name))
        gen_dev = torch.device("cuda") if dev.type == "cpu" and torch.cuda.is_available() else dev
        t = torch.empty(p.shape, dtype=dtype, device=gen_dev)
        if "layer_norm" in name and name.endswith("weight"):
            t.fill_(1.0)
        elif name.endswith("bias"):
            t.zero_()
        else:
            gen = torch.Generator(device=gen_dev).manual_seed(seed * 1_000_003 + idx)
            t.normal_(0.0, 0.02, generator=gen)
        _set_param(model, name, t.to(dev))
    return model.eval()
