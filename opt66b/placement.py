"""Layer placement: `--device-map` (auto | layer ranges | JSON file) and `--max-memory` budgets.

Mirrors the idea of accelerate's `infer_auto_device_map` (docs/scale.md) with two deliberate differences:
sizes come from the OPTConfig alone (no checkpoint, no meta model), and the tied output head never leaves the embedding's device (accelerate's auto
map could split OPT's lm_head from embed_tokens, transformers issue 31037).

Rules of the auto map (documented in docs/scale.md too):
  * the "head group" - token + position embeddings, project_in/out (350m), final layer norm and the
    output head (tied to the embedding, or an untied lm_head) - goes whole on the FIRST listed
    device; the final hidden state (B, T, W) travels back to it once per forward, which is cheap;
  * decoder layers are never split; devices are filled in the order they are listed;
  * every accelerator keeps `reserve` bytes free for activations: `reserve_tokens` tokens of one
    layer's working set, tokens x (6 D + F) x dtype bytes (q, k, v, attention output, residual,
    LN output, FFN intermediate), plus on the head device `logit_rows` x V fp32 logits;
  * if any layer lands on "cpu" while a GPU is listed, those layers are streamed (offload.py) to the
    LAST listed GPU (they follow its own layers), which additionally keeps room for two layer buffers
    (double buffering); its last resident layers move to the host if needed to make that room.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import OPTConfig

GIB = 1 << 30
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """'70GiB', '1.5GB', '512MiB', '1000' (bytes) -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"memory size {text!r} not understood; write e.g. 70GiB, 1.5GB, 512MiB or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


DEVICE_TYPES = ("cpu", "cuda", "mps")  # what this toolkit runs on


