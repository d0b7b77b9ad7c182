"""Streaming offload: run decoder layers whose weights live elsewhere through two reused buffers.

Two sources, one machinery (docs/scale.md, which explains
why accelerate's per-forward, unpinned, unprefetched copies are slow):
  * pinned host memory -> GPU: layers placed on "cpu" while the compute device is a GPU keep their
    weights in pinned host tensors; layer i+1 is copied into the idle buffer on a side CUDA stream
    while layer i runs (events order copy-after-use and use-after-copy);
  * memory-mapped safetensors -> CPU: weights stay in the checkpoint files; a layer is copied into a
    buffer when needed and its file pages are dropped from the process (madvise DONTNEED), so peak RSS
    is about the resident head group + two layer buffers + activations.

`model.streamer = LayerStreamer(...)` makes every `model.forward` use it (see OPT.forward).
Gradients: with autograd on, `acquire` hands out a fresh copy (the graph may keep it; memory is not
bounded). `layerwise_backward` is the bounded alternative: a no-grad forward saving each layer's
input, then a reverse sweep that recomputes one layer at a time from its saved input and backprops
through it. `forward_layer_major` runs a chunk of batches through one layer before the next.
"""

from __future__ import annotations

import mmap
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .capture import Capture, head_attribution
from .host_memory import release_cpu_caches
from .model import OPT, DecoderLayer, attention_allowed, position_ids_from_mask
from .weights import (_ST_DTYPES, CheckpointError, _set_param, check_key_map, checkpoint_files, config_from_hf, key_map,
                      read_safetensors_header)

Fetch = Callable[[int], dict[str, torch.Tensor]]  # layer index -> {local param name: host tensor}
_PAGE = mmap.PAGESIZE


