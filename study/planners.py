"""The planners of `--plan`: one per step, each mirroring the step's own loop on a config-only stand-in
for the model (study/plan.py holds the cost rules they feed).

Evaluations are the bulk of a plan: tokenising every request of the full data and batching it as
tasks.scoring.Scorer does takes minutes. Each evaluation's passes (a PassGroup) are therefore kept on
disk, in OPT66B_CACHE_DIR/plans/, under a key made of everything that fixes them: the task's name,
VERSION and data files by content, the prompt variant, shots, limit, seed, batch budget, maximum
length, the tokenizer files by content and the source of the tasks package. A second plan of the same
data (or the plan `run.py all` makes before it runs) reads them back in well under a second; any
change to one of those inputs makes a new key, never a stale answer.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from .plan import PassGroup, StepPlan, Shape

PLAN_CACHE_FORMAT = 1  # bump when PassGroup's layout changes


def _scorer_group(scorer: Any) -> PassGroup:
    """Every pass of a tasks.scoring.Scorer plan: context batches (keeping their KV cache when they
    carry continuations) and the continuation batches, each on its rows' copy of that cache plus
    its own new keys, while the context batch's cache is still held."""
    units = []
    for unit in scorer.units:
        context_rows, context_len = unit.main.ids.shape
        context_kv = context_rows * context_len if unit.conts else 0
        passes = []
        for p in (unit.main, *unit.conts):
            rows, new = p.ids.shape  # (rows, new positions)
            keys = p.mask.shape[1]  # cached past + new positions
            kv = context_kv + (rows * keys if p is not unit.main else 0)
            passes.append([rows, new, keys, int(p.mask[:, -new:].sum()), int(p.targets.numel()), kv])
        units.append(passes)
    return PassGroup(units)


_EVALUATIONS: dict[tuple, PassGroup] = {}  # within one plan (cleared by `reset`), steps share evaluation plans
# Full evaluations already planned, by (evaluation, head mask id, FFN mask id): `run.py all` shares a
# tasks.evaluation.EvaluationCache between its steps, so a cell planned once is not planned again.
_RUNS: set[tuple] = set()
_SOURCE: list[str] = []  # sha256 of the tasks package's source, computed once per process


def reset(keep_evaluations: bool = False) -> None:
    """Start a plan. keep_evaluations: reuse the evaluation plans of the previous one (they depend on
    the data and the batch budget, not on the placement)."""
    if not keep_evaluations:
        _EVALUATIONS.clear()
    _RUNS.clear()


def _evaluation_key(args: Any, shape: Shape, task: Any, shots: int) -> tuple:
    """As TaskEvaluation.identity: no --max-length means the model's positions (eval states it, sweeps do not)."""
    return (task.NAME, str(args.data), task.paper_quirks, shots, args.limit, args.seed, args.batch_tokens,
            getattr(args, "max_length", None) or shape.cfg.max_positions)


def _mask_id(kind: str, source: str | None, count: int | None) -> tuple | None:
    """What fixes a sweep's mask before its ranking is read: None for no mask and for a mask of ones
    (count 0, whatever the ranking; the same evaluation, see tasks.evaluation.EvaluationCache), else
    `count` units masked by the ranking of `source`. Two rankings that happen to mask the same units
    are one evaluation at run time, but two here: the plan is an upper bound there."""
    return None if not count else (kind, source, count)


def _plan_run(step: StepPlan, args: Any, tokenizer: Any, task: Any, shots: int,
              head_id: tuple | None = None, ffn_id: tuple | None = None, ffn_skipped: float = 0,
              together: dict[tuple, tuple[PassGroup, list[float]]] | None = None, group_id: Any = None) -> None:
    """One full evaluation under masks, unless an earlier step of this plan already runs it. together
    (layers stream): collect it under (task, shots, group_id) instead, for _plan_together."""
    evaluation = _evaluation_key(args, step.shape, task, shots)
    key = (evaluation, head_id, ffn_id)
    if key in _RUNS:
        return
    _RUNS.add(key)
    group = _evaluation(args, step.shape, tokenizer, task, shots)
    if together is None:
        step.add_group(group, ffn_skipped=ffn_skipped)
        return
    runs = together.setdefault((evaluation, group_id), (group, []))[1]
    if head_id is not None or ffn_id is not None:  # the unmasked evaluation is every group's base run
        runs.append(ffn_skipped)


