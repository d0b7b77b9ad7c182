"""Placement: --max-memory / --device-map parsing, the auto map for every OPT size, explicit maps.

Multi-device equality is emulated on CPU with distinct device *names* ("cpu:0", "cpu:1", "cpu:2"):
torch maps them all to the one CPU, so these tests check the routing (which parameter is put where,
that the forward follows the map, that the summary and sizes are right), not cross-device copies.
Shape-only checks of the real sizes use the meta device (no memory).
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import random_model
from opt66b import OPT, OPT_CONFIGS, config_for_size, load_model, save_checkpoint
from opt66b.placement import (GIB, activation_reserve, auto_device_map, build_device_map, head_params, layer_params,
                              parse_max_memory, parse_size)

# Parameter counts of the released facebook/opt-* checkpoints (tied lm_head counted once).
FACTS = {"opt-125m": (7_087_872, 125_239_296), "opt-350m": (12_596_224, 331_196_416),
         "opt-1.3b": (50_358_272, 1_315_758_080), "opt-2.7b": (78_676_480, 2_651_596_800),
         "opt-6.7b": (201_379_840, 6_658_473_984), "opt-13b": (314_639_360, 12_853_473_280),
         "opt-30b": (616_655_872, 29_974_540_288), "opt-66b": (1_019_335_680, 65_719_701_504)}


def test_parse_size_and_budgets():
    assert parse_size("70GiB") == 70 * 2**30
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1000") == 1000
    assert parse_max_memory("cuda:0=70GiB, cpu=2GiB") == {"cuda:0": 70 * 2**30, "cpu": 2 * 2**30}
    assert list(parse_max_memory("cuda:1=1GiB,cuda:0=1GiB")) == ["cuda:1", "cuda:0"]  # order = fill order
    for bad in ["70 parsecs", "cuda:0"]:
        with pytest.raises(ValueError, match="70GiB|DEVICE=SIZE"):
            parse_max_memory(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_max_memory("cpu=1GiB,cpu=2GiB")


@pytest.mark.parametrize("size", list(OPT_CONFIGS))
def test_sizes_match_facts_and_meta_model(size):
    cfg = config_for_size(size)
    per_layer, total = FACTS[size]
    assert layer_params(cfg) == per_layer
    assert layer_params(cfg) * cfg.num_layers + head_params(cfg) == total
    with torch.device("meta"):
        model = OPT(cfg)
    assert sum(p.numel() for p in model.parameters()) == total  # the formula agrees with the module


@pytest.mark.parametrize("size", list(OPT_CONFIGS))
def test_auto_map_every_size(size):
    """Two 'GPUs' each sized for ~40% of the model, then CPU: layers whole and contiguous, budgets
    respected including the activation reserve and stream buffers, head group on the first device."""
    cfg = config_for_size(size)
    dtype = torch.float16
    total = (layer_params(cfg) * cfg.num_layers + head_params(cfg)) * 2
    mm = {"cuda:0": int(0.4 * total) + activation_reserve(cfg, dtype, 8192, 2048, head=True),
          "cuda:1": int(0.4 * total) + activation_reserve(cfg, dtype, 8192, 2048, head=False), "cpu": 10 * total}
    dm = auto_device_map(cfg, mm, dtype)
    with torch.device("meta"):
        model = OPT(cfg)
    used: dict[str, int] = {}
    for name, p in model.named_parameters():
        dev = dm.device_for(name)
        key = dev.type if dev.type == "cpu" else f"{dev.type}:{dev.index}"
        used[key] = used.get(key, 0) + p.numel() * 2
        if name.startswith("decoder.layers."):
            i = int(name.split(".")[2])
            assert dev == torch.device(dm.layers[i])  # every tensor of a layer on the layer's device
        else:
            assert dev == torch.device("cuda:0")  # embeddings, positions, final LN, projections
    assert used == dm.bytes_per_device  # the size formula agrees with the real tensors
    order = ["cuda:0", "cuda:1", "cpu"]
    assert [order.index(d) for d in dm.layers] == sorted(order.index(d) for d in dm.layers)  # contiguous
    per_layer = layer_params(cfg) * 2
    buffers = 2 * per_layer if "cpu" in dm.layers else 0
    for i, dev in enumerate(order[:2]):
        reserve = activation_reserve(cfg, dtype, 8192, 2048, head=i == 0)
        assert used.get(dev, 0) + reserve + (buffers if dev == dm.compute else 0) <= mm[dev]
    assert "cpu" in dm.layers and dm.compute == "cuda:1"  # 2 x 40% < 100%: the rest streams to the last GPU
    assert dm.streamed_layers() == [i for i, d in enumerate(dm.layers) if d == "cpu"]


def test_auto_map_opt66b_on_one_h100_and_h200():
    cfg = config_for_size("opt-66b")
    one = auto_device_map(cfg, parse_max_memory("cuda:0=70GiB,cpu=200GiB"), torch.float16)
    gpu_layers = one.layers.count("cuda:0")
    assert 30 <= gpu_layers <= 34  # ~32-34 fp16 layers fit one 80 GB H100 (docs/scale.md)
    assert one.compute == "cuda:0" and len(one.streamed_layers()) == 64 - gpu_layers
    big = auto_device_map(cfg, parse_max_memory("cuda:0=139GiB"), torch.float16)
    assert big.layers == ["cuda:0"] * 64 and big.streamed_layers() == []
    assert abs(big.bytes_per_device["cuda:0"] / GIB - 122.41) < 0.01  # §6.1: 122.41 GiB in fp16
    with pytest.raises(ValueError, match="do not fit"):
        auto_device_map(cfg, parse_max_memory("cuda:0=70GiB"), torch.float16)
    with pytest.raises(ValueError, match="needs --max-memory"):
        build_device_map("auto", cfg, torch.float16, {})
    summary = one.summary()
    assert "cuda:0: layers 0-" in summary and "streamed to cuda:0" in summary


def test_explicit_map_parsing_and_errors(tmp_path):
    cfg = config_for_size("opt-66b")
    dm = build_device_map("0-31:cuda:0,32-63:cuda:1", cfg, torch.float16)
    assert dm.layers == ["cuda:0"] * 32 + ["cuda:1"] * 32 and dm.head == "cuda:0"
    assert dm.device_for("model.decoder.layers.40.fc1.weight") == torch.device("cuda:1")
    assert dm.device_for("decoder.embed_tokens.weight") == torch.device("cuda:0")
    dm2 = build_device_map("embed:cuda:1,0-63:cuda:0", cfg, torch.float16)
    assert dm2.head == "cuda:1"
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"0-9": "cuda:0", "10-63": "cpu"}))
    dm3 = build_device_map(str(path), cfg, torch.float16)
    assert dm3.streamed_layers() == list(range(10, 64)) and dm3.compute == "cuda:0"
    for spec, msg in [("0-31:cuda:0", "no device"), ("0-40:cuda:0,30-63:cuda:1", "placed twice"),
                      ("0-64:cuda:0", "outside"), ("a-b:cuda:0", "FIRST-LAST")]:
        with pytest.raises(ValueError, match=msg):
            build_device_map(spec, cfg, torch.float16)
    with pytest.raises(ValueError, match="over its --max-memory"):
        build_device_map("0-63:cuda:0", cfg, torch.float16, parse_max_memory("cuda:0=70GiB"))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        build_device_map(str(tmp_path / "nope.json"), cfg, torch.float16)


def test_explicit_map_over_cpu_names_equals_single_device(tmp_path, tiny_config):
    """Layers split over 'cpu:0', 'cpu:1' and the head on 'cpu:2': identical logits (same CPU)."""
    tiny_config.num_layers = 3
    model = random_model(tiny_config)
    save_checkpoint(model, tmp_path)
    dm = build_device_map("0-0:cpu:0,1-2:cpu:1,embed:cpu:2", tiny_config, torch.float32)
    assert dm.layers == ["cpu:0", "cpu:1", "cpu:1"] and dm.head == "cpu:2"
    assert dm.streamed_layers() == []  # no GPU compute device: nothing is streamed
    placed = load_model(tmp_path, dtype=torch.float32, device_for=dm.device_for)
    ids = torch.randint(0, tiny_config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert torch.equal(placed(ids, mask).logits, model(ids, mask).logits)


def test_random_weights_with_map_records_info():
    from opt66b.runs.loading import LoadSettings

    logs = []
    model, tok, info = LoadSettings(random_weights="opt-125m", device_map="0-5:cpu:0,6-11:cpu:1", dtype="float32",
                                    device="cpu").load(log=logs.append)
    assert model.config.num_layers == 12 and model.config.hidden_size == 768
    assert info["model"] == "random:opt-125m" and info["device_map"]["layers"] == {"0-5": "cpu:0", "6-11": "cpu:1"}
    assert info["device_map"]["gib_per_device"]["cpu:1"] == round(6 * 7_087_872 * 4 / GIB, 3)
    assert any("cpu:1: layers 6-11 (6)" in line for line in logs)  # the printed summary
    ln = model.decoder.layers[3].final_layer_norm.weight
    assert torch.equal(ln, torch.ones_like(ln))
    w = model.decoder.layers[3].fc1.weight
    assert abs(float(w.std()) - 0.02) < 0.001  # N(0, 0.02) over 2.4M samples: std error ~1e-5
    again, _, _ = LoadSettings(random_weights="opt-125m", dtype="float32", device="cpu").load(log=logs.append)
    assert torch.equal(again.decoder.layers[3].fc1.weight, w)  # same seed, no map -> same values
    ids = torch.tensor([tok.encode("Hello world")])
    assert model(ids, logits="last").logits.shape == (1, 1, 50272)


def test_reserve_keeps_room_for_activations_and_streams_more_layers():
    """--reserve DEV=SIZE replaces the auto map's default activation reserve on that GPU: the weights
    placed there plus the two stream buffers plus the reserve stay within the budget, at the cost of
    more streamed layers (OPT-66B on one 80 GB GPU)."""
    cfg = config_for_size("opt-66b")
    budgets = parse_max_memory("cuda:0=80GiB,cpu=400GiB")
    plain = auto_device_map(cfg, budgets, torch.float16)
    roomy = auto_device_map(cfg, budgets, torch.float16, reserve={"cuda:0": 14 * GIB})
    assert len(roomy.streamed_layers()) > len(plain.streamed_layers())
    buffers = 2 * max(layer_params(cfg, i) for i in range(cfg.num_layers)) * 2
    assert roomy.bytes_per_device["cuda:0"] + buffers + 14 * GIB <= 80 * GIB
    via_cli = build_device_map("auto", cfg, torch.float16, budgets, reserve=parse_max_memory("cuda:0=14GiB", "--reserve"))
    assert via_cli.layers == roomy.layers
