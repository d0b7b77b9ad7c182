"""Gradient head importance (Bansal et al. 2023 §4.1): the `importance heads` step and its measure.

Mirrors the paper's released code, `BaseLM.calculate_importance` (lm_eval/base.py of its lm-eval fork);
docs/method.md ("Head importance"). The FFN oracle is prune/oracle.py.
Michel et al. (NeurIPS 2019) define the same head score; their code is pmichel31415/pytorch-pretrained-BERT.

Head score, per layer l and head h, over examples e = [context; gold continuation] of N_e tokens
of which Y_e are the continuation:

    S[l, h]  = sum_e sum_{p < N_e} | a[l,h,p] . dL_e/da[l,h,p] |     (|.| per token position)
    IS[l, h] = S[l, h] / sum_e (N_e - 1)    for l < L-1
    IS[L-1,h] = S[L-1, h] / sum_e Y_e        for the last layer

a[l,h,p] is head h's attention-weighted value vector (Dh,) before out_proj; L_e the mean NLL of the
Y_e continuation tokens (batch 1, unmasked model, no weight gradients).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from opt66b import Capture, frozen, head_attribution
from opt66b.fileio import Progress
from opt66b.runs.results import check_finite_heads
from opt66b.layer_major import DEFAULT_CHUNK_BUDGET, chunk_units, streams_layers
from opt66b.host_memory import release_cpu_caches
from opt66b.offload import layerwise_backward, layerwise_backward_chunk

from opt66b.runs.settings import option
from tasks.scoring import TokenRequest, token_requests
from tasks.settings import TaskStep

from .masks import normalize_per_layer as l2_normalize_per_layer


def _example(model: Any, input_ids: Sequence[int], continuation: Sequence[int]
             ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(x (1, N-1) ids on the embedding's device, loss_fn: final hidden -> mean NLL of the continuation)."""
    device = model.decoder.embed_tokens.weight.device
    x = torch.tensor([list(input_ids)], dtype=torch.long, device=device)  # (1, N-1)
    n, y = x.shape[1], len(continuation)
    targets = torch.tensor(list(continuation), dtype=torch.long, device=device)  # (Y,)

    def loss_fn(hidden: torch.Tensor) -> torch.Tensor:
        # Position p predicts token p+1; the Y targets are read at the last Y fed positions:
        #   fed:      c0 c1 ... c_{C-1} y0 ... y_{Y-2}
        #   predicts:           ...  y0 y1 ... y_{Y-1}   (positions C-1 .. N-2)
        logits = model.logits(hidden[:, n - y:]).float()  # (1, Y, V)
        return torch.nn.functional.cross_entropy(logits[0], targets.to(logits.device))  # mean NLL over Y
    return x, loss_fn


def example_head_scores(model: Any, input_ids: Sequence[int], continuation: Sequence[int],
                        layerwise: bool = False) -> torch.Tensor:
    """One forward + backward on one example: (L, H) float32 sums over positions of |a . dL/da|.

    input_ids = prefix + continuation[:-1] (tasks.scoring.TokenRequest.input_ids): the last
    continuation token is never fed, since its position predicts nothing and so has dL/da = 0 in
    every layer; dropping it changes no score. L = mean NLL (float32) of the continuation tokens.
    Weights must be frozen by the caller (see `head_score_sums_tokens`); gradients reach the head
    outputs only. A model with a layer streamer (--offload) takes the bounded-memory layer-wise
    backward (opt66b.offload.layerwise_backward: one layer's weights and graph at a time); so does a
    resident model with layerwise=True, when every layer's activations would not fit the device (the
    same scores to float round-off; one extra forward of recomputation).
    """
    x, loss_fn = _example(model, input_ids, continuation)
    if layerwise or getattr(model, "streamer", None) is not None:
        return layerwise_backward(model, x, None, loss_fn)[2]  # (L, H)
    cap = Capture(heads=True, grads=True)
    with torch.enable_grad():
        out = model(x, capture=cap, logits="none")
        heads = cap.head_list()  # L tensors (1, H, N-1, Dh)
        grads = torch.autograd.grad(loss_fn(out.hidden), heads)
    return torch.stack([head_attribution(a, g) for a, g in zip(heads, grads)]).cpu()  # (L, H)