def _plan_together(step: StepPlan, args: Any, together: dict[tuple, tuple[PassGroup, list[float]]]
                   ) -> None:
    """prune/chunks.evaluate_together: per (task, shot) of a sweep, the unmasked run and every new masked
    run in layer order, chunk by chunk (each streamed layer fetched once per chunk), their live states
    on the compute device."""
    budget = args.chunk_budget(step.shape.compute)
    for (evaluation, _), (group, runs) in together.items():
        _RUNS.add((evaluation, None, None))  # its base run is in the evaluation cache from now on
        for skipped in [0.0, *runs]:
            step.add_group(group, ffn_skipped=skipped, layer_order=True)
        _plan_chunks(step, group, 1 + len(runs), budget, layer_order=True)
    if together:
        step.notes.append(f"layers stream: each (task, shot)'s runs go together in layer order, chunks whose live "
                          f"states stay within {budget / (1 << 30):.3g} GiB on {step.shape.compute}")


def _plan_chunks(step: StepPlan, group: PassGroup, copies: int, budget: int, layer_order: bool) -> None:
    """The memory and the weight transfers of one evaluation run `copies`-fold in chunks (prune/chunks.py's
    rule): the chunk's states on the compute device in layer order, its records on the host in batch order."""
    from opt66b.layer_major import chunk_state_bytes, chunk_units

    cfg = step.shape.cfg
    size = chunk_units(group.unit_tokens, budget, copies, cfg.hidden_size, step.shape.dtype_bytes)
    chunk = chunk_state_bytes(sum(sorted(group.unit_tokens, reverse=True)[:size]), copies, cfg.hidden_size,
                              step.shape.dtype_bytes)
    if layer_order:
        step.held[step.shape.compute] = max(step.held.get(step.shape.compute, 0), chunk)
        step.layer_order_chunks += -(-len(group.unit_tokens) // size)
    else:
        step.host_bytes = max(step.host_bytes, chunk)


def _cached(what: str, identity: list[Any], tokenizer: Any, task: Any, compute: Callable[[], Any]) -> Any:
    """compute(), a JSON-able value, kept in OPT66B_CACHE_DIR/plans/ under everything that fixes it
    (module docstring): `identity` (the step's settings) plus the task's name, VERSION and data by
    content, the tokenizer files by content and the tasks package's source. A tokenizer built in
    memory (no files) is never cached; a damaged entry is recomputed, never trusted; a cache that
    cannot be written costs the next plan its time, nothing else."""
    from opt66b.runs.identity import cache_dir, tokenizer_identity
    from opt66b.fileio import atomic_write_text
    from tasks.evaluation import task_fingerprint
    from tasks.scoring import KV_BUDGET_FACTOR

    if getattr(tokenizer, "merges_path", None) is None:
        return compute()
    if not _SOURCE:
        package = Path(__file__).resolve().parent.parent / "tasks"
        _SOURCE.append(hashlib.sha256(b"".join(p.read_bytes() for p in sorted(package.glob("*.py")))).hexdigest())
    full = [PLAN_CACHE_FORMAT, what, *identity, task_fingerprint(task), task.paper_quirks,
            tokenizer_identity(Path(tokenizer.merges_path).parent), KV_BUDGET_FACTOR, _SOURCE[0]]
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
    path = cache_dir() / "plans" / f"{task.NAME}-{what}-{digest[:32]}.json"
    try:
        return json.loads(path.read_text())["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    print(f"[plan] {task.NAME} {' '.join(what.rsplit('-', 1))}: tokenising its requests (kept in {path.parent} "
          "for the next plan)", file=sys.stderr, flush=True)
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"value": value}, separators=(",", ":")))
    except (OSError, ValueError):
        pass
    return value


def _evaluation(args: Any, shape: Shape, tokenizer: Any, task: Any, shots: int) -> PassGroup:
    """The passes of one evaluation (Scorer's batching of every request), from the cache when it has them."""
    from tasks.evaluation import TaskEvaluation

    key = _evaluation_key(args, shape, task, shots)
    if key not in _EVALUATIONS:
        def passes() -> list:
            stand_in = SimpleNamespace(config=shape.cfg)  # the Scorer reads the config only
            evaluation = TaskEvaluation(stand_in, tokenizer, task, shots, limit=args.limit, seed=args.seed,
                                        batch_tokens=args.batch_tokens, max_length=getattr(args, "max_length", None))
            return _scorer_group(evaluation.scorer).units

        identity = [shots, args.limit, args.seed, args.batch_tokens, key[-1], shape.cfg.max_positions]
        _EVALUATIONS[key] = PassGroup(_cached(f"{shots}-shot-evaluation", identity, tokenizer, task, passes))
    return _EVALUATIONS[key]


def _tasks(args: Any) -> dict[str, Any]:
    args.check_tasks(getattr(args, "limit", None))
    return args.task_objects()


