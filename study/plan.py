"""`--plan`: what a step (or `run.py all`) costs, printed without running it and without any weights.

Every model pass a step makes is enumerated with the step's own planning code, on a config-only
stand-in for the model: evaluation batches come from tasks.scoring.Scorer (length-sorted batches
under --batch-tokens, contexts shared through the KV cache), importance examples from
Task.importance_examples + token_requests, induction sequences from induction.sequences, sweep
evaluations from prune.sweeps.sweep_units (identical masks evaluated once, as the sweep does).
Tokenizing is cheap; the model is never built, so an official size name (`--random-weights
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
           backward: the working set and score block of every layer on the device are kept; with
                     streamed layers (--offload) importance takes opt66b.offload.layerwise_backward,
                     which keeps one B T D input per layer and one layer's working set
    time = FLOPs / throughput; throughput measured by a timed layer-shaped matmul on the compute
           device (calibrate_tflops), or given as --throughput TFLOPS. Layers placed on several
           devices run one after another, so one device's throughput is the rate.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

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

    def __post_init__(self) -> None:
        cfg = self.cfg
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
    """Accumulated cost of one step; `add` one model pass (or `times` identical ones) at a time."""

    label: str
    shape: Shape
    command: str = ""
    forward: int = 0
    backward: int = 0
    tokens: int = 0  # real (non-pad) tokens fed to the model
    padded_tokens: int = 0  # B x T actually computed
    logit_positions: int = 0
    flops: float = 0.0
    activations: dict[str, int] = field(default_factory=dict)  # device -> peak activation bytes
    host_bytes: int = 0  # host memory beyond the weights (recorded layer inputs)
    streamed_bytes: int = 0  # weights copied from host memory or disk to the compute device (--offload)
    notes: list[str] = field(default_factory=list)

    def add(self, rows: int, new: int, keys: int | None = None, real: int | None = None, start_layer: int = 0,
            ffn_skipped: float = 0, logit_rows: int = 0, backward: bool = False, kv_rows: int = 0,
            layerwise: bool = False,
            scores: bool = True, times: int = 1) -> None:
        """One pass of `rows` x `new` positions over `keys` key positions from `start_layer` on.
        ffn_skipped: weight-matrix parameters of the FFNs masked to 0 (skipped by the model);
        kv_rows: rows x positions of keys and values held per layer during the pass (KV caches);
        scores: the pass materializes its attention scores (captured passes; fused attention does not)."""
        cfg, s = self.shape.cfg, self.shape
        keys = new if keys is None else keys
        layers = cfg.num_layers - start_layer
        bt = rows * new
        forward = (2 * bt * (s.matrix_params(start_layer) - ffn_skipped)
                   + 4 * bt * keys * s.attention_width(start_layer)
                   + 2 * logit_rows * cfg.word_embed_proj_dim * cfg.vocab_size)
        # backward = 2 forwards; the layer-wise one recomputes each layer's forward once more
        self.flops += times * forward * ((4 if (s.streamed or layerwise) else 3) if backward else 1)
        self.forward += times
        self.backward += times if backward else 0
        self.tokens += times * (bt if real is None else real)
        self.padded_tokens += times * bt
        self.logit_positions += times * logit_rows
        self.streamed_bytes += times * s._streamed[start_layer]
        working = layer_working_bytes(s, bt)
        if scores:
            working += rows * cfg.num_heads * new * keys * 4
        run_share = layers / cfg.num_layers  # a pass from start_layer runs the last `layers` layers
        for dev in dict.fromkeys([*s.layers_on, s.head]):
            on_dev = round(s.layers_on.get(dev, 0) * run_share)
            if not on_dev:
                need = 0
            elif backward and (s.streamed or layerwise):  # layer-wise backward: every layer's input, one graph
                need = working + bt * cfg.hidden_size * s.dtype_bytes * on_dev
            else:
                need = working * (on_dev if backward else 1)
            need += kv_bytes(s, kv_rows) * on_dev
            if dev == s.head:
                need += 2 * logit_rows * cfg.vocab_size * 4  # fp32 logits and their log-softmax
            self.activations[dev] = max(self.activations.get(dev, 0), need)

    def add_flops(self, flops: float) -> None:
        """Work done outside a model pass (the paper's copying score runs layer pieces by hand)."""
        self.flops += flops

    def peak(self) -> dict[str, int]:
        devices = dict.fromkeys([*self.shape.weights_on, *self.activations])
        return {d: self.shape.weights_on.get(d, 0) + self.activations.get(d, 0) for d in devices}


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

    cfg = shape.cfg
    layers = shape.layers_on.get(device, 0)
    need = layer_working_bytes(shape, batch_tokens) if layers else 0
    need += kv_bytes(shape, (1 + KV_BUDGET_FACTOR) * batch_tokens) * layers
    if device == shape.head:
        need += 2 * batch_tokens * cfg.vocab_size * 4
    return need


def full_backward_fits(shape: Shape, budgets: dict[str, float], tokens: int) -> bool:
    """Whether head importance's ordinary backward of a `tokens`-long example (every layer's working set
    kept, StepPlan.add's rule) fits beside the weights on every budgeted device."""
    cfg = shape.cfg
    # one layer's working set and its fp32 attention-score block (the backward keeps both, StepPlan.add)
    working = layer_working_bytes(shape, tokens) + cfg.num_heads * tokens * tokens * 4
    for d, budget in budgets.items():
        need = working * shape.layers_on.get(d, 0) + (2 * tokens * cfg.vocab_size * 4 if d == shape.head else 0)
        if shape.weights_on.get(d, 0) + need > budget:
            return False
    return True


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


# -- planners: one per step, each mirroring the step's own loop -----------------------------------------
def _scorer_passes(step: StepPlan, scorer: Any, start_layer: int = 0, ffn_skipped: float = 0,
                   times: int = 1) -> None:
    """Every pass of a tasks.scoring.Scorer plan: context batches (keeping their KV cache when they
    carry continuations) and the continuation batches, each on its rows' copy of that cache plus
    its own new keys, while the context batch's cache is still held."""
    for unit in scorer.units:
        context_rows, context_len = unit.main.ids.shape
        context_kv = context_rows * context_len if unit.conts else 0
        for p in (unit.main, *unit.conts):
            rows, new = p.ids.shape
            keys = p.mask.shape[1]
            kv = context_kv + (rows * keys if p is not unit.main else 0)
            step.add(rows, new, keys=keys, real=int(p.mask[:, -new:].sum()), start_layer=start_layer,
                     ffn_skipped=ffn_skipped, logit_rows=int(p.targets.numel()), kv_rows=kv, scores=False,
                     times=times)


_EVALUATIONS: dict[tuple, Any] = {}  # within one plan (cleared by `reset`), steps share evaluation plans
# Full evaluations already planned, by (evaluation, head mask id, FFN mask id): `run.py all` shares a
# tasks.evaluate.EvaluationCache between its steps, so a cell planned once is not planned again.
_RUNS: set[tuple] = set()


def reset(keep_evaluations: bool = False) -> None:
    """Start a plan. keep_evaluations: reuse the tokenised evaluation plans of the previous one (they
    depend on the data and the batch budget, not on the placement; `all` re-plans under other maps)."""
    if not keep_evaluations:
        _EVALUATIONS.clear()
    _RUNS.clear()


def _evaluation_key(args: argparse.Namespace, shape: Shape, task: Any, shots: int) -> tuple:
    """As TaskEvaluation.identity: no --max-length means the model's positions (eval states it, sweeps do not)."""
    return (task.NAME, str(args.data), task.paper_quirks, shots, args.limit, args.seed, args.batch_tokens,
            getattr(args, "max_length", None) or shape.cfg.max_positions)


def _mask_id(kind: str, source: str | None, count: int | None) -> tuple | None:
    """What fixes a sweep's mask before its ranking is read: None for no mask and for a mask of ones
    (count 0, whatever the ranking; the same evaluation, see tasks.evaluate.EvaluationCache), else
    `count` units masked by the ranking of `source`. Two rankings that happen to mask the same units
    are one evaluation at run time, but two here: the plan is an upper bound there."""
    return None if not count else (kind, source, count)


def _plan_run(step: StepPlan, args: argparse.Namespace, tokenizer: Any, task: Any, shots: int,
              head_id: tuple | None = None, ffn_id: tuple | None = None, ffn_skipped: float = 0) -> None:
    """One full evaluation under masks, unless an earlier step of this plan already runs it."""
    key = (_evaluation_key(args, step.shape, task, shots), head_id, ffn_id)
    if key not in _RUNS:
        _RUNS.add(key)
        _scorer_passes(step, _evaluation(args, step.shape, tokenizer, task, shots).scorer, ffn_skipped=ffn_skipped)


def _evaluation(args: argparse.Namespace, shape: Shape, tokenizer: Any, task: Any, shots: int) -> Any:
    from tasks.evaluate import TaskEvaluation

    key = _evaluation_key(args, shape, task, shots)
    if key not in _EVALUATIONS:
        stand_in = SimpleNamespace(config=shape.cfg)  # the Scorer reads the config only
        _EVALUATIONS[key] = TaskEvaluation(stand_in, tokenizer, task, shots, limit=args.limit, seed=args.seed,
                                           batch_tokens=args.batch_tokens, max_length=getattr(args, "max_length", None))
    return _EVALUATIONS[key]


def _tasks(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.registry import check_task_args, get_task

    check_task_args(args.tasks, args.shots, getattr(args, "limit", None))
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data}: data directory not found")
    return {t: get_task(t, args.data, paper_quirks=args.paper_quirks) for t in dict.fromkeys(args.tasks)}


def plan_eval(step: StepPlan, args: argparse.Namespace, tokenizer: Any) -> None:
    """Every evaluation runs (the per-request log-likelihoods are written); later sweeps reuse them."""
    tasks = _tasks(args)
    masks = (_mask_id("head file", str(args.head_mask), -1) if args.head_mask else None,
             _mask_id("ffn file", str(args.ffn_mask), -1) if args.ffn_mask else None)
    for shots in args.shots:
        for task in tasks.values():
            _RUNS.add((_evaluation_key(args, step.shape, task, shots), *masks))
            _scorer_passes(step, _evaluation(args, step.shape, tokenizer, task, shots).scorer)


def plan_head_importance(step: StepPlan, args: argparse.Namespace, tokenizer: Any) -> None:
    from tasks.scoring import token_requests

    max_length = args.max_length or step.shape.cfg.max_positions
    for name, task in _tasks(args).items():
        for k in args.shots:
            examples = task.importance_examples(args.n_docs, k, random.Random(args.seed), paper_quirks=args.paper_quirks)
            for t in token_requests(tokenizer, examples, max_length):
                step.add(1, len(t.input_ids), logit_rows=len(t.continuation), backward=True,
                         layerwise=getattr(args, "backward", "auto") == "layerwise")
    if getattr(args, "backward", "auto") == "layerwise":
        step.notes.append("layer-wise backward (--backward layerwise): every layer's input kept, one layer's graph")
    elif not step.shape.streamed:
        step.notes.append("the backward keeps every layer's activations; with --offload (streamed layers) it is "
                          "layer-wise and keeps one input per layer")


def plan_ffn_importance(step: StepPlan, args: argparse.Namespace, tokenizer: Any) -> None:
    from prune.cli import oracle_budget

    cfg = step.shape.cfg
    budget = oracle_budget(args)
    for name, task in _tasks(args).items():
        for k in args.shots:
            scorer = _evaluation(args, step.shape, tokenizer, task, k).scorer
            _scorer_passes(step, scorer)  # the base run, recording every layer's input
            for layer in range(cfg.num_layers):  # FFN `layer` knocked out: layers >= layer rerun
                _scorer_passes(step, scorer, start_layer=0 if args.naive else layer,
                               ffn_skipped=step.shape.ffn_params[layer])
            if not args.naive:  # one chunk of scoring batches recorded at a time (prune/sweeps.py)
                per_unit = [sum(int(p.ids.numel()) for p in (u.main, *u.conts)) for u in scorer.units]
                unit_bytes = max(per_unit, default=0) * cfg.hidden_size * step.shape.dtype_bytes * cfg.num_layers
                size = max(1, min(len(per_unit), budget // max(unit_bytes, 1)))
                chunk = sum(sorted(per_unit, reverse=True)[:size]) * cfg.hidden_size * step.shape.dtype_bytes * cfg.num_layers
                step.host_bytes = max(step.host_bytes, min(chunk, scorer.stats["tokens_padded"] * cfg.hidden_size
                                                           * step.shape.dtype_bytes * cfg.num_layers))
    if not args.naive:
        step.notes.append(f"the knock-outs run in chunks whose recorded layer inputs stay within "
                          f"{budget / (1 << 30):.3g} GiB of host memory (--oracle-memory)")


def plan_prune(step: StepPlan, args: argparse.Namespace, tokenizer: Any) -> None:
    from prune.masks import count_for_percent
    from prune.sweeps import DEFAULT_PERCENTS, sweep_units

    from prune.sweeps import ranking_name

    cfg = step.shape.cfg
    heads_total = cfg.num_layers * cfg.num_heads
    if args.sweep == "transfer":  # partners are read from correlations.json at run time: plan the upper bound
        from prune.aggregate import PAPER_SEEN_TASKS
        from prune.transfer import DEFAULT_PERCENTS as TRANSFER_PERCENTS
        from prune.transfer import choose_tasks

        tasks = _tasks(args)
        available = [t for t in tasks if t in PAPER_SEEN_TASKS]  # the seen tasks that will have importance
        for name in [c["task"] for c in choose_tasks(available, args.transfer_tasks)]:  # with substitutes
            for k in args.shots:
                for partner in range(min(4, len(available) - 1)):  # 2 per statistic, sharing one cache
                    for p in args.head_percents or TRANSFER_PERCENTS:
                        count = count_for_percent(p, heads_total) if p else None
                        _plan_run(step, args, tokenizer, tasks[name], k, _mask_id("heads", f"partner {partner}", count))
        step.notes.append("transfer: at most 4 partner rankings per chosen task; correlations.json says how many")
        return
    grid = args.sweep == "grid"
    hp = args.head_percents if args.head_percents is not None else DEFAULT_PERCENTS["grid_heads" if grid else "heads"]
    fp = args.ffn_percents if args.ffn_percents is not None else DEFAULT_PERCENTS["grid_ffn" if grid else "ffn"]
    tasks = _tasks(args)
    present = [p for p in step.shape.ffn_params if p]
    mean_ffn = sum(present) / max(len(present), 1)  # which FFNs a ranking masks is known only at run time
    for unit in sweep_units(args.sweep, list(tasks), args.shots, hp, fp):
        # run_sweep evaluates identical masks once: a 0% mask is no mask, two percentages with the same
        # floor(p * N / 100) give the same mask, and cells of earlier steps are not run again.
        source = ranking_name(args.ranking, unit.task)
        heads = None if not unit.head_percent else count_for_percent(unit.head_percent, heads_total)
        ffns = None if not unit.ffn_percent else count_for_percent(unit.ffn_percent, cfg.num_layers)
        _plan_run(step, args, tokenizer, tasks[unit.task], unit.shots, _mask_id("heads", source, heads),
                  _mask_id("ffn", source, ffns), ffn_skipped=(ffns or 0) * mean_ffn)


def plan_induction(step: StepPlan, args: argparse.Namespace, tokenizer: Any) -> None:
    from induction.sequences import REPEATS, base_length

    cfg = step.shape.cfg
    d, heads = cfg.hidden_size, cfg.num_heads
    from induction.cli import selected_variants

    variants = selected_variants(args.kind, args.variant)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t = REPEATS * base_length(seed, args.start_length, args.length_step) + 1
        if args.induction_command == "prefix":
            step.add(1, t)  # one forward for every variant
            step.activations[step.shape.head] = max(step.activations.get(step.shape.head, 0), heads * t * t * 4)
            continue
        per_layer_readout = 2 * t * d * d + 2 * t * t * d  # unembedded ids through W_O, then (T, T) per head
        if "residual" in variants:
            step.add(1, t)
            step.add_flops(cfg.num_layers * per_layer_readout)
        for _ in {"paper", "index_fix", "text"} & set(variants):  # no model pass: q, k, v of the embedding-level input
            step.add_flops(cfg.num_layers * (2 * t * 3 * d * d + 2 * t * t * d + per_layer_readout))
    if args.induction_command == "copying" and "paper" in variants:
        step.notes.append("the paper's copying variant runs layer pieces, not passes: counted in FLOPs only")


def plan_copytask(step: StepPlan, args: argparse.Namespace, tokenizer: Any) -> None:
    """study/copy_task.pruning_experiment: prefix matching per seed, prune.importance's forward +
    backward per row (2L tokens fed, the second repeat's L-1 targets), then four accuracy passes on the
    (seeds, 1 + 2L) batch (full, induction heads pruned, two controls)."""
    for s in range(args.seed, args.seed + args.seeds):
        step.add(1, 1 + 4 * (args.length + 2 * s))
    rows, t = args.seeds, 1 + 2 * args.length
    step.add(1, 2 * args.length, logit_rows=args.length - 1, backward=True, times=rows)
    step.add(rows, t, logit_rows=rows * (args.length - 1), times=4)


PLANNERS: dict[str, Callable[[StepPlan, argparse.Namespace, Any], None]] = {
    "eval": plan_eval, "importance heads": plan_head_importance, "importance ffn": plan_ffn_importance,
    "prune": plan_prune, "induction prefix": plan_induction, "induction copying": plan_induction,
    "copytask": plan_copytask,
}