DENOMINATORS = ("paper", "uniform")


def example_chunks(model: Any, tokenized: Sequence[TokenRequest], budget: int | None) -> list[int]:
    """Examples per layer-order chunk, in order: with streamed layers as many consecutive examples as
    fit `budget` bytes with L + 1 copies of the longest one's stream (every layer's input and the
    gradient; opt66b.layer_major.chunk_units), so each streamed layer crosses twice per chunk instead
    of twice per example; otherwise one at a time."""
    if not streams_layers(model):
        return [1] * len(tokenized)
    cfg = model.config
    tokens = [len(t.input_ids) for t in tokenized]
    size = chunk_units(tokens, budget, cfg.num_layers + 1, cfg.hidden_size, next(model.parameters()).element_size())
    return [min(size, len(tokenized) - first) for first in range(0, len(tokenized), size)]


def head_score_sums_tokens(model: Any, tokenized: Sequence[TokenRequest],
                           progress: Callable[[int], None] | None = None,
                           layerwise: bool = False,
                           chunk_budget: int | None = DEFAULT_CHUNK_BUDGET) -> tuple[torch.Tensor, dict[str, int]]:
    """S[l, h] (L, H) float32 on token-level examples (prefix, continuation), one forward + one
    backward each, and the counts {"examples" (= passes each way), "positions" = sum(N_e - 1) (= tokens
    fed), "targets" = sum(Y_e)}. With streamed layers the examples go through the layer-wise backward
    in chunks (example_chunks; chunk_budget bytes on the compute device), summed in the same order."""
    if not tokenized:
        raise ValueError("head_importance needs at least one example, got none")
    cfg = model.config
    total = torch.zeros(cfg.num_layers, cfg.num_heads, dtype=torch.float32)  # (L, H)
    positions = targets = 0
    device = model.decoder.embed_tokens.weight.device
    with frozen(model):
        first = 0
        for size in example_chunks(model, tokenized, chunk_budget):
            chunk = tokenized[first:first + size]
            if size == 1:
                per_example = [example_head_scores(model, chunk[0].input_ids, chunk[0].continuation, layerwise)]
            else:
                examples = [(*_example(model, t.input_ids, t.continuation),) for t in chunk]
                per_example = [r[2] for r in layerwise_backward_chunk(model, [(x, None, f) for x, f in examples])]
            release_cpu_caches(device)  # the backward's MKL scratch is the example's, not the run's
            for e, (t, scores) in enumerate(zip(chunk, per_example), first):  # (L, H) each
                check_finite_heads(scores, f"head importance: example {e} ({len(t.continuation)} continuation tokens)")
                total += scores
                positions += len(t.input_ids)  # N_e - 1
                targets += len(t.continuation)  # Y_e
                if progress is not None:
                    progress(1)
            first += size
    if positions == 0:
        raise ValueError("every example has a single token; the importance denominators are zero")
    return total, {"examples": len(tokenized), "positions": positions, "targets": targets}


def head_score_sums(model: Any, tokenizer: Any, examples: Sequence[Any], max_length: int = 2048,
                    progress: Callable[[int], None] | None = None, layerwise: bool = False,
                    chunk_budget: int | None = DEFAULT_CHUNK_BUDGET) -> tuple[torch.Tensor, dict[str, int]]:
    """S[l, h] (L, H) float32 = sum over examples and positions of |a . dL/da|, and the counts
    {"examples", "positions" = sum(N_e - 1), "targets" = sum(Y_e), "truncated"} (see head_importance)."""
    if not examples:
        raise ValueError("head_importance needs at least one example, got none")
    tokenized = token_requests(tokenizer, examples, max_length)
    # lm-eval's left truncation keeps max_length + 1 tokens; the paper's released code never truncates.
    truncated = sum(len(t.prefix) < len(c) for t, c in
                    zip(tokenized, (r.prefix for r in token_requests(tokenizer, examples, 1 << 40))))
    total, counts = head_score_sums_tokens(model, tokenized, progress, layerwise, chunk_budget)
    return total, {**counts, "truncated": truncated}


