"""Loading a model for a run: the model options every sub-command takes, and what a result records of it.

`load(path, dtype=..., device=..., device_map=..., max_memory=..., offload=..., random_weights=...)`
returns the model, its tokenizer and a JSON-able description (the device map, memory per device and
the content identity every result's fingerprint uses) recorded in every output file; with no path the
embedded tiny OPT is used. `LoadSettings` holds the same settings as typed, frozen options
(opt66b.runs.options.add_model_args declares them): `LoadSettings.from_args(args).load()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from opt66b.config import OPTConfig, config_for_size, config_from_hf
from opt66b.runs.diagnose import check_weights_finite
from opt66b.hardware import check_plan_hardware, detect_gpu
from opt66b.host_memory import bound, needs_bound
from opt66b.runs.distributed import local_cuda_offset, local_rank, local_world, rank_world
from opt66b.model import OPT
from opt66b.offload import attach_pinned_streamer, load_streamed
from opt66b.placement import (GIB, Budgets, DeviceMap, build_device_map, device_name, dtype_bytes, head_params, layer_bytes,
                        per_process, shift_cuda)
from opt66b.runs.identity import checkpoint_identity, tokenizer_identity
from opt66b.tokenizer import OPTTokenizer, load_tokenizer
from opt66b.runs.settings import Options, option, step_class
from opt66b.weights import build_random_model, load_model

TINY_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny-opt"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def apply_threads(threads: int | None, log=None) -> int:
    """Set torch's intra-op thread count (None keeps torch's default); says which on stderr."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        log(f"threads: {torch.get_num_threads()} (--threads)")
    else:
        busy = ""
        if hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1):
            busy = f"; the machine is busy (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): try --threads 1"
        log(f"threads: {torch.get_num_threads()} (torch's default{busy or '; set --threads N on a shared machine'})")
    return torch.get_num_threads()


def resolve_device(name: str | None) -> torch.device:
    """--device value; by default the GPU of this process (LOCAL_RANK under torchrun) or the CPU."""
    if name is None:
        return torch.device(f"cuda:{local_rank() % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    return device_name(name, "--device")  # whether it exists here: check_device_available (not for --plan)


def check_device_available(dev: torch.device, where: str) -> torch.device:
    """ValueError naming the option when `dev` does not exist on this machine."""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{where} {dev}: CUDA is not available here (no GPU, or a CPU-only torch); "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{where} {dev}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{where} {dev}: MPS is not available here; use --device cpu")
    return dev


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load(model: str | Path | None = None, log: Callable[[str], None] | None = None,
         **options: Any) -> tuple[OPT, OPTTokenizer, dict[str, Any]]:
    """Load an OPT checkpoint (default: the embedded tiny OPT) and its tokenizer.

    model: HF checkpoint directory with safetensors. options, LoadSettings' fields: tokenizer (directory
    with vocab.json + merges.txt; default: the model's), dtype ("float32"/"float16"/"bfloat16" or a torch
    dtype; default float32 on CPU, float16 on GPU), device (compute device; default: this process's GPU,
    else cpu), device_map / max_memory / reserve / offload (layer placement and streaming: placement.py,
    offload.py; the values of the --device-map / --max-memory / --reserve / --offload options),
    random_weights (an official size name, e.g. "opt-125m": random weights instead of a checkpoint, the
    tokenizer from the embedded tiny OPT) seeded by random_weights_seed.

    Returns (model, tokenizer, info): info is JSON-able (path, dtype, device map, memory, offload)
    and holds "identity", the content identity every result's fingerprint uses (opt66b.runs.store).
    Every load is announced through `log` (default: stderr) on a line starting with "loading".
    """
    return load_from(LoadSettings(model=model, **options), log or (lambda msg: print(msg, file=sys.stderr, flush=True)))


