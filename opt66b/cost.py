"""What the model computes, counted once: the FLOPs of a pass, the shapes of a step's passes, and a step's
work as units, the pieces torchrun processes split. The run assigns its units by these costs
(opt66b.runs.distributed.assign) and records what it executed with them; `--plan` prices the same units,
so the plan is the schedule (study/plan.py adds the memory of the passes on a placement).

FLOPs of one pass of B rows x T new positions over S key positions (S = cached past + T), per layer run:

    2 B T (4 D^2' + 2 D F)    weight matmuls: q, k, v, out_proj of the kept heads (D^2' = D x their width)
                              and fc1, fc2 (an FFN masked to 0 is skipped by the model)
  + 4 B T S D'                attention scores and weighted values, computed dense (D' = the heads' width)
  + 2 N W V                   the output head at the N positions that are scored (the rest is never projected)

A backward (head importance, the copy task's importance) computes the gradients of the activations only, the
weights being frozen: each weight matmul once more (dX = dY W^T), the attention twice (both of its operands are
activations), the output head once. The layer-wise backward (streamed layers, or --backward layerwise) also
runs each layer's forward a second time (its graph is rebuilt from the saved input).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

FLOP_MODEL = ("forward = 2 x weight-matrix params x tokens + attention 4 x D x T x S per layer + output head "
              "2 x W x V per scored position; backward (activations' gradients only, frozen weights) = matmuls 1x, "
              "attention 2x, head 1x of the forward; a layer-wise backward adds one forward")


class FlopRule:
    """The FLOP rule of the module docstring for one model's config (pruned layers counted as they are)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        d, dh = cfg.hidden_size, cfg.head_dim
        heads = [len(cfg.kept_heads(i)) for i in range(cfg.num_layers)]  # fewer in a pruned checkpoint
        self.ffn_params = [2 * d * cfg.ffn_dim if cfg.has_ffn(i) else 0 for i in range(cfg.num_layers)]
        matrices = [4 * d * dh * h + f for h, f in zip(heads, self.ffn_params)]
        widths = [dh * h for h in heads]
        # suffix sums: a pass from start_layer runs layers start_layer..L-1
        self._matrices = [sum(matrices[i:]) for i in range(cfg.num_layers + 1)]
        self._widths = [sum(widths[i:]) for i in range(cfg.num_layers + 1)]
        self._head = 2 * cfg.word_embed_proj_dim * cfg.vocab_size

    def matrix_params(self, start_layer: int = 0) -> int:
        return self._matrices[start_layer]

    def forward(self, tokens: float, token_keys: float, logit_rows: float, start_layer: int = 0,
                ffn_skipped: float = 0.0) -> float:
        """Summed over passes: `tokens` = sum B T, `token_keys` = sum B T S, `logit_rows` = sum N."""
        return (2 * tokens * (self._matrices[start_layer] - ffn_skipped) + 4 * token_keys * self._widths[start_layer]
                + self._head * logit_rows)

    def backward(self, tokens: float, token_keys: float, logit_rows: float, start_layer: int = 0) -> float:
        """The activations' gradients of the same passes (module docstring)."""
        return (2 * tokens * self._matrices[start_layer] + 8 * token_keys * self._widths[start_layer]
                + self._head * logit_rows)


@dataclass(frozen=True)
class Passes:
    """The passes of one evaluation (or of a list of examples), as the cost rules need them: per scoring unit
    (a batch, or a context batch with its continuation batches), each pass as [rows, new positions, key
    positions, real tokens, scored positions, KV row-positions held]. JSON-able."""

    units: tuple

    def __post_init__(self) -> None:
        units = tuple(tuple(tuple(p) for p in unit) for unit in self.units)
        object.__setattr__(self, "units", units)
        flat = [p for unit in units for p in unit]
        for name, value in (("count", len(flat)), ("padded", sum(r * n for r, n, *_ in flat)),
                            ("token_keys", sum(r * n * k for r, n, k, *_ in flat)), ("real", sum(p[3] for p in flat)),
                            ("logits", sum(p[4] for p in flat)),
                            ("unit_tokens", tuple(sum(r * n for r, n, *_ in unit) for unit in units))):
            object.__setattr__(self, name, value)

    def chunk(self, first: int, size: int) -> "Passes":
        """The passes of the scoring units first..first+size-1 (a chunk of batches)."""
        return Passes(self.units[first:first + size])

    @classmethod
    def of_examples(cls, lengths: Sequence[tuple[int, int]]) -> "Passes":
        """One pass per (tokens fed, scored positions) example, batch 1 (head importance)."""
        return cls(tuple(((1, fed, fed, fed, scored, 0),) for fed, scored in lengths))


@dataclass(frozen=True)
class Run:
    """Passes run one way: from `start_layer`, with `ffn_skipped` FFN matrix parameters masked off, `times`
    over; backward "" (none), "full" (every layer's activations kept) or "layerwise" (one layer's graph at a
    time: one more forward); scores: the passes materialize their attention scores (captured); layer_order:
    the passes run inside layer-order chunks (opt66b/layer_major.py)."""

    passes: Passes
    start_layer: int = 0
    ffn_skipped: float = 0.0
    times: int = 1
    backward: str = ""
    scores: bool = False
    layer_order: bool = False

    def flops(self, rule: FlopRule) -> float:
        p = self.passes
        total = rule.forward(p.padded, p.token_keys, p.logits, self.start_layer, self.ffn_skipped)
        if self.backward:
            total += rule.backward(p.padded, p.token_keys, p.logits, self.start_layer)
        if self.backward == "layerwise":
            total += rule.forward(p.padded, p.token_keys, 0, self.start_layer, self.ffn_skipped)
        return self.times * total


@dataclass
class WorkUnit:
    """One piece of a step that a process runs whole (a (task, shot) evaluation, a chunk of the FFN oracle's
    knock-outs, a sweep's evaluation, a seed): its runs, and what it holds beside them. held: bytes on the
    compute device beside every pass (layer-order states); host: host bytes beyond the weights (recorded layer
    inputs); sweeps: layer sweeps of layer-order chunks (the streamed weights cross once per sweep); extra:
    activation bytes on the head device outside the pass rule; extra_flops: work outside model passes."""

    key: tuple
    runs: list[Run] = field(default_factory=list)
    provides: tuple = ()  # evaluations (identity, head mask id, FFN mask id) it leaves for later units to reuse
    held: int = 0
    host: int = 0
    sweeps: int = 0
    extra: int = 0
    extra_flops: float = 0.0

    def flops(self, rule: FlopRule) -> float:
        return sum(r.flops(rule) for r in self.runs) + self.extra_flops


@dataclass(frozen=True)
class ModelShape:
    """What a step's work units depend on besides its settings: the config, the bytes of a weight element
    (a chunk's states are in the model's dtype), where layers stream to (None: resident, batch order) and the
    processes sharing the node's host memory. The run takes it from the loaded model (`of`), the plan from
    the placement it prices."""

    cfg: Any
    dtype_bytes: int
    streams_to: str | None = None
    processes: int | None = None  # on the node, sharing its host memory; None: this run's (torchrun's)

    @classmethod
    def of(cls, model: Any) -> "ModelShape":
        from .layer_major import streamed_compute

        return cls(model.config, next(model.parameters()).element_size(), streamed_compute(model))

    @property
    def rule(self) -> FlopRule:
        return FlopRule(self.cfg)
