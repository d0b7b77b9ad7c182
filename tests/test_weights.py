"""Checkpoint loading (opt66b/weights.py): every bad-input case (missing, extra,
mis-shaped or duplicated keys, bad index) is a clear error naming the key and/or the file, and good
checkpoints load without duplicated weights."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
from conftest import random_model
from safetensors import safe_open
from safetensors.torch import save_file

from opt66b import CheckpointError, load_model, save_checkpoint



def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture
def ckpt(tiny_config, tmp_path):
    return save_checkpoint(random_model(tiny_config), tmp_path / "single")


@pytest.fixture
def sharded(tiny_config, tmp_path):
    out = save_checkpoint(random_model(tiny_config), tmp_path / "sharded", max_shard_bytes=12_000)
    assert len(list(out.glob("model-*.safetensors"))) >= 3, "the fixture must have several shards"
    return out


def first_shard(ckpt_dir: Path) -> Path:
    return sorted(ckpt_dir.glob("model-*.safetensors"))[0]


def _rewrite(path: Path, edit) -> None:
    tensors = _tensors(path)
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_key_names_key_and_dir(ckpt):
    _rewrite(ckpt / "model.safetensors", lambda t: t.pop("model.decoder.layers.1.fc2.bias"))
    with pytest.raises(CheckpointError, match=r"decoder\.layers\.1\.fc2\.bias") as err:
        load_model(ckpt)
    assert str(ckpt) in str(err.value)


def test_unexpected_key_names_key_and_file(ckpt):
    _rewrite(ckpt / "model.safetensors", lambda t: t.__setitem__("model.decoder.layers.7.fc1.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"model\.decoder\.layers\.7\.fc1\.weight \(in model\.safetensors\)"):
        load_model(ckpt)


def test_wrong_shape_names_key_file_and_shapes(ckpt):
    _rewrite(ckpt / "model.safetensors", lambda t: t.__setitem__("model.decoder.layers.0.fc1.weight", torch.zeros(3, 5)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 'model\.decoder\.layers\.0\.fc1\.weight' has shape \(3, 5\)"):
        load_model(ckpt)


def test_integer_dtype_names_key_and_file(ckpt, tiny_config):
    shape = (tiny_config.ffn_dim,)
    _rewrite(ckpt / "model.safetensors",
             lambda t: t.__setitem__("model.decoder.layers.0.fc1.bias", torch.zeros(shape, dtype=torch.int32)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 'model\.decoder\.layers\.0\.fc1\.bias' has dtype I32"):
        load_model(ckpt)


def test_truncated_shard_names_file_and_key(sharded):
    shard_name = first_shard(sharded).name
    path = sharded / shard_name
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=rf"{re.escape(shard_name)}: tensor '.*' ends at byte \d+ .*truncated"):
        load_model(sharded)
    path.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=rf"{re.escape(shard_name)}: truncated safetensors file"):
        load_model(sharded)


def test_corrupt_header_names_file(sharded):
    shard_name = first_shard(sharded).name
    path = sharded / shard_name
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8:8 + 10] = b"\xff" * 10  # garbage where the JSON header starts
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{re.escape(shard_name)}: corrupt safetensors header"):
        load_model(sharded)
    data[:8] = struct.pack("<Q", 10 ** 12)  # a header length beyond the end of the file
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{re.escape(shard_name)}: corrupt or truncated safetensors header"):
        load_model(sharded)


def test_index_naming_missing_file(sharded):
    shard_name = first_shard(sharded).name
    (sharded / shard_name).unlink()
    with pytest.raises(CheckpointError, match=rf"model\.safetensors\.index\.json: key '.*' is mapped to {re.escape(shard_name)}, which does not exist"):
        load_model(sharded)


def test_index_key_absent_from_its_file(sharded):
    """The index points a real key at a shard that does not hold it."""
    shard_name = first_shard(sharded).name
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["model.decoder.final_layer_norm.bias"] != shard_name
    index["weight_map"]["model.decoder.final_layer_norm.bias"] = shard_name
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"{re.escape(shard_name)}: the index maps 'model\.decoder\.final_layer_norm\.bias'"):
        load_model(sharded)


def test_invalid_index_json(sharded):
    (sharded / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: not valid JSON"):
        load_model(sharded)


def test_missing_config_json(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_model(ckpt)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(tmp_path / "nowhere")


def test_bin_only_directory_hints_at_convert(ckpt):
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*run\.py convert"):
        load_model(ckpt)


def test_duplicate_key_with_and_without_prefix(ckpt):
    _rewrite(ckpt / "model.safetensors",
             lambda t: t.__setitem__("decoder.final_layer_norm.bias", t["model.decoder.final_layer_norm.bias"].clone()))
    with pytest.raises(CheckpointError, match=r"final_layer_norm\.bias.*duplicates"):
        load_model(ckpt)


def test_meta_build_fills_every_parameter_once(sharded, tiny_config):
    model = load_model(sharded, dtype=torch.float32)
    params = list(model.parameters())
    assert all(p.device.type == "cpu" and not p.requires_grad for p in params)
    assert len({p.data_ptr() for p in params}) == len(params)  # no parameter shares another's memory
    assert model.output_weight is model.decoder.embed_tokens.weight  # tied head: one tensor, not a copy
    ref = random_model(tiny_config)
    ids = torch.arange(3, 15).view(2, 6)
    assert torch.equal(model(ids).logits, ref(ids).logits)  # the same weights as were saved


def _mapped_regions(name: str) -> list[tuple[int, int]]:
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.rstrip().endswith(name):
            lo, hi = line.split()[0].split("-")
            regions.append((int(lo, 16), int(hi, 16)))
    return regions


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc to inspect memory maps")
def test_fp16_on_cpu_is_memory_mapped_and_upcast_is_not(tiny_config, tmp_path):
    """Loading at the stored dtype on CPU keeps safetensors' mmap views (no second copy in RAM); an
    upcast must allocate, and then nothing may still point into the file."""
    out = save_checkpoint(random_model(tiny_config), tmp_path / "half", dtype=torch.float16)
    half = load_model(out, dtype=torch.float16)
    regions = _mapped_regions(str(out / "model.safetensors"))
    assert regions, "the fp16 shard should still be mapped while the model lives"
    w = half.decoder.layers[0].fc1.weight
    assert w.dtype == torch.float16 and any(lo <= w.data_ptr() < hi for lo, hi in regions)
    full = load_model(out, dtype=torch.float32)
    regions = _mapped_regions(str(out / "model.safetensors"))
    assert all(not (lo <= p.data_ptr() < hi) for p in full.parameters() for lo, hi in regions)
    assert full.decoder.layers[0].fc1.weight.dtype == torch.float32
    for (name, a), b in zip(full.named_parameters(), half.parameters()):
        assert torch.equal(a, b.float()), name  # fp16 -> fp32 is exact


def test_chunked_conversion_across_chunk_boundaries(tiny_config, tmp_path, monkeypatch):
    """The converting read path splits tensors into CHUNK_BYTES pieces; a chunk of 10 bytes (5 fp16
    values, not dividing any row) must still reproduce every value exactly."""
    import opt66b.weights as weights

    out = save_checkpoint(random_model(tiny_config), tmp_path / "half", dtype=torch.float16)
    monkeypatch.setattr(weights, "CHUNK_BYTES", 10)
    full = load_model(out, dtype=torch.float32)
    half = load_model(out, dtype=torch.float16)
    for (name, a), b in zip(full.named_parameters(), half.parameters()):
        assert torch.equal(a, b.float()), name
