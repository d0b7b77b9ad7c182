"""Many masked runs over a chunk of batches, layer by layer: each layer's weights reach its device once.

The FFN oracle (docs/method.md, "FFN importance"; the paper's section 5) scores a task L + 1 times:
unmasked, then with each layer's FFN knocked out. Run batch by batch, every one of those runs brings
every layer it recomputes to the GPU again; with streamed layers (opt66b/offload.py) that is the whole
cost: (L + 1) runs x about L / 2 layers x one layer's weights per scoring batch. Run layer by layer, a
chunk of batches goes through layer i for every live run before layer i + 1 is fetched, so the weights
cross once per chunk whatever the number of runs.

    run_layer_major(model, units, runs, on_output)

units: the chunk's scoring units, each a list of passes; the first is a context (or plain) pass, the
    others continue it on the keys and values its rows computed (`ChunkPass.ctx_rows`), as
    tasks/scoring.py's shared-context batches do.
runs: `MaskedRun`s; runs[0] runs every layer (start_layer 0) and each other run resumes from runs[0]'s
    input of its own start layer, so its masks must equal runs[0]'s in the layers before it.
on_output(run, unit, pass, hidden (B, T, W)) receives every pass's final hidden state (what `OPT.logits`
    reads), in run order, and within a run unit by unit, each unit's first pass before its others.

Results are those of `OPT.forward` on each pass alone, bit for bit: every layer call gets the same
inputs, masks, cache and attention mask as in a whole forward. What it holds: the live state
(B, T, D) of every pass of every started run, on the device of the layer that made it, and one
layer's keys and values of one context pass at a time (a whole forward holds every layer's). A run
shares runs[0]'s state tensors until its start layer changes them, so a run costs memory only from
its start on; at the last layer (1 + number of runs) copies of the chunk's stream are live, which is
what `chunk_state_bytes` prices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .model import OPT, attention_allowed
from .host_memory import release_cpu_caches


@dataclass(frozen=True)
class ChunkPass:
    ids: torch.Tensor  # (B, T) token ids
    mask: torch.Tensor  # (B, S) 0/1 over the continued keys (S - T of them) and the new positions
    positions: torch.Tensor  # (B, T) table rows of the new positions (model.position_ids_from_mask)
    ctx_rows: torch.Tensor | None = None  # (B,) rows of the unit's first pass continued; None: it is the first


@dataclass(frozen=True)
class MaskedRun:
    head_mask: torch.Tensor | None = None  # (L, H) or None
    ffn_mask: torch.Tensor | Sequence[float] | None = None  # (L,) or None
    start_layer: int = 0  # layers before it are runs[0]'s


def streams_layers(model: OPT) -> bool:
    """Whether some layer's weights are brought to the compute device per use (opt66b/offload.py): then
    layer order is what saves the transfers."""
    streamer = getattr(model, "streamer", None)
    return bool(streamer is not None and streamer.streamed)


def streamed_compute(model: OPT) -> str | None:
    """The device a model streams layers to (where layer-order states live), or None."""
    return str(model.streamer.compute) if streams_layers(model) else None


DEFAULT_CHUNK_BUDGET = 2 << 30  # bytes, when --max-memory has no entry for the device


def chunk_budget(max_memory: dict[str, int], device: str | None) -> int:
    """Bytes a chunk's copies of the residual stream may take by default: a quarter of the budget of
    `device` (the compute device in layer order, None: the host, where batch order records) in the
    parsed --max-memory, else DEFAULT_CHUNK_BUDGET."""
    entry = max_memory.get(device or "cpu")
    return entry // 4 if entry else DEFAULT_CHUNK_BUDGET


def chunk_state_bytes(tokens: int, runs: int, hidden: int, element_bytes: int) -> int:
    """Bytes of live states at the last layer: every run's (B, T, D) stream of `tokens` padded positions."""
    return runs * tokens * hidden * element_bytes


