"""`--plan`: what a step (or `run.py all`) costs, printed without running it and without any weights.

Every model pass a step makes is enumerated by the step's planner (study/planners.py) with the
step's own planning code, on a config-only stand-in for the model: evaluation batches come from
tasks.scoring.Scorer (length-sorted batches under --batch-tokens, contexts shared through the KV
cache), importance examples from
Task.importance_examples + token_requests, induction sequences from induction.sequences, sweep
evaluations from prune.sweeps.sweep_units (identical masks evaluated once, as the sweep does).
The model is never built, so an official size name (`--random-weights
opt-66b`) plans as well as a checkpoint directory (only its config.json is read).

Costs, per pass of B rows x T new positions over S key positions (S = cached past + T), in a layer:

    FLOPs    2 B T (4 D^2 + 2 D F)  weight matmuls (attention projections + FFN; an FFN masked to 0 is skipped)
           + 4 B T S D              attention scores and weighted values, computed dense
           + 2 N W V                output head at the N positions that are scored (the rest is never projected)
    backward = 2 x forward          (head importance, the copy task's importance)
    activations  B T (6 D + F) bytes of one layer's working set (opt66b/placement.py's reserve rule)
           + B H T S x 4            one fp32 attention-score block, in passes that capture attention
                                    (the scorer's passes use fused attention, which does not keep it)
           + 2 K D bytes per layer on the device for K row-positions of cached keys and values: a
                                    context batch's cache, and a continuation batch's copy of its rows'
                                    cache held beside it (tasks/scoring.py bounds it by --batch-tokens)
           + 2 N V x 4 on the head device (fp32 logits and log-softmax)
           backward: the working set and score block of every layer on the device are kept, plus one
                     more for the gradients of the layer being differentiated, and 3 N V x 4 on the
                     head device (the log-softmax kept, its gradient and the logits'); with streamed
                     layers (--offload) importance takes opt66b.offload.layerwise_backward, which keeps
                     one B T D input per layer and one layer's working set and its gradients
           layer order (opt66b/layer_major.py; --offload): one layer's keys and values at a time, and
                     the chunk's states (copies of its B T D stream) held beside every pass
    + CPU_RUNTIME_BYTES on "cpu" when layers compute there (the math library's scratch and the heap's
           slack, a measured constant; see its comment)
    time = FLOPs / throughput; throughput measured by a timed layer-shaped matmul on the compute
           device (calibrate_tflops), or given as --throughput TFLOPS. Layers placed on several
           devices run one after another, so one device's throughput is the rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A step that computes on the CPU holds, beside its activations, the math library's scratch during its
# matmuls (MKL's per-thread packing buffers) and the heap's slack between freed tensors: measured as the
# memory of a 1-document step beyond its activations (tests/benchmarks/bench_plan_memory.py --limits 1:
# 13 to 17 MiB for eval and head importance on opt-125m, 2 threads, torch 2.13). Not derived: measured.
CPU_RUNTIME_BYTES = 16 << 20

FLOP_MODEL = ("forward = 2 x weight-matrix params x tokens + attention 4 x D x T x S per layer + output head "
              "2 x W x V per scored position; backward = 2 x forward")


@dataclass
class Shape:
    """What the FLOP and memory rules need of the model (no weights)."""

    cfg: Any
    dtype_bytes: int
    layers_on: dict[str, int]  # device -> decoder layers it runs (streamed layers count on the compute device)
    weights_on: dict[str, int]  # device -> bytes of weights resident there
    head: str  # device of the embeddings and output head
    streamed: dict[int, int] = field(default_factory=dict)  # layer -> bytes copied to the compute device per pass
    compute: str = ""  # the device streamed layers run on (default: the head's)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.compute = self.compute or self.head
        d, dh = cfg.hidden_size, cfg.head_dim
        heads = [len(cfg.kept_heads(i)) for i in range(cfg.num_layers)]  # fewer in a pruned checkpoint
        self.ffn_params = [2 * d * cfg.ffn_dim if cfg.has_ffn(i) else 0 for i in range(cfg.num_layers)]
        matrices = [4 * d * dh * h + f for h, f in zip(heads, self.ffn_params)]  # q, k, v, out_proj; fc1, fc2
        widths = [dh * h for h in heads]  # query/key width of the kept heads
        # suffix sums: a pass from start_layer runs layers start_layer..L-1
        self._matrices = [sum(matrices[i:]) for i in range(cfg.num_layers + 1)]
        self._widths = [sum(widths[i:]) for i in range(cfg.num_layers + 1)]
        self._streamed = [sum(b for i, b in self.streamed.items() if i >= start) for start in range(cfg.num_layers + 1)]

    def matrix_params(self, start_layer: int = 0) -> int:
        return self._matrices[start_layer]

    def attention_width(self, start_layer: int = 0) -> int:
        return self._widths[start_layer]


@dataclass
class StepPlan:
    """Accumulated cost of one step; `add` one model pass (or `times` identical ones) at a time.

    The passes are kept as what their memory depends on (tokens, score block, cached keys, scored
    positions, layers run, kind of backward), not as bytes on a device: the same step can then be
    priced under another placement without enumerating its passes again (plan_cli.fit_reserve)."""

    label: str
    shape: Shape
    command: str = ""
    forward: int = 0
    backward: int = 0
    tokens: int = 0  # real (non-pad) tokens fed to the model
    padded_tokens: int = 0  # B x T actually computed
    logit_positions: int = 0
    host_bytes: int = 0  # host memory beyond the weights (recorded layer inputs)
    notes: list[str] = field(default_factory=list)
    # (tokens B T, score-block bytes, KV row-positions, scored positions, kind) -> most layers run; kind:
    # 0 forward, 1 backward (layer-wise when layers stream), 2 layer-wise backward, 3 forward in layer
    # order (opt66b/layer_major.py: one layer's keys and values held at a time)
    passes: dict[tuple[int, int, int, int, int], int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)  # device -> activation bytes outside a pass rule
    held: dict[str, int] = field(default_factory=dict)  # device -> bytes held beside every pass (layer-order states)
    passes_from: dict[int, int] = field(default_factory=dict)  # start layer -> passes (streamed bytes)
    layer_order_chunks: int = 0  # layer sweeps of layer-order chunks: the streamed weights cross once per sweep
    _flops: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # forward-only, backward, layer-wise

    def add(self, rows: int, new: int, keys: int | None = None, real: int | None = None, start_layer: int = 0,
            ffn_skipped: float = 0, logit_rows: int = 0, backward: bool = False, kv_rows: int = 0,
            layerwise: bool = False, scores: bool = True, times: int = 1, layer_order: bool = False) -> None:
        """One pass of `rows` x `new` positions over `keys` key positions from `start_layer` on.
        ffn_skipped: weight-matrix parameters of the FFNs masked to 0 (skipped by the model);
        kv_rows: rows x positions of keys and values held per layer during the pass (KV caches);
        scores: the pass materializes its attention scores (captured passes; fused attention does not);
        layer_order: the pass runs in a layer-order chunk, whose weight transfers the caller counts
        (layer_order_chunks), not the pass."""
        cfg = self.shape.cfg
        keys = new if keys is None else keys
        bt = rows * new
        kind = (2 if layerwise else 1) if backward else 0
        self._flops[kind] += times * self._forward_flops(bt, bt * keys, logit_rows, start_layer, ffn_skipped)
        self.forward += times
        self.backward += times if backward else 0
        self.tokens += times * (bt if real is None else real)
        self.padded_tokens += times * bt
        self.logit_positions += times * logit_rows
        if not layer_order:
            self.passes_from[start_layer] = self.passes_from.get(start_layer, 0) + times * (2 if kind == 2 or (
                kind == 1 and self.shape.streamed) else 1)  # a layer-wise backward sweeps the layers twice
        key = (bt, rows * cfg.num_heads * new * keys * 4 if scores else 0, kv_rows, logit_rows, kind)
        # a pass running fewer layers needs no more on any device: keep the most layers per shape
        self.passes[key] = max(self.passes.get(key, 0), cfg.num_layers - start_layer)

    def add_group(self, group: "PassGroup", start_layer: int = 0, ffn_skipped: float = 0, times: int = 1,
                  layer_order: bool = False) -> None:
        """Every pass of `group` (one evaluation's scoring passes), as `add` would count them one by one:
        the FLOPs are linear in the summed tokens, token-keys and scored positions, so a group is
        added in one step however many passes it has (the FFN oracle adds each evaluation L + 1 times).
        layer_order: the passes run layer by layer inside chunks (kind 3); their weight transfers are
        counted per chunk (layer_order_chunks), not per pass."""
        cfg = self.shape.cfg
        self._flops[0] += times * self._forward_flops(group.padded, group.token_keys, group.logits, start_layer,
                                                      ffn_skipped)
        self.forward += times * group.count
        self.tokens += times * group.real
        self.padded_tokens += times * group.padded
        self.logit_positions += times * group.logits
        if not layer_order:
            self.passes_from[start_layer] = self.passes_from.get(start_layer, 0) + times * group.count
        for key in group.keys:
            key = (*key[:4], 3) if layer_order else key
            self.passes[key] = max(self.passes.get(key, 0), cfg.num_layers - start_layer)

    def _forward_flops(self, tokens: int, token_keys: int, logit_rows: int, start_layer: int,
                       ffn_skipped: float) -> float:
        """The FLOP rule of the module docstring, summed over passes: weight matmuls per token, attention per
        (token, key) pair, the output head per scored position."""
        s = self.shape
        return (2 * tokens * (s.matrix_params(start_layer) - ffn_skipped)
                + 4 * token_keys * s.attention_width(start_layer)
                + 2 * logit_rows * s.cfg.word_embed_proj_dim * s.cfg.vocab_size)

    def add_flops(self, flops: float) -> None:
        """Work done outside a model pass (the paper's copying score runs layer pieces by hand)."""
        self._flops[0] += flops

    @property
    def flops(self) -> float:
        """backward = 2 forwards; the layer-wise one (streamed layers, or asked for) recomputes each
        layer's forward once more."""
        fwd, bwd, layerwise = self._flops
        return fwd + (4 if self.shape.streamed else 3) * bwd + 4 * layerwise

    @property
    def streamed_bytes(self) -> int:
        """Weights copied from host memory or disk to the compute device (--offload), all passes: each pass
        brings the streamed layers it runs; a chunk run in layer order brings each streamed layer once."""
        return (sum(n * self.shape._streamed[start] for start, n in self.passes_from.items())
                + self.layer_order_chunks * self.shape._streamed[0])

    @property
    def activations(self) -> dict[str, int]:
        """Device -> peak activation bytes of the step's largest pass there (plus what the step holds
        beside every pass), under the shape's placement."""
        s = self.shape
        out = dict(self.extra)
        for dev in dict.fromkeys([*s.layers_on, s.head, *self.held]):
            out[dev] = max(out.get(dev, 0), max((pass_bytes(s, dev, key, run) for key, run in self.passes.items()),
                                                default=0)) + self.held.get(dev, 0)
        if self.passes and s.layers_on.get("cpu"):  # layers computed on the CPU: its runtime's scratch too
            out["cpu"] = out.get("cpu", 0) + CPU_RUNTIME_BYTES
        return out

    def peak(self) -> dict[str, int]:
        activations = self.activations
        devices = dict.fromkeys([*self.shape.weights_on, *activations])
        return {d: self.shape.weights_on.get(d, 0) + activations.get(d, 0) for d in devices}


@dataclass
class PassGroup:
    """The scoring passes of one evaluation, as the plan needs them: per scoring unit (a batch, or a
    context batch with its continuation batches) the (rows, new positions, key positions, real tokens,
    scored positions, cached KV row-positions) of each pass. JSON-able (study/planners.py caches it)."""

    units: list[list[list[int]]]

    def __post_init__(self) -> None:
        flat = [p for unit in self.units for p in unit]
        self.count = len(flat)
        self.padded = sum(r * n for r, n, *_ in flat)
        self.token_keys = sum(r * n * k for r, n, k, *_ in flat)
        self.real = sum(p[3] for p in flat)
        self.logits = sum(p[4] for p in flat)
        self.keys = {(r * n, 0, kv, logits, 0) for r, n, _, _, logits, kv in flat}  # fused attention: no scores
        self.unit_tokens = [sum(r * n for r, n, *_ in unit) for unit in self.units]


def pass_bytes(shape: Shape, device: str, key: tuple[int, int, int, int, int], layers_run: int) -> int:
    """Activation bytes one pass (StepPlan.passes' key) takes on `device` (the rule in the module docstring)."""
    cfg = shape.cfg
    bt, score_bytes, kv_rows, logit_rows, kind = key
    on_dev = round(shape.layers_on.get(device, 0) * layers_run / cfg.num_layers)  # a pass from layer l runs L - l
    if not on_dev:
        need = 0
    else:
        working = layer_working_bytes(shape, bt) + score_bytes
        if kind == 2 or (kind == 1 and shape.streamed):  # layer-wise backward: every layer's input, one graph
            need = 2 * working + bt * cfg.hidden_size * shape.dtype_bytes * on_dev
        elif kind == 1:  # every layer's saved activations, and the gradients of the layer being differentiated
            need = working * (on_dev + 1)
        else:
            need = working
        need += kv_bytes(shape, kv_rows) * (1 if kind == 3 else on_dev)  # layer order: one layer's cache at a time
    if device == shape.head:  # fp32 logits and their log-softmax; a backward adds the gradient of each
        need += (3 if kind in (1, 2) else 2) * logit_rows * cfg.vocab_size * 4
    return need


def layer_working_bytes(shape: Shape, tokens: int) -> int:
    """One layer's working set for `tokens` positions: q, k, v, attention output, residual, LN output
    (6 D) and the FFN intermediate (F), in the model's dtype (opt66b/placement.py's reserve rule)."""
    return tokens * (6 * shape.cfg.hidden_size + shape.cfg.ffn_dim) * shape.dtype_bytes


def kv_bytes(shape: Shape, positions: int) -> int:
    """Keys and values of `positions` rows x positions, per layer."""
    return 2 * positions * shape.cfg.hidden_size * shape.dtype_bytes


def scoring_peak_bytes(shape: Shape, batch_tokens: int, device: str) -> int:
    """The most activation memory one scoring pass of `batch_tokens` can take on `device`, by the rule of
    StepPlan.add at its worst: one layer's working set, the context pass's KV cache beside its
    continuation copies (at most KV_BUDGET_FACTOR x batch_tokens key positions) in every layer the device
    runs, and on the head device the fp32 logits and log-softmax of every position."""
    from tasks.scoring import KV_BUDGET_FACTOR

    worst = (batch_tokens, 0, (1 + KV_BUDGET_FACTOR) * batch_tokens, batch_tokens, 0)  # a StepPlan.passes key
    return pass_bytes(shape, device, worst, shape.cfg.num_layers)


def full_backward_fits(shape: Shape, budgets: dict[str, float], tokens: int) -> bool:
    """Whether head importance's ordinary backward of a `tokens`-long example (every layer's working set
    and fp32 attention-score block kept, pass_bytes' rule) fits beside the weights on every budgeted
    device of a resident placement."""
    example = (tokens, shape.cfg.num_heads * tokens * tokens * 4, 0, tokens, 1)  # a StepPlan.passes key
    return all(shape.weights_on.get(d, 0) + pass_bytes(shape, d, example, shape.cfg.num_layers) <= budget
               for d, budget in budgets.items())


def fit_batch_tokens(shape: Shape, budgets: dict[str, float],
                     candidates=(4096, 2048, 1024, 512, 256, 128)) -> tuple[int, bool] | None:
    """(tokens, fits): the largest scoring batch whose worst-case activations fit beside the weights on
    every device with a budget (bytes), or the smallest with fits=False; None when no device has a
    budget (CPU runs: keep the default). A batch always holds at least one request, so a request
    longer than the batch can still exceed it: the plan, which sees the real requests, says so."""
    devices = [d for d in budgets if d in shape.weights_on or d in shape.layers_on]
    if not devices:
        return None
    for tokens in candidates:
        if all(shape.weights_on.get(d, 0) + scoring_peak_bytes(shape, tokens, d) <= budgets[d] for d in devices):
            return tokens, True
    return candidates[-1], False