def importance_from_sums(total: torch.Tensor, counts: dict[str, int], denominator: str = "paper",
                         normalize_per_layer: bool = False) -> torch.Tensor:
    """IS (L, H) float32 from the sums S. denominator "paper": layers < L-1 divide by sum(N_e - 1),
    the last layer by sum(Y_e) (the paper's released code); "uniform": every layer by sum(N_e - 1), so the last
    layer is on the same per-position scale as the others (in one global ranking the paper's choice
    inflates it by about sum(N_e - 1) / sum(Y_e))."""
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    denom = torch.full((total.shape[0], 1), float(counts["positions"]), dtype=torch.float64)  # (L, 1)
    if denominator == "paper":
        denom[-1] = float(counts["targets"])
    importance = total.double() / denom  # (L, H)
    if normalize_per_layer:
        importance = l2_normalize_per_layer(importance)
    return importance.float()


def head_importance(model: Any, tokenizer: Any, examples: Sequence[Any], max_length: int = 2048,
                    normalize_per_layer: bool = False, denominator: str = "paper",
                    progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, dict[str, int]]:
    """Gradient-based head importance IS (L, H) float32 on `examples` (Request(context, continuation)).

    How to read it: IS[l, h] is the mean, over token positions, of |first-order change of the loss
    (nats) if head h of layer l were removed| (a . dL/da is the Taylor estimate of the loss change
    when a -> 0). Larger = more important. Scores are comparable across heads of the same task and
    shot; with the paper's denominator the last layer uses the target-token count, so it reads
    larger (denominator="uniform" divides every layer by the position count). With
    normalize_per_layer each layer's row is divided by its L2 norm (Michel et al.; not the paper).

    Tokens as lm-eval builds them (tasks.scoring.token_requests: no BOS, separate encoding, left
    truncation to max_length model inputs). Returns (IS, counts) with counts = {"examples",
    "positions" = sum(N_e - 1), "targets" = sum(Y_e), "truncated" (examples cut on the left)}.
    Accumulation is float32 whatever the model dtype; weights get no gradient.
    """
    total, counts = head_score_sums(model, tokenizer, examples, max_length, progress)
    return importance_from_sums(total, counts, denominator, normalize_per_layer), counts


def head_importance_tokens(model: Any, tokenized: Sequence[TokenRequest], normalize_per_layer: bool = False,
                           denominator: str = "paper") -> tuple[torch.Tensor, dict[str, int]]:
    """`head_importance` on examples already tokenized (TokenRequest(prefix, continuation)), e.g.
    synthetic token sequences: (IS (L, H) float32, counts without "truncated")."""
    total, counts = head_score_sums_tokens(model, tokenized)
    return importance_from_sums(total, counts, denominator, normalize_per_layer), counts


