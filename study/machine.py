"""The machine a plan is for: the model's shape and placement as the loader would make them (no weights),
and the throughput its time estimate divides by.

    shape, tokenizer, info = model_shape(LoadSettings(random_weights="opt-66b", device="cuda:0", ...))
    tflops, source = calibrate_tflops("cuda:0", "float16", shape.cfg)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .plan import Shape

HOST_TO_DEVICE_GBS = 25  # a PCIe 4.0 x16 link's practical rate, for the streamed layers' transfer time


def model_shape(load: Any, processes: int | None = None) -> tuple[Shape, Any, dict[str, Any]]:
    """(Shape, tokenizer, description) as LoadSettings `load` would place the model, from config.json or
    an official size name only: the same device map, streaming and dtype rules, no tensors."""
    from opt66b.config import config_for_size, config_from_hf
    from opt66b.placement import dtype_bytes, head_params, layer_bytes, layer_params
    from opt66b.runs.loading import TINY_MODEL_DIR, placement, resolve_device, resolve_dtype
    from opt66b.tokenizer import load_tokenizer

    device = resolve_device(load.device)
    dtype = resolve_dtype(load.dtype, device)
    size = load.random_weights
    model_dir = None if size else (Path(load.model) if load.model else TINY_MODEL_DIR)
    cfg = config_for_size(size) if size else config_from_hf(model_dir)
    per = dtype_bytes(dtype)
    per_layer, head_bytes = layer_bytes(cfg, dtype), head_params(cfg) * per
    dm, streamed = None, {}
    if load.offload == "mmap":  # every layer streamed from the files through two buffers
        head = str(device)
        weights, layers_on = {head: head_bytes + 2 * max(per_layer)}, {head: cfg.num_layers}
        streamed = dict(enumerate(per_layer))
    else:
        dm = placement(cfg, dtype, device, load.device_map, load.max_memory, load.reserve, processes)  # as load() does
        if dm is None:
            head = str(device)
            weights, layers_on = {head: head_bytes + sum(per_layer)}, {head: cfg.num_layers}
        else:
            head, weights, layers_on = dm.head, dict(dm.bytes_per_device), {}
            streamed = {i: per_layer[i] for i in dm.streamed_layers()} if load.offload != "none" else {}
            for i, dev in enumerate(dm.layers):
                runs_on = dm.compute if i in streamed else dev
                layers_on[runs_on] = layers_on.get(runs_on, 0) + 1
            if streamed:  # two layer buffers on the compute device (double buffering)
                weights[dm.compute] = weights.get(dm.compute, 0) + 2 * max(per_layer)
    tokenizer = load_tokenizer(Path(load.tokenizer) if load.tokenizer else (model_dir or TINY_MODEL_DIR))
    params = head_params(cfg) + sum(layer_params(cfg, i) for i in range(cfg.num_layers))
    info = {"model": f"random:{size}" if size else str(model_dir), "layers": cfg.num_layers, "heads": cfg.num_heads,
            "hidden": cfg.hidden_size, "ffn": cfg.ffn_dim, "params": params, "dtype": str(dtype).removeprefix("torch."),
            "device": str(device), "compute": dm.compute if dm else str(device),
            "device_map": dm.to_json() if dm else None, "budget_gib": dm.to_json()["budget_gib"] if dm else {}}
    from opt66b.runs.distributed import local_world

    processes = processes if processes is not None else local_world()  # under torchrun: the processes it started
    shape = Shape(cfg, per, layers_on, weights, head, streamed, dm.compute if dm else head, processes)
    return shape, tokenizer, info


def calibrate_tflops(device: str, dtype_name: str, cfg: Any, seconds: float = 0.3) -> tuple[float | None, str]:
    """Sustained TFLOP/s of a layer-shaped matmul (tokens x D) @ (D x F) on `device`, timed for about
    `seconds` after a warm-up; shapes are capped so the CPU check stays short. (None, why) when the
    device is not on this machine."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return None, f"{device} is not on this machine: no time estimate (give --throughput TFLOPS)"
    dtype = getattr(torch, dtype_name)
    on_gpu = dev.type == "cuda"
    d = min(cfg.hidden_size, 8192 if on_gpu else 1024)
    f = min(cfg.ffn_dim, 4 * d)
    m = 4096 if on_gpu else 512
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(m, d, device=dev, generator=gen).to(dtype)  # (tokens, D)
    w = torch.randn(d, f, device=dev, generator=gen).to(dtype)  # (D, F)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    a @ w  # warm-up (kernel selection, caches)
    sync()
    reps, start = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - start < seconds:
        a @ w
        reps += 1
        if on_gpu and reps % 8:
            continue
        sync()
    sync()
    elapsed = time.perf_counter() - start
    return 2 * m * d * f * reps / elapsed / 1e12, f"measured: {reps} matmuls ({m} x {d}) @ ({d} x {f}) {dtype_name} on {device}"