def load_from(s: "LoadSettings", log: Callable[[str], None]) -> tuple[OPT, OPTTokenizer, dict[str, Any]]:
    """Every load goes here (`load`, `LoadSettings.load`): check the devices and budgets, build the placed model, describe it."""
    device = check_device_available(resolve_device(None if s.device is None else str(s.device)), "--device")
    dtype = s.dtype if isinstance(s.dtype, torch.dtype) else resolve_dtype(s.dtype, device)
    for dev, size in s.max_memory.items():  # a GPU budget above what the card can give fails later, out of memory
        kind = detect_gpu(dev) if dev.startswith("cuda") else None
        if kind is not None:
            check_plan_hardware(kind, {dev: size}, None)
    if needs_bound(s.max_memory, s.offload):  # a host budget: memory follows the live tensors (host_memory.py)
        bound()
    model_dir = None if s.random_weights else (Path(s.model).expanduser() if s.model else TINY_MODEL_DIR)
    if model_dir is not None and not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: model directory not found")
    net, cfg, dm = _build(s, model_dir, dtype, device, log)
    tok_dir = Path(s.tokenizer).expanduser() if s.tokenizer else (model_dir or TINY_MODEL_DIR)
    return net, load_tokenizer(tok_dir), _describe(s, model_dir, tok_dir, cfg, dtype, device, dm, net)


def _build(s: "LoadSettings", model_dir: Path | None, dtype: torch.dtype, device: torch.device,
           log: Callable[[str], None]) -> tuple[OPT, OPTConfig, DeviceMap | None]:
    """(the model, its config, its device map or None): streamed from the files (--offload mmap), or placed."""
    if s.offload == "mmap":
        if s.random_weights:
            raise ValueError("--offload mmap streams from safetensors files; it needs --model, not --random-weights")
        if s.device_map:
            raise ValueError("--offload mmap streams every layer; drop --device-map")
        cfg = config_from_hf(model_dir)
        return _load_from_files(model_dir, cfg, dtype, device, s.max_memory, log), cfg, None
    cfg = config_for_size(s.random_weights) if s.random_weights else config_from_hf(model_dir)
    dm = placement(cfg, dtype, device, s.device_map, s.max_memory, s.reserve)
    if dm is not None:
        for dev in dict.fromkeys([dm.head, *dm.layers]):
            check_device_available(torch.device(dev), "--device-map")
        log(dm.summary())
    return _load_placed(model_dir, s.random_weights, s.random_weights_seed, cfg, dtype, device, dm, s.offload, log), cfg, dm


def _describe(s: "LoadSettings", model_dir: Path | None, tok_dir: Path, cfg: OPTConfig, dtype: torch.dtype,
              device: torch.device, dm: DeviceMap | None, net: OPT) -> dict[str, Any]:
    """The loaded model as every result records it, its content identity included."""
    size = s.random_weights
    identity = {"random_weights": size, "seed": s.random_weights_seed} if size else checkpoint_identity(model_dir)
    identity["tokenizer"] = tokenizer_identity(tok_dir)
    info = {
        "model": f"random:{size}" if size else str(model_dir),
        "config_sha256": None if size else identity["config_sha256"],
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "layers": cfg.num_layers,
        "heads": cfg.num_heads,
        "device_map": dm.to_json() if dm is not None else None,
        "max_memory_gib": {k: round(v / GIB, 3) for k, v in s.max_memory.items()},
        "offload": "mmap" if s.offload == "mmap" else ("pinned" if net.streamer is not None else "none"),
        "identity": identity,
    }
    if size:
        info["random_weights_seed"] = s.random_weights_seed
    return info


def placement(cfg: OPTConfig, dtype: torch.dtype, device: torch.device, device_map: str | None,
              max_memory: dict[str, int], reserve: dict[str, int] | None,
              processes: int | None = None) -> DeviceMap | None:
    """The device map `load` builds (None: everything on `device`), under torchrun shifted to this process's own
    GPUs and placed within its share of the node's host memory (placement.per_process); `--plan` prices the
    same map (study/machine.model_shape). processes: on this node (default: torchrun's LOCAL_WORLD_SIZE)."""
    compute = str(device) if device.type != "cpu" else None
    max_memory = per_process(Budgets.parse(max_memory), local_world() if processes is None else processes)
    dm = build_device_map(device_map, cfg, dtype, max_memory, compute=compute, reserve=reserve)
    if dm is not None and rank_world()[1] > 1 and torch.cuda.is_available():
        gpus = len({d for d in [dm.head, *dm.layers] if torch.device(d).type == "cuda"})
        dm = shift_cuda(dm, local_cuda_offset(gpus))  # this process's own GPUs
    return dm


def _load_from_files(model_dir: Path, cfg: OPTConfig, dtype: torch.dtype, device: torch.device,
                     max_memory: dict[str, int], log: Callable[[str], None]) -> OPT:
    """--offload mmap: every layer streamed from the memory-mapped shards through two buffers."""
    check_stream_budget(cfg, dtype, max_memory.get(str(device)) or max_memory.get(device.type), str(device))
    log(f"loading {model_dir} as {str(dtype).removeprefix('torch.')}: streaming from memory-mapped shards on {device}")
    net = load_streamed(model_dir, dtype=dtype, device=device)
    check_weights_finite(net, model_dir, dtype)  # the resident head group; streamed layers: on error
    return net