# -- the `importance heads` step -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class HeadImportanceSettings(TaskStep):
    """`run.py importance heads`: gradient head importance per task and shot, and the seen-task aggregate."""

    COMMAND = ("importance", "heads")
    n_docs: int = option(2500)
    seed: int = option(1234)  # the paper's few-shot demo sampler
    max_length: int | None = option(None)
    normalize_per_layer: bool = option(False)
    seen_tasks: tuple[str, ...] | None = option(None)
    update_aggregate: bool = option(False)
    backward: str = option("auto")

    def check(self) -> None:
        from tasks.registry import check_task_args

        self.check_tasks()
        if self.seen_tasks:
            check_task_args(list(self.seen_tasks), list(self.shots))
        if self.n_docs < 1:
            raise ValueError(f"--n-docs must be >= 1, got {self.n_docs}")

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, int]:
        return run_head_importance(*loaded, self)["work"]

    def units(self, shape: Any, tokenizer: Any, done: Any = None) -> list[Any]:
        """The work units (opt66b.cost) the run splits and the plan prices: one (task, shot) each, one forward
        and backward per example; with streamed layers the layer-wise backward takes the examples in chunks
        (example_chunks): the chunk's every-layer inputs and gradients on the compute device, each streamed
        layer crossing twice per chunk (a forward and a reverse sweep)."""
        from opt66b.cost import Passes, Run, WorkUnit
        from opt66b.layer_major import chunk_cost, chunk_state_bytes

        cfg, streamed = shape.cfg, shape.streams_to is not None
        backward = "layerwise" if streamed or self.backward == "layerwise" else "full"
        units = []
        for k in self.shots:
            for name, task in self.task_objects().items():
                lengths = self.example_lengths(task, k, cfg, tokenizer)
                unit = WorkUnit(("importance", name, k), [Run(Passes.of_examples(lengths), backward=backward,
                                                              scores=True, layer_order=streamed)])
                if streamed and lengths:
                    fed = [f for f, _ in lengths]
                    _, chunk, chunks = chunk_cost(fed, self.chunk_budget(shape), cfg.num_layers + 1,
                                                  cfg.hidden_size, shape.dtype_bytes)
                    # beside the pass rule's own example (its inputs of every layer): the chunk's others and the gradients
                    unit.held = chunk - chunk_state_bytes(max(fed), cfg.num_layers, cfg.hidden_size, shape.dtype_bytes)
                    unit.sweeps = 2 * chunks
                units.append(unit)
        return units

    def example_lengths(self, task: Any, shots: int, cfg: Any, tokenizer: Any) -> list[tuple[int, int]]:
        """(tokens fed, scored positions) of each importance example, from the tokenisation cache when it has them."""
        from tasks.evaluation import cached

        max_length = self.max_length or cfg.max_positions

        def lengths() -> list[list[int]]:
            examples = task.importance_examples(self.n_docs, shots, random.Random(self.seed),
                                                paper_quirks=self.protocol.paper_quirks)
            return [[len(t.input_ids), len(t.continuation)] for t in token_requests(tokenizer, examples, max_length)]

        identity = [shots, self.n_docs, self.seed, max_length]
        return [tuple(x) for x in cached(f"{shots}-shot-importance", identity, tokenizer, task, lengths)]