class MmapCheckpoint:
    """Zero-copy views of every tensor of a safetensors checkpoint (one private mapping per shard)."""

    def __init__(self, ckpt_dir: str | Path):
        self.dir = Path(ckpt_dir)
        self.files = checkpoint_files(self.dir)
        self._maps: dict[Path, mmap.mmap] = {}
        self._info: dict[str, tuple[Path, int, int, torch.dtype, list[int]]] = {}
        self.headers: dict[Path, dict] = {}
        for path in sorted(set(self.files.values())):
            header = self.headers[path] = read_safetensors_header(path)
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            for key, info in header.items():
                if info["dtype"] not in _ST_DTYPES:
                    raise CheckpointError(f"{path}: {key!r} has dtype {info['dtype']}, expected a float type "
                                          "(F16/BF16/F32)")
                begin, end = info["data_offsets"]
                self._info[key] = (path, 8 + n + begin, end - begin, _ST_DTYPES[info["dtype"]], info["shape"])

    def view(self, key: str) -> torch.Tensor:
        """The stored tensor as a view of the mapping (no read happens until it is used)."""
        path, off, nbytes, dtype, shape = self._info[key]
        t = torch.frombuffer(self._maps[path], dtype=dtype, count=nbytes // dtype.itemsize, offset=off)
        return t.view(shape)  # flat (numel,) -> the stored shape

    def evict(self, key: str) -> None:
        """Drop this tensor's file pages from the process's resident set (page cache may keep them)."""
        path, off, nbytes, _, _ = self._info[key]
        start = off - off % _PAGE
        self._maps[path].madvise(mmap.MADV_DONTNEED, start, off + nbytes - start)


class LayerStreamer:
    """Brings streamed layers into two reused buffer layers on `compute`, prefetching the next one.

    streamed: layer indices served by this streamer (others are returned from the model as they are).
    fetch(i): host tensors of layer i, keyed like `DecoderLayer.named_parameters()`.
    evict(i): optional, called once layer i's host tensors have been copied (mmap page release).
    """

    def __init__(self, model: OPT, streamed: Sequence[int], compute: str | torch.device, fetch: Fetch,
                 dtype: torch.dtype, evict: Callable[[int], None] | None = None):
        self.model, self.fetch, self.evict_fn = model, fetch, evict
        self.streamed = sorted(set(streamed))
        self.compute, self.dtype = torch.device(compute), dtype
        self.force_reuse: bool | None = None  # None: reuse buffers only when autograd is off
        self.direction = 1  # +1 forward order, -1 reverse (layerwise_backward's sweep)
        self.slots = [self._empty_layer(self.streamed[0]) for _ in range(2)] if self.streamed else []
        self.holding: list[int | None] = [None, None]  # layer index in each slot
        self.busy = [False, False]  # acquired and not yet released
        self.fresh: dict[int, DecoderLayer] = {}
        self.copies = 0  # host->buffer layer copies (tests check prefetch does not copy twice)
        cuda = self.compute.type == "cuda" and torch.cuda.is_available()
        self.side = torch.cuda.Stream(self.compute) if cuda else None
        self.ready = [torch.cuda.Event() for _ in range(2)] if cuda else [None, None]
        self.free = [torch.cuda.Event() for _ in range(2)] if cuda else [None, None]

    def _empty_layer(self, i: int) -> DecoderLayer:
        with torch.device("meta"):
            layer = DecoderLayer(self.model.config, i)
        layer = layer.to_empty(device=self.compute).to(self.dtype).eval()
        layer.shape_key = self._shape_key(i)
        return layer.requires_grad_(False)

    def _shape_key(self, i: int) -> tuple:
        """Layers with equal keys have identical parameter shapes and head ids (all of them, unless pruned)."""
        cfg = self.model.config
        return tuple(cfg.pruned_heads.get(i, ())), cfg.has_ffn(i)

    def _fit_slot(self, s: int, i: int) -> None:
        """A pruned checkpoint's layers differ in shape: rebuild slot s for layer i when they do."""
        if self.slots[s].shape_key == self._shape_key(i):
            return
        if self.free[s] is not None:
            self.free[s].synchronize()  # the slot's last user has finished before its memory is dropped
        self.slots[s] = self._empty_layer(i)

    def _copy_into(self, layer: DecoderLayer, i: int, non_blocking: bool) -> None:
        src = self.fetch(i)
        for name, p in layer.named_parameters():
            p.data.copy_(src[name], non_blocking=non_blocking)
        self.copies += 1
        if self.evict_fn is not None:
            if self.side is not None:
                torch.cuda.current_stream(self.compute).synchronize()  # the copy must finish first
            self.evict_fn(i)

    def _issue(self, i: int) -> int | None:
        """Start bringing layer i into an idle slot; returns the slot, or None if both are busy."""
        if i in self.holding:
            return self.holding.index(i)
        idle = [s for s in range(2) if not self.busy[s]]
        if not idle:
            return None
        s = idle[0] if len(idle) == 1 or self.holding[idle[0]] is None else \
            min(idle, key=lambda k: self.holding[k] is not None)
        self.holding[s] = i
        self._fit_slot(s, i)
        if self.side is not None:
            with torch.cuda.stream(self.side):
                self.side.wait_event(self.free[s])  # the previous user of this buffer has finished
                self._copy_into(self.slots[s], i, non_blocking=True)
                self.ready[s].record(self.side)
        else:
            self._copy_into(self.slots[s], i, non_blocking=False)
        return s

    def _next(self, i: int) -> int | None:
        k = self.streamed.index(i) + self.direction
        return self.streamed[k] if 0 <= k < len(self.streamed) else None

    def acquire(self, i: int) -> nn.Module:
        """The module to run as layer i (resident layers come straight from the model)."""
        if i not in self.streamed:
            return self.model.decoder.layers[i]
        reuse = (not torch.is_grad_enabled()) if self.force_reuse is None else self.force_reuse
        if not reuse:
            layer = self._empty_layer(i)
            self._copy_into(layer, i, non_blocking=False)
            self.fresh[i] = layer
            return layer
        s = self._issue(i)
        if s is None:
            raise RuntimeError(f"layer {i} requested while both stream buffers are in use; release a layer first")
        if self.side is not None:
            torch.cuda.current_stream(self.compute).wait_event(self.ready[s])
        self.busy[s] = True
        nxt = self._next(i)
        if nxt is not None:
            self._issue(nxt)  # prefetch into the other buffer (overlaps layer i on a GPU)
        return self.slots[s]

    def held(self, i: int) -> nn.Module | None:
        """The module holding layer i's weights now (an acquired buffer or fresh copy), or None."""
        if i in self.fresh:
            return self.fresh[i]
        return self.slots[self.holding.index(i)] if i in self.holding else None

    def release(self, i: int) -> None:
        if i not in self.streamed:
            return
        if self.fresh.pop(i, None) is not None:
            return
        s = self.holding.index(i)
        self.busy[s] = False
        if self.free[s] is not None:
            self.free[s].record(torch.cuda.current_stream(self.compute))


def attach_pinned_streamer(model: OPT, streamed: Sequence[int], compute: str | torch.device) -> LayerStreamer:
    """Stream `streamed` layers (already on the host) to `compute`; pins them when CUDA is present."""
    layers = model.decoder.layers
    if torch.cuda.is_available():
        for i in streamed:
            for p in layers[i].parameters():
                p.data = p.data.pin_memory()  # page-locked, so non_blocking copies are truly async
    dtype = next(layers[streamed[0]].parameters()).dtype if streamed else torch.float32
    streamer = LayerStreamer(model, streamed, compute, lambda i: dict(layers[i].named_parameters()), dtype)
    model.streamer = streamer
    return streamer


def load_streamed(ckpt_dir: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                  ) -> OPT:
    """CPU-only (or GPU) mode: every layer stays in the memory-mapped safetensors files; the head
    group (embeddings, final LN, output head) is loaded to `device`. Returns a model whose
    `streamer` materialises one layer at a time into two buffers on `device`."""
    ckpt = MmapCheckpoint(ckpt_dir)
    cfg = config_from_hf(ckpt.dir)
    with torch.device("meta"):
        model = OPT(cfg)
    mapped, _ = key_map(ckpt.files, cfg, [n for n, _ in model.named_parameters()])
    check_key_map(mapped, ckpt.headers, {n: tuple(p.shape) for n, p in model.named_parameters()})  # as load_model does
    for name, (key, path) in mapped.items():
        if name.startswith("decoder.layers."):
            continue
        t = ckpt.view(key)
        _set_param(model, name, t.to(device=device, dtype=dtype or t.dtype, copy=True))
        ckpt.evict(key)
    prefix = {i: f"decoder.layers.{i}." for i in range(cfg.num_layers)}
    keys = {i: {n[len(prefix[i]):]: mapped[n][0] for n in mapped if n.startswith(prefix[i])} for i in prefix}
    first = ckpt.view(mapped["decoder.embed_tokens.weight"][0]).dtype
    streamer = LayerStreamer(model, range(cfg.num_layers), device,
                             lambda i: {n: ckpt.view(k) for n, k in keys[i].items()}, dtype or first,
                             evict=lambda i: [ckpt.evict(k) for k in keys[i].values()])
    streamer.checkpoint = ckpt  # keep the mappings alive as long as the model
    model.streamer = streamer
    model.eval()
    return model


def _layer_inputs(model: OPT, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    bsz, t = input_ids.shape
    if attention_mask is None:
        pos = torch.arange(2, t + 2, device=input_ids.device).expand(bsz, t)  # (B, T), offset 2
    else:
        pos = position_ids_from_mask(attention_mask, t)
    return model.embed(input_ids, pos)  # (B, T, D)


def _run_layer(layer: nn.Module, h: torch.Tensor, mask: torch.Tensor | None, head_scale, ffn_scale, i: int):
    dev = layer.device
    bsz, t = h.shape[:2]
    allowed = attention_allowed(None if mask is None else mask.to(dev), bsz, t, 0, dev)  # (B, 1, T, T)
    hs = None if head_scale is None else head_scale.to(dev)
    return layer(h.to(dev), allowed, hs, ffn_scale, None, None, i)[0]


@contextmanager
def layer_weights(model: OPT, i: int) -> Iterator[nn.Module]:
    """Layer i with its weights present, for code that reads a layer's matrices outside a forward (the
    paper's copying score): the resident layer, or a streamed one acquired for the block and released after."""
    layer = _acquire(model, i)
    try:
        yield layer
    finally:
        _release(model, i)


def running_layer(model: OPT, i: int) -> nn.Module:
    """The module computing layer i inside a forward (for a capture that reads its weights): the stream
    buffer it was acquired into, or the resident layer."""
    held = model.streamer.held(i) if model.streamer is not None else None
    return model.decoder.layers[i] if held is None else held


def _acquire(model: OPT, i: int) -> nn.Module:
    return model.streamer.acquire(i) if model.streamer is not None else model.decoder.layers[i]


def _release(model: OPT, i: int) -> None:
    if model.streamer is not None:
        model.streamer.release(i)


def layerwise_backward(model: OPT, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       loss_fn: Callable[[torch.Tensor], torch.Tensor], head_mask: torch.Tensor | None = None,
                       ) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Head gradients with one layer's weights present at a time (recompute from saved inputs).

    loss_fn maps the final (B, T, W) hidden state to a scalar (e.g. via model.logits). Returns
    (loss, d loss / d head_mask (L, H) at `head_mask` (default all ones), head scores (L, H)) where
    scores[l, h] = sum over batch and positions of |sum_Dh a * dL/da| for head h's output a
    (B, H, T, Dh) (capture.head_attribution). Activations kept: one (B, T, D) input per layer.
    """
    return layerwise_backward_chunk(model, [(input_ids, attention_mask, loss_fn)], head_mask)[0]


def layerwise_backward_chunk(model: OPT, examples: Sequence[tuple[torch.Tensor, torch.Tensor | None,
                                                                  Callable[[torch.Tensor], torch.Tensor]]],
                             head_mask: torch.Tensor | None = None) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """`layerwise_backward` of every (input_ids, attention_mask, loss_fn) example, in layer order: the
    forward sweep takes each layer once for all of them, then the reverse sweep does; with streamed
    layers the weights cross twice per chunk instead of twice per example. Each example's numbers are
    those of its own call (the same operations on the same values). Kept: every example's (B, T, D)
    input of every layer, and its gradient while the reverse sweep runs."""
    cfg = model.config
    head_mask = torch.ones(cfg.num_layers, cfg.num_heads) if head_mask is None else head_mask.detach()
    streamer = model.streamer
    if streamer is not None:
        streamer.force_reuse = True  # safe: each layer's graph is consumed before its buffer is reused
    try:
        inputs: list[list[torch.Tensor | None]] = [[] for _ in examples]
        with torch.no_grad():
            hs = [_layer_inputs(model, ids, mask) for ids, mask, _ in examples]
            for i in range(cfg.num_layers):
                layer = _acquire(model, i)
                for e, (_, mask, _) in enumerate(examples):
                    inputs[e].append(hs[e])
                    hs[e] = _run_layer(layer, hs[e], mask, head_mask[i], 1.0, i)
                _release(model, i)
        losses, grads = [], []
        for h, (_, _, loss_fn) in zip(hs, examples):
            top = h.detach().requires_grad_(True)
            loss = loss_fn(model.finalize(top))
            grads.append(torch.autograd.grad(loss, top)[0])
            losses.append(float(loss.detach()))
            release_cpu_caches(top.device)
        del hs
        rows = [[None] * cfg.num_layers for _ in examples]
        scores = [[None] * cfg.num_layers for _ in examples]
        if streamer is not None:
            streamer.direction = -1
        for i in reversed(range(cfg.num_layers)):
            layer = _acquire(model, i)
            dev = layer.device
            for e, (_, mask, _) in enumerate(examples):
                x = inputs[e][i].detach().to(dev).requires_grad_(True)
                inputs[e][i] = None  # layer i's input is read once
                hs_ = head_mask[i].to(dev).requires_grad_(True)
                cap = Capture(heads=True, grads=True, layers=[i])
                with torch.enable_grad():
                    bsz, t = x.shape[:2]
                    allowed = attention_allowed(None if mask is None else mask.to(dev), bsz, t, 0, dev)  # (B, 1, T, T)
                    out = layer(x, allowed, hs_, 1.0, None, cap, i)[0]
                    z = cap.heads[i]  # (B, H, T, Dh)
                    grads[e], rows[e][i], gz = torch.autograd.grad(out, (x, hs_, z), grads[e].to(out.device))
                scores[e][i] = head_attribution(z.detach(), gz).cpu()  # (H,)
                release_cpu_caches(dev)
            _release(model, i)
        return [(losses[e], torch.stack([r.cpu() for r in rows[e]]), torch.stack(scores[e]))  # (L, H) x 2
                for e in range(len(examples))]
    finally:
        if streamer is not None:
            streamer.force_reuse, streamer.direction = None, 1