def _load_placed(model_dir: Path | None, size: str | None, seed: int, cfg: OPTConfig, dtype: torch.dtype,
                 device: torch.device, dm: DeviceMap | None, offload: str, log: Callable[[str], None]) -> OPT:
    """Weights read (or built at random) straight onto the devices of `dm`; host layers of a GPU map
    are then streamed from pinned memory unless --offload none."""
    device_for = dm.device_for if dm is not None else (lambda name: device)
    dtype_name = str(dtype).removeprefix("torch.")
    if size:
        log(f"loading random {size} weights (seed {seed}) as {dtype_name}")
        net = build_random_model(cfg, dtype, device_for, seed)
    else:
        log(f"loading {model_dir} as {dtype_name} on {dm.head if dm else device}")
        net = load_model(model_dir, dtype=dtype, device=device, device_for=device_for, log=log)
    # A NaN/inf weight is refused here, naming its file and tensor, before any step computes or writes.
    check_weights_finite(net, model_dir, dtype)
    streamed = dm.streamed_layers() if dm is not None and offload != "none" else []
    if offload == "pinned" and not streamed:
        raise ValueError("--offload pinned needs a --device-map that puts layers on cpu and a GPU compute device")
    if streamed:
        log(f"streaming {len(streamed)} host layers to {dm.compute} (pinned, prefetched)")
        attach_pinned_streamer(net, streamed, dm.compute)
    return net


@dataclass(frozen=True, kw_only=True)
class LoadSettings(Options):
    """The model options every model step takes (opt66b.runs.options.add_model_args), parsed once: what
    `load` reads, what commands.txt renders before each step's own options, what `--plan` places."""

    model: Path | None = option(None)
    tokenizer: Path | None = option(None)
    dtype: str | None = option(None)
    device: str | None = option(None)
    device_map: str | None = option(None)
    max_memory: Budgets = option(Budgets(), parse=lambda t: Budgets.parse(t, "--max-memory"))
    reserve: Budgets | None = option(None, parse=lambda t: Budgets.parse(t, "--reserve") or None)
    offload: str = option("auto")
    random_weights: str | None = option(None)
    random_weights_seed: int = option(0)

    def options(self) -> list[str]:
        """The model flags, without the ones left at their defaults (an empty budget, auto offload, seed 0)."""
        defaults = {"max_memory": "", "offload": "auto", "random_weights_seed": "0"}
        out, flags = [], super().options()
        i = 0
        while i < len(flags):
            name = flags[i][2:].replace("-", "_")
            if defaults.get(name) != flags[i + 1]:
                out += flags[i:i + 2]
            i += 2
        return out

    def load(self, threads: int | None = None, log: Callable[[str], None] | None = None
             ) -> tuple[OPT, OPTTokenizer, dict[str, Any]]:
        """The model these options describe (the module function `load`), after setting the CPU threads
        (--threads; None keeps torch's choice, said on stderr as the run records it)."""
        log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        apply_threads(threads, log)
        return load_from(self, log)


def check_stream_budget(cfg: OPTConfig, dtype: torch.dtype, budget: int | None, device: str) -> int:
    """Bytes the mmap streaming mode keeps resident (head group + two layer buffers); raises if over
    `budget` (activations come on top: leave room for them)."""
    need = head_params(cfg) * dtype_bytes(dtype) + 2 * max(layer_bytes(cfg, dtype))
    if budget is not None and need > budget:
        raise ValueError(f"--max-memory {device}={budget / GIB:.2f} GiB is below what streaming needs: "
                         f"{need / GIB:.2f} GiB (embeddings/head + two layer buffers) plus activations")
    return need


def run_step(args: Any) -> int:
    """A sub-command that is a step (its parser names the settings class, `args.step`): its parsed options ->
    settings -> check -> the model loaded (for a model step) -> execute."""
    settings = step_class(args.step).from_args(args)
    settings.check()  # before the model loads
    if not settings.USES_MODEL:
        settings.execute()
        return 0
    settings.execute(LoadSettings.from_args(args).load(threads=getattr(args, "threads", None)))
    return 0