def plan_eval(step: StepPlan, args: Any, tokenizer: Any) -> None:
    """Every evaluation runs (the per-request log-likelihoods are written); later sweeps reuse them."""
    tasks = _tasks(args)
    masks = (_mask_id("head file", str(args.head_mask), -1) if args.head_mask else None,
             _mask_id("ffn file", str(args.ffn_mask), -1) if args.ffn_mask else None)
    layer_order = bool(step.shape.streamed)  # Scorer.run goes in layer order, one copy of a chunk's states
    for shots in args.shots:
        for task in tasks.values():
            _RUNS.add((_evaluation_key(args, step.shape, task, shots), *masks))
            group = _evaluation(args, step.shape, tokenizer, task, shots)
            step.add_group(group, layer_order=layer_order)
            if layer_order:
                _plan_chunks(step, group, 1, args.chunk_budget(step.shape.compute), layer_order=True)
    if layer_order:
        step.notes.append(f"layers stream: each evaluation runs in layer order, chunks whose states stay within "
                          f"{args.chunk_budget(step.shape.compute) / (1 << 30):.3g} GiB on {step.shape.compute}")


def plan_head_importance(step: StepPlan, args: Any, tokenizer: Any) -> None:
    """One forward and backward per example; with streamed layers the layer-wise backward takes the
    examples in chunks (prune/importance.example_chunks): the chunk's every-layer inputs and gradients
    on the compute device, each streamed layer crossing twice per chunk (forward and reverse sweep)."""
    from opt66b.layer_major import chunk_state_bytes, chunk_units
    from tasks.scoring import token_requests

    cfg, shape = step.shape.cfg, step.shape
    chunked = bool(shape.streamed)
    budget = args.chunk_budget(shape.compute)
    max_length = args.max_length or cfg.max_positions
    for name, task in _tasks(args).items():
        for k in args.shots:
            def lengths() -> list[list[int]]:  # (tokens fed, scored positions) per example
                examples = task.importance_examples(args.n_docs, k, random.Random(args.seed),
                                                    paper_quirks=args.protocol.paper_quirks)
                return [[len(t.input_ids), len(t.continuation)] for t in token_requests(tokenizer, examples, max_length)]

            identity = [k, args.n_docs, args.seed, max_length, cfg.max_positions]
            examples = _cached(f"{k}-shot-importance", identity, tokenizer, task, lengths)
            for fed, scored in examples:
                step.add(1, fed, logit_rows=scored, backward=True, layer_order=chunked,
                         layerwise=getattr(args, "backward", "auto") == "layerwise")
            if chunked and examples:
                fed = [f for f, _ in examples]
                size = chunk_units(fed, budget, cfg.num_layers + 1, cfg.hidden_size, shape.dtype_bytes)
                step.layer_order_chunks += 2 * -(-len(fed) // size)  # a forward and a reverse sweep per chunk
                # beside the pass rule's own example (its inputs of every layer): the chunk's others, and every gradient
                chunk = chunk_state_bytes(sum(sorted(fed, reverse=True)[:size]), cfg.num_layers + 1, cfg.hidden_size,
                                          shape.dtype_bytes)
                own = chunk_state_bytes(max(fed), cfg.num_layers, cfg.hidden_size, shape.dtype_bytes)
                step.held[shape.compute] = max(step.held.get(shape.compute, 0), chunk - own)
    if chunked:
        step.notes.append(f"layers stream: the layer-wise backward takes the examples in chunks whose inputs stay "
                          f"within {budget / (1 << 30):.3g} GiB on {shape.compute}; each streamed layer crosses "
                          "twice per chunk")
    elif getattr(args, "backward", "auto") == "layerwise":
        step.notes.append("layer-wise backward (--backward layerwise): every layer's input kept, one layer's graph")
    else:
        step.notes.append("the backward keeps every layer's activations; with --offload (streamed layers) it is "
                          "layer-wise and keeps one input per layer")


def plan_ffn_importance(step: StepPlan, args: Any, tokenizer: Any) -> None:
    """The base run and one knock-out per layer, each resuming at its layer, in chunks of scoring batches
    (prune/sweeps.py): in batch order the chunk's recorded layer inputs (L streams) sit on the host; with
    streamed layers the chunk runs in layer order, its L + 1 live streams on the compute device, and the
    streamed weights cross once per chunk."""
    cfg = step.shape.cfg
    layer_order = bool(step.shape.streamed) and not args.naive
    budget = args.chunk_budget(step.shape.compute if layer_order else None)
    copies = cfg.num_layers + 1 if layer_order else cfg.num_layers
    for name, task in _tasks(args).items():
        for k in args.shots:
            group = _evaluation(args, step.shape, tokenizer, task, k)
            step.add_group(group, layer_order=layer_order)  # the base run, recording every layer's input
            for layer in range(cfg.num_layers):  # FFN `layer` knocked out: layers >= layer rerun
                step.add_group(group, start_layer=0 if args.naive else layer, ffn_skipped=step.shape.ffn_params[layer],
                               layer_order=layer_order)
            if not args.naive:
                _plan_chunks(step, group, copies, budget, layer_order)
    if layer_order:
        step.notes.append(f"the knock-outs run in layer order, chunks whose live states stay within "
                          f"{budget / (1 << 30):.3g} GiB on {step.shape.compute} (--oracle-memory); the streamed "
                          "weights cross once per chunk")
    elif not args.naive:
        step.notes.append(f"the knock-outs run in chunks whose recorded layer inputs stay within "
                          f"{budget / (1 << 30):.3g} GiB of host memory (--oracle-memory)")


def plan_prune(step: StepPlan, args: Any, tokenizer: Any) -> None:
    from prune.masks import count_for_percent
    from prune.sweeps import sweep_units

    from prune.sweeps import ranking_name

    cfg = step.shape.cfg
    heads_total = cfg.num_layers * cfg.num_heads
    together: dict[tuple, tuple[PassGroup, list[float]]] | None = {} if step.shape.streamed else None
    hp, fp = args.percents()
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
                  _mask_id("ffn", source, ffns), ffn_skipped=(ffns or 0) * mean_ffn, together=together)
    _plan_together(step, args, together or {})