def device_name(name: str, where: str) -> torch.device:
    """A device written by the user ("cpu", "cuda", "cuda:1") -> torch.device, or a ValueError
    naming the option. Whether the device exists here is checked when a model is loaded."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise ValueError(f"{where}: device {name!r} is not one of cpu, cuda, cuda:N, mps")
    return dev


class Budgets(Mapping):
    """--max-memory or --reserve, parsed once: device -> bytes, in the order given (the auto map fills the
    devices in that order). Immutable; str() gives back the text it was parsed from, so a settings object
    holding it renders the option unchanged (a commands.txt line parses back into equal settings)."""

    def __init__(self, entries: dict[str, int] | None = None, text: str = ""):
        self._entries = dict(entries or {})
        self._text = text or ",".join(f"{d}={b}" for d, b in self._entries.items())

    @classmethod
    def parse(cls, text: "str | Budgets | None", option: str = "--max-memory") -> "Budgets":
        """'cuda:0=70GiB,cuda:1=70GiB,cpu=200GiB' -> Budgets; a ValueError naming `option` and the entry."""
        if isinstance(text, Budgets):
            return text
        if not text:
            return cls()
        out: dict[str, int] = {}
        for part in text.split(","):
            dev, sep, size = part.strip().rpartition("=")
            if not sep or not dev:
                raise ValueError(f"{option} entry {part!r} must look like DEVICE=SIZE, e.g. cuda:0=70GiB")
            device_name(dev, option)
            if dev in out:
                raise ValueError(f"{option} names {dev} twice")
            out[dev] = parse_size(size)
        return cls(out, text)

    def __getitem__(self, device: str) -> int:
        return self._entries[device]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __hash__(self) -> int:
        return hash(tuple(self._entries.items()))

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Budgets({self._text!r})"

    def accelerators(self) -> dict[str, int]:
        """The entries of devices other than the host."""
        return {d: b for d, b in self._entries.items() if not d.startswith("cpu")}


def per_process(budgets: Budgets, processes: int) -> Budgets:
    """The budgets one of `processes` processes on a node places by: --max-memory's cpu entry is the node's
    host memory, shared equally by its processes (each holds its own copy of what the placement puts on the
    host); a GPU entry is the GPU's, each process using its own GPUs (opt66b.runs.loading.placement)."""
    if processes <= 1 or "cpu" not in budgets:
        return budgets
    entries = {d: b // processes if d == "cpu" else b for d, b in budgets.items()}
    return Budgets(entries, ",".join(f"{d}={b}" for d, b in entries.items()))


def parse_max_memory(text: "str | Budgets | None", option: str = "--max-memory") -> Budgets:
    """'cuda:0=70GiB,cuda:1=70GiB,cpu=200GiB' -> ordered Budgets {device: bytes} (also --reserve's format)."""
    return Budgets.parse(text, option)


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def attention_head_params(cfg: OPTConfig) -> int:
    """Parameters one attention head owns: its Dh rows of q, k, v (+ their biases) and its Dh columns
    of out_proj, 4 D Dh + 3 Dh; out_proj's bias belongs to the layer (pruning a head keeps it)."""
    d, dh = cfg.hidden_size, cfg.head_dim
    return 4 * d * dh + (3 * dh if cfg.enable_bias else 0)


def ffn_params(cfg: OPTConfig) -> int:
    """Parameters of one FFN block: fc1 and fc2, 2 D F (+ F + D bias); its LayerNorm is not counted."""
    d, f = cfg.hidden_size, cfg.ffn_dim
    return 2 * d * f + ((f + d) if cfg.enable_bias else 0)


def layer_params(cfg: OPTConfig, layer: int | None = None) -> int:
    """Parameters of decoder layer `layer` (None: an unpruned layer): its heads, out_proj's bias (kept
    even with no heads), the FFN and 2 LayerNorms. A pruned checkpoint's layer has only its kept heads;
    without its FFN a pre-LN layer has no final_layer_norm either (a post-LN one keeps it)."""
    d = cfg.hidden_size
    heads = cfg.num_heads if layer is None else len(cfg.kept_heads(layer))
    ffn = layer is None or cfg.has_ffn(layer)
    n = heads * attention_head_params(cfg) + (d if cfg.enable_bias else 0) + (ffn_params(cfg) if ffn else 0)
    if cfg.layer_norm_elementwise_affine:
        n += 2 * d * (2 if ffn or not cfg.do_layer_norm_before else 1)
    return n


def layer_bytes(cfg: OPTConfig, dtype: torch.dtype) -> list[int]:
    """Bytes of each decoder layer at `dtype` (they differ in a pruned checkpoint)."""
    return [layer_params(cfg, i) * dtype_bytes(dtype) for i in range(cfg.num_layers)]


def head_params(cfg: OPTConfig) -> int:
    """Parameters outside the layers: embeddings, positions, projections, final LN, untied lm_head."""
    d, w = cfg.hidden_size, cfg.word_embed_proj_dim
    n = cfg.vocab_size * w + (cfg.max_positions + 2) * d
    if cfg.has_projection:
        n += 2 * d * w
    if cfg.has_final_layer_norm and cfg.layer_norm_elementwise_affine:
        n += 2 * d
    if not cfg.tie_word_embeddings:
        n += cfg.vocab_size * w
    return n


def activation_reserve(cfg: OPTConfig, dtype: torch.dtype, reserve_tokens: int, logit_rows: int,
                       head: bool) -> int:
    """Bytes kept free on an accelerator for activations (rule in the module docstring)."""
    n = reserve_tokens * (6 * cfg.hidden_size + cfg.ffn_dim) * dtype_bytes(dtype)
    return n + (logit_rows * cfg.vocab_size * 4 if head else 0)


@dataclass
class DeviceMap:
    """Where every parameter lives. `layers[i]` is a device name; "cpu" layers are streamed to
    `compute` when that is a GPU (see offload.py). Names are kept as given (e.g. "cpu:1" in tests),
    `torch.device(name)` is what tensors actually use."""
    head: str
    layers: list[str]
    compute: str  # where streamed layers run; equals head for a single device
    bytes_per_device: dict[str, int] = field(default_factory=dict)
    budgets: dict[str, int] = field(default_factory=dict)

    def device_for(self, param_name: str) -> torch.device:
        """Parameter name (HF naming, `decoder.layers.{i}.…`) -> torch.device; for load_model."""
        m = re.match(r"(?:model\.)?decoder\.layers\.(\d+)\.", param_name)
        if m:
            return torch.device(self.layers[int(m.group(1))])
        return torch.device(self.head)

    def streamed_layers(self) -> list[int]:
        """Layers kept on the host and brought to `compute` one at a time."""
        if torch.device(self.compute).type == "cpu":
            return []
        return [i for i, d in enumerate(self.layers) if torch.device(d).type == "cpu"]

    def to_json(self) -> dict[str, Any]:
        return {"head": self.head, "compute": self.compute, "layers": compress_ranges(self.layers),
                "gib_per_device": {k: round(v / GIB, 3) for k, v in self.bytes_per_device.items()},
                "budget_gib": {k: round(v / GIB, 3) for k, v in self.budgets.items()},
                "streamed_layers": len(self.streamed_layers())}

    def summary(self) -> str:
        """Human-readable: layers and GiB per device."""
        lines = [f"device map (head group: embeddings, final LN, tied output head on {self.head}):"]
        by_dev: dict[str, list[int]] = {}
        for i, d in enumerate(self.layers):
            by_dev.setdefault(d, []).append(i)
        for dev in dict.fromkeys([self.head, *self.layers]):
            idx = by_dev.get(dev, [])
            rng = ",".join(r for r, d in compress_ranges(self.layers).items() if d == dev) or "-"
            used = self.bytes_per_device.get(dev, 0) / GIB
            budget = self.budgets.get(dev)
            extra = f" of {budget / GIB:.2f} GiB" if budget else ""
            stream = " (streamed to %s)" % self.compute if dev != self.compute and idx and \
                torch.device(dev).type == "cpu" and torch.device(self.compute).type != "cpu" else ""
            lines.append(f"  {dev}: layers {rng} ({len(idx)}), {used:.2f} GiB weights{extra}{stream}")
        return "\n".join(lines)


def compress_ranges(layers: list[str]) -> dict[str, str]:
    """['a','a','b'] -> {'0-1': 'a', '2-2': 'b'} (the explicit --device-map form)."""
    out: dict[str, str] = {}
    start = 0
    for i in range(1, len(layers) + 1):
        if i == len(layers) or layers[i] != layers[start]:
            out[f"{start}-{i - 1}"] = layers[start]
            start = i
    return out


def _fill_sizes(dm: DeviceMap, cfg: OPTConfig, dtype: torch.dtype) -> DeviceMap:
    sizes = {dm.head: head_params(cfg) * dtype_bytes(dtype)}
    for d, nbytes in zip(dm.layers, layer_bytes(cfg, dtype)):
        sizes[d] = sizes.get(d, 0) + nbytes
    dm.bytes_per_device = sizes
    return dm


def auto_device_map(cfg: OPTConfig, max_memory: dict[str, int], dtype: torch.dtype,
                    reserve_tokens: int = 8192, logit_rows: int = 2048,
                    reserve: dict[str, int] | None = None) -> DeviceMap:
    """Fill the devices of `max_memory` in order (rules in the module docstring). reserve: bytes to keep
    free for activations on the named accelerators instead of the default reserve (--reserve)."""
    if not max_memory:
        raise ValueError("--device-map auto needs --max-memory, e.g. cuda:0=70GiB,cpu=200GiB")
    devices = list(max_memory)
    sizes = layer_bytes(cfg, dtype)
    buffer = max(sizes)  # a stream buffer must hold the largest layer
    head_bytes = head_params(cfg) * dtype_bytes(dtype)
    gpus = [d for d in devices if torch.device(d).type != "cpu"]
    compute = gpus[-1] if gpus else devices[0]  # streamed layers follow the last GPU's own layers
    free = {}
    for i, d in enumerate(devices):
        is_acc = torch.device(d).type != "cpu"
        default = activation_reserve(cfg, dtype, reserve_tokens, logit_rows, head=i == 0)
        free[d] = max_memory[d] - ((reserve or {}).get(d, default) if is_acc else 0)
    head = devices[0]
    free[head] -= head_bytes
    if free[head] < 0:
        raise ValueError(f"the embeddings/output head ({head_bytes / GIB:.2f} GiB) plus the activation reserve do "
                         f"not fit {head}'s budget of {max_memory[head] / GIB:.2f} GiB; raise it")
    layers: list[str] = []
    di = 0
    for i in range(cfg.num_layers):
        per_layer = sizes[i]
        while di < len(devices) and free[devices[di]] < per_layer:
            di += 1
        if di == len(devices):
            need = head_bytes + sum(sizes)
            raise ValueError(f"layers {i}..{cfg.num_layers - 1} do not fit: the model needs {need / GIB:.2f} GiB "
                             f"of weights ({per_layer / GIB:.2f} GiB for layer {i}) but --max-memory gives "
                             f"{sum(max_memory.values()) / GIB:.2f} GiB; add devices, raise budgets or add cpu=...")
        dev = devices[di]
        if torch.device(dev).type == "cpu" and gpus and not any(torch.device(x).type == "cpu" for x in layers):
            # first streamed layer: the compute GPU must hold two layer buffers (double buffering)
            free[compute] -= 2 * buffer
            if free[compute] < 0:
                # evict GPU layers (from the end of the compute device's run) until the buffers fit
                while free[compute] < 0:
                    on_compute = [k for k, d in enumerate(layers) if d == compute]
                    if not on_compute:
                        raise ValueError(f"{compute} cannot hold two stream buffers of {buffer / GIB:.2f} GiB "
                                         "next to its activation reserve; raise its --max-memory budget")
                    j = on_compute[-1]
                    layers[j] = dev
                    free[compute] += sizes[j]
                    free[dev] -= sizes[j]
                if free[dev] < per_layer:
                    raise ValueError(f"no room on {dev} for streamed layers; raise its --max-memory budget")
                layers.sort(key=lambda d: devices.index(d))  # keep each device's layers contiguous
        layers.append(dev)
        free[dev] -= per_layer
    dm = DeviceMap(head=head, layers=layers, compute=compute, budgets=dict(max_memory))
    return _fill_sizes(dm, cfg, dtype)


def parse_layer_ranges(spec: str | dict, num_layers: int, where: str = "--device-map") -> tuple[list[str], str | None]:
    """'0-31:cuda:0,32-63:cuda:1' (or {"0-31": "cuda:0", ...}; an optional "embed" entry names the
    head device) -> per-layer device list and the head device (or None). Every layer exactly once."""
    items = list(spec.items()) if isinstance(spec, dict) else \
        [tuple(p.strip().split(":", 1)) for p in spec.split(",") if p.strip()]
    layers: list[str | None] = [None] * num_layers
    head = None
    for item in items:
        if len(item) != 2:
            raise ValueError(f"{where}: entry {':'.join(item)!r} must look like FIRST-LAST:DEVICE, e.g. 0-31:cuda:0")
        rng, dev = str(item[0]).strip(), str(item[1]).strip()
        device_name(dev, where)
        if rng in ("embed", "head"):
            head = dev
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", rng)
        if not m:
            raise ValueError(f"{where}: layer range {rng!r} must be N or FIRST-LAST")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= num_layers:
            raise ValueError(f"{where}: layer range {rng} outside 0-{num_layers - 1}")
        for i in range(lo, hi + 1):
            if layers[i] is not None:
                raise ValueError(f"{where}: layer {i} is placed twice ({layers[i]} and {dev})")
            layers[i] = dev
    missing = [i for i, d in enumerate(layers) if d is None]
    if missing:
        raise ValueError(f"{where}: layers {missing[:8]}{' ...' if len(missing) > 8 else ''} have no device; "
                         f"every layer 0-{num_layers - 1} must be placed")
    return layers, head  # type: ignore[return-value]


def build_device_map(spec: str | None, cfg: OPTConfig, dtype: torch.dtype, max_memory: dict[str, int] | None = None,
                     compute: str | None = None, reserve: dict[str, int] | None = None) -> DeviceMap | None:
    """--device-map value -> DeviceMap (None when no map was asked for: single device).

    `compute` is where streamed ("cpu") layers run; default: the last non-cpu device in the map.
    """
    if not spec:
        return None
    max_memory = max_memory or {}
    if spec == "auto":
        return auto_device_map(cfg, max_memory, dtype, reserve=reserve)
    where = "--device-map"
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: --device-map file not found")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(raw, dict):
            raise ValueError(f'{path}: expected an object like {{"0-31": "cuda:0", "32-63": "cuda:1"}}')
        spec_obj: str | dict = raw.get("layers", raw) if isinstance(raw.get("layers"), dict) else raw
        if "head" in raw and spec_obj is not raw:
            spec_obj = {**spec_obj, "head": raw["head"]}
        where = str(path)
    else:
        spec_obj = spec
    layers, head = parse_layer_ranges(spec_obj, cfg.num_layers, where)
    head = head or layers[0]
    accs = [d for d in dict.fromkeys([head, *layers]) if torch.device(d).type != "cpu"]
    dm = DeviceMap(head=head, layers=layers, compute=compute or (accs[-1] if accs else head), budgets=dict(max_memory))
    _fill_sizes(dm, cfg, dtype)
    for dev, used in dm.bytes_per_device.items():
        if dev in max_memory and used > max_memory[dev]:
            raise ValueError(f"{where}: {dev} gets {used / GIB:.2f} GiB of weights, over its --max-memory "
                             f"budget of {max_memory[dev] / GIB:.2f} GiB")
    return dm


def shift_cuda(dm: DeviceMap, offset: int) -> DeviceMap:
    """The same map with every cuda:k renamed cuda:(k + offset): one process's own GPUs under torchrun."""
    def move(d: str) -> str:
        dev = torch.device(d)
        return f"cuda:{(dev.index or 0) + offset}" if dev.type == "cuda" and offset else d
    return DeviceMap(head=move(dm.head), layers=[move(d) for d in dm.layers], compute=move(dm.compute),
                     bytes_per_device={move(k): v for k, v in dm.bytes_per_device.items()},
                     budgets={move(k): v for k, v in dm.budgets.items()})