def run_head_importance(model: Any, tokenizer: Any, info: dict[str, Any] | None,
                        s: HeadImportanceSettings) -> dict[str, Any]:
    """Per (task, shot): s.out/shots-K/<task>.safetensors with 'importance_paper_denominator' (L, H) (the
    paper's code: its last layer over target tokens), 'importance_uniform' (every layer over the position
    count) and 'importance', the ranking every later step reads: the one s.protocol.denominator names. Also
    s.out/shots-K/aggregate.safetensors, the mean over the seen tasks present (prune/aggregate.py; default:
    the paper's 14; s.update_aggregate replaces one whose members changed). n_docs: the first N docs of the
    importance split; seed: the few-shot demo sampler (the paper's 1234). One forward + backward per example
    (the layer-wise bounded-memory backward when the model streams its layers, or with --backward layerwise:
    recorded, not fingerprinted, since it moves only the last float bits); with streamed layers the examples
    go in chunks of s.chunk_budget(...) bytes on the compute device (example_chunks)."""
    from opt66b.cost import ModelShape
    from opt66b.runs.distributed import barrier, my_units, rank_world
    from opt66b.runs.layout import shots_dir
    from opt66b.runs.store import UnitStore, Work, in_memory_info, model_fingerprint
    from tasks.evaluation import task_fingerprint

    from tasks.registry import PAPER_SEEN_TASKS

    from .aggregate import check_aggregate_before, write_aggregate

    s.check()
    info = info or in_memory_info(model)
    objects = s.task_objects()
    recorded = s.recorded(info, objects)
    length = model.config.max_positions if s.max_length is None else s.max_length
    if not 0 < length <= model.config.max_positions:
        raise ValueError(f"--max-length must be in [1, {model.config.max_positions}] (the model's positions), got {length}")
    denominator, quirks = s.protocol.denominator, s.protocol.paper_quirks
    store = UnitStore({**model_fingerprint(info), "seed": s.seed, "n_docs": s.n_docs, "max_length": length,
                       "normalize_per_layer": s.normalize_per_layer, "paper_quirks": quirks,
                       "denominator": denominator}, recompute=s.recompute)
    seen = list(s.seen_tasks or PAPER_SEEN_TASKS)
    for k in s.shots:  # an aggregate this run would change is refused now, not after hours of work
        check_aggregate_before(shots_dir(s.out, k), list(objects), seen, s.update_aggregate)
    work, layerwise = Work(), s.backward == "layerwise"
    budget = s.chunk_budget(ModelShape.of(model))
    # (task, shot) is the unit: split across torchrun processes by cost, skipped when its fingerprint matches.
    shape = ModelShape.of(model)
    units = {u.key[1:]: u for u in s.units(shape, tokenizer)}
    pending = [(t, k) for t, k in units if not store.done(shots_dir(s.out, k) / f"{t}.safetensors",
                                                          **task_fingerprint(objects[t]), shots=k)]
    barrier()  # every process has read the unit files before any process writes one (the same split everywhere)
    for name, k in my_units(pending, [units[key].flops(shape.rule) for key in pending]):
        examples = objects[name].importance_examples(s.n_docs, k, random.Random(s.seed), paper_quirks=quirks)
        bar = Progress(len(examples), f"importance {name} {k}-shot")
        total, counts = head_score_sums(model, tokenizer, examples, max_length=length, progress=bar.update,
                                        layerwise=layerwise, chunk_budget=budget)
        work.add_unit(units[(name, k)], shape.rule)
        meta = {**recorded, "task": name, "shots": k, "seed": s.seed, "n_docs": s.n_docs, "counts": counts,
                "normalize_per_layer": s.normalize_per_layer, "max_length": s.max_length, "denominator": denominator,
                "backward": "layer-wise" if layerwise or getattr(model, "streamer", None) else "full"}
        store.write_tensors(shots_dir(s.out, k) / f"{name}.safetensors", *_variants(total, counts, s, meta),
                            **task_fingerprint(objects[name]), shots=k)
    barrier()
    if rank_world()[0] == 0:
        for k in s.shots:
            write_aggregate(shots_dir(s.out, k), seen, update=s.update_aggregate,
                            settings={**recorded, "shots": k, "seed": s.seed})
    return {"out": s.out, "work": work.as_dict()}


def _variants(total: torch.Tensor, counts: dict[str, int], s: HeadImportanceSettings,
              meta: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of one (task, shot)'s file: both denominators under their own names, and the one the
    protocol ranks by as `importance` (what every later step reads), the metadata saying which."""
    from opt66b.runs.results import run_metadata

    from .masks import IMPORTANCE_KEY, PAPER_DENOMINATOR_KEY, UNIFORM_IMPORTANCE_KEY

    variants = {key: importance_from_sums(total, counts, denom, s.normalize_per_layer)
                for key, denom in ((PAPER_DENOMINATOR_KEY, "paper"), (UNIFORM_IMPORTANCE_KEY, "uniform"))}
    chosen = PAPER_DENOMINATOR_KEY if s.protocol.denominator == "paper" else UNIFORM_IMPORTANCE_KEY
    variants[IMPORTANCE_KEY] = variants[chosen].clone()
    return variants, run_metadata(**meta, importance_is=chosen)
