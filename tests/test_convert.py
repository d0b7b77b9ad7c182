"""`run.py convert`: pytorch_model*.bin -> safetensors shards (opt66b/convert.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import random_model

from opt66b import load_model
from opt66b.convert import convert_bin_checkpoint


def _write_bin(model, out: Path, shards: int = 1, prefix: str = "model.", tied_head: bool = True) -> Path:
    """Write `model` the way the official repos ship it: config.json + pytorch_model*.bin, with
    lm_head.weight aliasing the embedding (one storage) when tied_head."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.config.to_hf_dict()))
    state = {prefix + k: v for k, v in model.state_dict().items()}
    if tied_head:
        state["lm_head.weight"] = state[prefix + "decoder.embed_tokens.weight"]  # same storage
    if shards == 1:
        torch.save(state, out / "pytorch_model.bin")
        return out
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
        torch.save(part, out / name)
        weight_map.update({k: name for k in part})
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


@pytest.mark.parametrize("shards,prefix", [(1, "model."), (3, "model."), (2, "")])
def test_convert_roundtrip_gives_identical_logits(tiny_config, tmp_path, shards, prefix):
    model = random_model(tiny_config, seed=3)
    src = _write_bin(model, tmp_path / "bin", shards=shards, prefix=prefix)
    (src / "vocab.json").write_text("{}")
    logs: list[str] = []
    dst = convert_bin_checkpoint(src, tmp_path / "st", log=logs.append)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
                                                          for i in range(shards)]
    assert (dst / "vocab.json").is_file() and (dst / "config.json").is_file()
    if shards == 1:  # the aliased lm_head can only be detected inside one shard
        assert "lm_head.weight" not in index["weight_map"]
        assert any("dropped lm_head.weight" in m for m in logs)
    loaded = load_model(dst)
    ids = torch.randint(0, tiny_config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    # Same weights, same code, same dtype: bit-identical.
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_convert_resumes_and_keeps_existing_shards(tiny_config, tmp_path):
    src = _write_bin(random_model(tiny_config), tmp_path / "bin", shards=2)
    dst = convert_bin_checkpoint(src, tmp_path / "st", log=lambda m: None)
    first = dst / "model-00001-of-00002.safetensors"
    stamp = first.stat().st_mtime_ns
    (dst / "model.safetensors.index.json").unlink()
    logs: list[str] = []
    convert_bin_checkpoint(src, dst, log=logs.append)
    assert first.stat().st_mtime_ns == stamp
    assert any("exists, kept" in m for m in logs)
    assert load_model(dst).config.num_layers == tiny_config.num_layers


def test_convert_errors_name_the_file(tiny_config, tmp_path):
    model = random_model(tiny_config)
    with pytest.raises(FileNotFoundError, match="not found"):
        convert_bin_checkpoint(tmp_path / "nope", tmp_path / "out")
    src = _write_bin(model, tmp_path / "a", shards=2)
    (src / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00002.bin"):
        convert_bin_checkpoint(src, tmp_path / "out")
    src = _write_bin(model, tmp_path / "b")
    (src / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_bin_checkpoint(src, tmp_path / "out")
    src = _write_bin(model, tmp_path / "c")
    data = (src / "pytorch_model.bin").read_bytes()
    (src / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        convert_bin_checkpoint(src, tmp_path / "out")
    empty = tmp_path / "d"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(tiny_config.to_hf_dict()))  # a valid config, no weights
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        convert_bin_checkpoint(empty, tmp_path / "out")


def test_convert_refuses_pickled_objects(tiny_config, tmp_path):
    src = tmp_path / "e"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(tiny_config.to_hf_dict()))
    torch.save({"decoder.embed_tokens.weight": torch.zeros(2), "step": 5}, src / "pytorch_model.bin")
    with pytest.raises(ValueError, match="'step'"):
        convert_bin_checkpoint(src, tmp_path / "out")


def test_convert_subcommand(tiny_config, tmp_path):
    import run

    src = _write_bin(random_model(tiny_config), tmp_path / "bin")
    assert run.main(["convert", str(src), "--out", str(tmp_path / "st")]) == 0
    assert (tmp_path / "st" / "model-00001-of-00001.safetensors").is_file()
    assert run.main(["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


def test_convert_index_disagreeing_with_shard(tiny_config, tmp_path):
    src = _write_bin(random_model(tiny_config), tmp_path / "bin", shards=2, tied_head=False)
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["model.decoder.layers.9.fc1.weight"] = "pytorch_model-00001-of-00002.bin"
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"model\.decoder\.layers\.9\.fc1\.weight.*pytorch_model-00001-of-00002\.bin"):
        convert_bin_checkpoint(src, tmp_path / "st", log=lambda m: None)
