"""The memory and transfer rules of `--plan`: what a step's work units (opt66b/cost.py) hold on each device
of a placement, without running anything and without any weights.

Each step enumerates its work units with its own code (its batching, chunking and splitting): the same
units the run assigns to its processes and executes; `StepPlan.add_unit` folds them in (the FLOPs by the
rule of opt66b/cost.py, one rule for the run and the plan). The model is never built, so an official size
name (`--random-weights opt-66b`) plans as well as a checkpoint directory (only its config.json is read).

Activations, per pass of B rows x T new positions over S key positions, in a layer:

    B T (6 D + F) bytes of one layer's working set (opt66b/placement.py's reserve rule)
  + B H T S x 4            one fp32 attention-score block, in passes that capture attention
                           (the scorer's passes use fused attention, which does not keep it)
  + 2 K D bytes per layer on the device for K row-positions of cached keys and values: a context
                           batch's cache, and a continuation batch's copy of its rows' cache held beside
                           it (tasks/batching.py bounds it by --batch-tokens)
  + 2 N V x 4 on the head device (fp32 logits and log-softmax)
  backward: the working set and score block of every layer on the device are kept, plus one more for
            the gradients of the layer being differentiated, and 3 N V x 4 on the head device (the
            log-softmax kept, its gradient and the logits'); the layer-wise backward (streamed layers,
            opt66b.offload.layerwise_backward) keeps one B T D input per layer and one layer's working set
            and its gradients
  layer order (opt66b/layer_major.py; --offload): one layer's keys and values at a time, and the chunk's
            states (copies of its B T D stream) held beside every pass
  + CPU_RUNTIME_BYTES on "cpu" when layers compute there (the math library's scratch and the heap's slack,
    a measured constant; see its comment)

time = FLOPs / throughput; throughput measured by a timed layer-shaped matmul on the compute device
(study/machine.calibrate_tflops), or given as --throughput TFLOPS. Layers placed on several devices run one
after another, so one device's throughput is the rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opt66b.cost import FlopRule, Run, WorkUnit

# A step that computes on the CPU holds, beside its activations, the math library's scratch during its
# matmuls (MKL's per-thread packing buffers) and the heap's slack between freed tensors: measured as the
# memory of a 1-document step beyond its activations (tests/benchmarks/bench_plan_memory.py --limits 1:
# 13 to 17 MiB for eval and head importance on opt-125m, 2 threads, torch 2.13). Not derived: measured.
CPU_RUNTIME_BYTES = 16 << 20
# Work units whose FLOPs grow linearly with a task's evaluation documents (key = (kind, task, ...)): its
# evaluation, the FFN oracle's knock-outs and every sweep cell; head importance runs on its own examples.
DOC_SCALED = ("eval", "oracle", "prune")

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
    processes: int = 1  # torchrun processes on the node, each with this placement (sharing its host memory)

    def __post_init__(self) -> None:
        self.compute = self.compute or self.head
        self.rule = FlopRule(self.cfg)
        self.ffn_params = self.rule.ffn_params
        # suffix sums: a pass from start_layer brings the streamed layers start_layer..L-1
        self._streamed = [sum(b for i, b in self.streamed.items() if i >= start) for start in range(self.cfg.num_layers + 1)]


@dataclass
class StepPlan:
    """Accumulated cost of one step: `add_unit` each of its work units (opt66b.cost.WorkUnit).

    The passes are kept as what their memory depends on (tokens, score block, cached keys, scored
    positions, layers run, kind of backward), not as bytes on a device: the same step can then be
    priced under another placement without enumerating its units again (study/study.fit_reserve)."""

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
    # 0 forward, 1 backward (every layer's activations), 2 layer-wise backward, 3 forward in layer order
    # (opt66b/layer_major.py: one layer's keys and values held at a time)
    passes: dict[tuple[int, int, int, int, int], int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)  # device -> activation bytes outside a pass rule
    held: dict[str, int] = field(default_factory=dict)  # device -> bytes held beside every pass (layer-order states)
    passes_from: dict[int, int] = field(default_factory=dict)  # start layer -> passes (streamed bytes)
    layer_order_chunks: int = 0  # layer sweeps of layer-order chunks: the streamed weights cross once per sweep
    unit_flops: list[float] = field(default_factory=list)  # per work unit, in the step's order (the split)
    doc_flops: dict[str, float] = field(default_factory=dict)  # task -> FLOPs that grow with its evaluation docs

    def add_unit(self, unit: WorkUnit) -> None:
        """A work unit: its runs' passes, FLOPs and memory, and what it holds beside them."""
        for run in unit.runs:
            self._add_run(run)
        self.unit_flops.append(unit.flops(self.shape.rule))
        if unit.key[0] in DOC_SCALED and len(unit.key) > 1:
            self.doc_flops[unit.key[1]] = self.doc_flops.get(unit.key[1], 0.0) + self.unit_flops[-1]
        self.host_bytes = max(self.host_bytes, unit.host)
        if unit.held:
            self.held[self.shape.compute] = max(self.held.get(self.shape.compute, 0), unit.held)
        if unit.extra:
            self.extra[self.shape.head] = max(self.extra.get(self.shape.head, 0), unit.extra)
        self.layer_order_chunks += unit.sweeps

    def _add_run(self, run: Run) -> None:
        cfg, p, times = self.shape.cfg, run.passes, run.times
        kind = {"": 3 if run.layer_order else 0, "full": 1, "layerwise": 2}[run.backward]
        self.forward += times * p.count
        self.backward += times * p.count if run.backward else 0
        self.tokens += times * p.real
        self.padded_tokens += times * p.padded
        self.logit_positions += times * p.logits
        if not run.layer_order:  # a layer-order chunk's transfers are its sweeps (WorkUnit.sweeps)
            self.passes_from[run.start_layer] = (self.passes_from.get(run.start_layer, 0)
                                                 + times * p.count * (2 if kind == 2 else 1))
        for unit in p.units:
            for rows, new, keys, _, logits, kv in unit:
                key = (rows * new, rows * cfg.num_heads * new * keys * 4 if run.scores else 0, kv, logits, kind)
                # a pass running fewer layers needs no more on any device: keep the most layers per shape
                self.passes[key] = max(self.passes.get(key, 0), cfg.num_layers - run.start_layer)

    @property
    def flops(self) -> float:
        return sum(self.unit_flops)

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
    from tasks.batching import KV_BUDGET_FACTOR

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


def flops_text(x: float) -> str:
    """450E, 8.04T, ...: a count with its SI prefix, three digits."""
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def duration_text(seconds: float | None) -> str:
    """'36h04m', '7m05s', '2.2s'; '?' without a time."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.2g}s"
    h, rest = divmod(round(seconds), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"