def chunk_units(unit_tokens: Sequence[int], budget: int | None, copies: int, hidden: int, element_bytes: int) -> int:
    """Scoring batches per chunk: as many as fit `budget` bytes with `copies` of the largest batch's
    residual stream (`unit_tokens`: padded positions per batch) each; None: the whole task in one chunk.
    The planner (study/planners.py) prices the same rule."""
    if budget is None:
        return len(unit_tokens)
    per_unit = chunk_state_bytes(max(unit_tokens, default=0), copies, hidden, element_bytes)
    return max(1, min(len(unit_tokens), budget // max(per_unit, 1)))


def chunk_cost(unit_tokens: Sequence[int], budget: int | None, copies: int, hidden: int,
               element_bytes: int) -> tuple[int, int, int]:
    """(batches per chunk, state bytes of the largest chunk, number of chunks) of a chunked run under `budget`:
    chunk_units' size; what a chunk holds (its largest batches' `copies` streams); the chunks, i.e. the layer
    sweeps of a layer-order run (each streams every layer once)."""
    size = chunk_units(unit_tokens, budget, copies, hidden, element_bytes)
    held = chunk_state_bytes(sum(sorted(unit_tokens, reverse=True)[:size]), copies, hidden, element_bytes)
    return size, held, -(-len(unit_tokens) // size)


@torch.no_grad()
def run_layer_major(model: OPT, units: Sequence[Sequence[ChunkPass]], runs: Sequence[MaskedRun],
                    on_output: Callable[[int, int, int, torch.Tensor], None]) -> None:
    """Every pass of `units` under every run of `runs`, layer-major (module docstring)."""
    cfg = model.config
    scales = [model._check_masks(r.head_mask, r.ffn_mask) for r in runs]  # per run: head rows, FFN scales
    _check_runs(model, runs)
    starts: dict[int, list[int]] = {}
    for r, run in enumerate(runs[1:], 1):
        starts.setdefault(run.start_layer, []).append(r)
    states: dict[int, list[list[torch.Tensor]]] = {
        0: [[model.embed(p.ids, p.positions) for p in unit] for unit in units]}  # (B, T, D) each
    allowed: dict[tuple[int, int, torch.device], torch.Tensor] = {}  # one attention mask per pass and device
    last = cfg.num_layers - 1
    for i in range(cfg.num_layers):
        for r in starts.get(i, ()):
            states[r] = [list(unit) for unit in states[0]]  # runs[0]'s input of layer i, shared until replaced
        layer = model.streamer.acquire(i) if model.streamer is not None else model.decoder.layers[i]
        dev = layer.device
        for r in sorted(states):
            head_rows, ffn_scales = scales[r]
            head_scale = None if head_rows is None else head_rows[i].to(dev)
            for u, unit in enumerate(units):
                kv = None  # layer i's keys and values of the unit's first pass, while its others run
                for j, p in enumerate(unit):
                    key = (u, j, dev)
                    if key not in allowed:
                        bsz, new = p.ids.shape
                        allowed[key] = attention_allowed(p.mask.to(dev), bsz, new, p.mask.shape[1] - new, dev)
                    past = None
                    if p.ctx_rows is not None:
                        rows = p.ctx_rows.to(kv[0].device)
                        past = (kv[0].index_select(0, rows), kv[1].index_select(0, rows))  # (R, H, S, Dh)
                    h, new_kv = layer(states[r][u][j].to(dev), allowed[key], head_scale, ffn_scales[i], past, None, i)
                    if j == 0 and len(unit) > 1:
                        kv = new_kv
                    if i == last:
                        states[r][u][j] = None  # the final state goes out at once, not kept beside the others
                        on_output(r, u, j, model.finalize(h))
                    else:
                        states[r][u][j] = h
        if model.streamer is not None:
            model.streamer.release(i)
        release_cpu_caches(dev)  # on the CPU, MKL's pool of every pass shape the layer saw


def full_masks(cfg, head_mask, ffn_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, H) and (L,) float32 masks on the CPU, ones where a mask is None (for comparing runs)."""
    h = torch.ones(cfg.num_layers, cfg.num_heads) if head_mask is None else torch.as_tensor(head_mask).detach().float().cpu()
    f = torch.ones(cfg.num_layers) if ffn_mask is None else torch.as_tensor(ffn_mask).detach().float().cpu()
    return h, f


def check_resumable(cfg, base: MaskedRun, run: MaskedRun, name: str) -> None:
    """A run resumed at its start layer from `base`'s states must start inside the model and agree
    with `base`'s masks in every layer before it (those layers are not run again)."""
    s = run.start_layer
    if not 0 <= s < cfg.num_layers:
        raise ValueError(f"{name}: start_layer must be in [0, {cfg.num_layers}), got {s}")
    (bh, bf), (h, f) = full_masks(cfg, base.head_mask, base.ffn_mask), full_masks(cfg, run.head_mask, run.ffn_mask)
    if not (torch.equal(h[:s], bh[:s]) and torch.equal(f[:s], bf[:s])):
        raise ValueError(f"{name}: its masks differ from those of the run it resumes from (runs[0]) in layers "
                         f"< {s}, which it does not run")


def _check_runs(model: OPT, runs: Sequence[MaskedRun]) -> None:
    """runs[0] starts at layer 0; every other run is resumable from it (check_resumable)."""
    if not runs or runs[0].start_layer != 0:
        raise ValueError("runs[0] must run every layer (start_layer 0): the other runs resume from its states")
    for r, run in enumerate(runs[1:], 1):
        check_resumable(model.config, runs[0], run, f"run {r}")


__all__ = ["ChunkPass", "MaskedRun", "check_resumable", "full_masks", "DEFAULT_CHUNK_BUDGET", "chunk_budget", "chunk_cost", "chunk_state_bytes", "chunk_units",
           "run_layer_major", "streamed_compute", "streams_layers"]