def plan_transfer(step: StepPlan, args: Any, tokenizer: Any) -> None:
    """prune/transfer.py: partners are read from correlations.json at run time, so the plan prices the upper
    bound: 2 partners per statistic (at most 4 rankings) per chosen task and shot, sharing one cache."""
    from prune.masks import count_for_percent

    cfg = step.shape.cfg
    heads_total = cfg.num_layers * cfg.num_heads
    together: dict[tuple, tuple[PassGroup, list[float]]] | None = {} if step.shape.streamed else None
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
                    _plan_run(step, args, tokenizer, tasks[name], k, _mask_id("heads", f"partner {partner}", count),
                              together=together, group_id=partner)  # one run_sweep per partner
    step.notes.append("transfer: at most 4 partner rankings per chosen task; correlations.json says how many")
    _plan_together(step, args, together or {})


def plan_induction(step: StepPlan, args: Any, tokenizer: Any) -> None:
    from induction.sequences import REPEATS, base_length

    cfg = step.shape.cfg
    d, heads = cfg.hidden_size, cfg.num_heads
    variants = args.check()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        t = REPEATS * base_length(seed, args.start_length, args.length_step) + 1
        if args.KIND == "prefix":
            step.add(1, t)  # one forward for every variant
            step.extra[step.shape.head] = max(step.extra.get(step.shape.head, 0), heads * t * t * 4)
            continue
        per_layer_readout = 2 * t * d * d + 2 * t * t * d  # unembedded ids through W_O, then (T, T) per head
        if "residual" in variants:
            step.add(1, t)
            step.add_flops(cfg.num_layers * per_layer_readout)
        for _ in {"paper", "index_fix", "text"} & set(variants):  # no model pass: q, k, v of the embedding-level input
            step.add_flops(cfg.num_layers * (2 * t * 3 * d * d + 2 * t * t * d + per_layer_readout))
    if args.KIND == "copying" and "paper" in variants:
        step.notes.append("the paper's copying variant runs layer pieces, not passes: counted in FLOPs only")


def plan_copytask(step: StepPlan, args: Any, tokenizer: Any) -> None:
    """study/copy_task.pruning_experiment: prefix matching per seed, prune.importance's forward +
    backward per row (2L tokens fed, the second repeat's L-1 targets), then four accuracy passes on the
    (seeds, 1 + 2L) batch (full, induction heads pruned, two controls)."""
    for s in range(args.seed, args.seed + args.seeds):
        step.add(1, 1 + 4 * (args.length + 2 * s))
    rows, t = args.seeds, 1 + 2 * args.length
    step.add(1, 2 * args.length, logit_rows=args.length - 1, backward=True, times=rows)
    step.add(rows, t, logit_rows=rows * (args.length - 1), times=4)


# The planner of each step's settings class (steps that only read files have none: no model passes).
PLANNERS: dict[str, Callable[[StepPlan, Any, Any], None]] = {
    "EvalSettings": plan_eval, "HeadImportanceSettings": plan_head_importance, "FFNOracleSettings": plan_ffn_importance,
    "PruneSettings": plan_prune, "TransferSettings": plan_transfer, "PrefixSettings": plan_induction, "CopyingSettings": plan_induction,
    "CopyTaskSettings": plan_copytask,
}


def planner_of(settings: Any) -> Callable[[StepPlan, Any, Any], None] | None:
    return PLANNERS.get(type(settings).__name__)
