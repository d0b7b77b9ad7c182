"""Head importance (gradient-based) and oracle FFN importance (knock one FFN out, measure the drop).

Mirrors amazon-science/llm-interpret `BaseLM.calculate_importance` (lm_eval/base.py) and
scripts/plotting/fc_importance.py; docs/method.md ("Head importance", "FFN importance").
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

import sys
from typing import Any, Callable, Sequence

import torch

from opt66b import Capture, frozen, head_attribution
from opt66b.fileio import Progress
from opt66b.runs.results import check_finite_heads
from opt66b.layer_major import DEFAULT_CHUNK_BUDGET, chunk_units, streams_layers
from opt66b.host_memory import release_cpu_caches
from opt66b.offload import layerwise_backward, layerwise_backward_chunk

from tasks.scoring import TokenRequest, token_requests

from .masks import ffn_ranking, normalize_per_layer as l2_normalize_per_layer


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
    # lm-eval's left truncation keeps max_length + 1 tokens; the paper's code never truncates.
    truncated = sum(len(t.prefix) < len(c) for t, c in
                    zip(tokenized, (r.prefix for r in token_requests(tokenizer, examples, 1 << 40))))
    total, counts = head_score_sums_tokens(model, tokenized, progress, layerwise, chunk_budget)
    return total, {**counts, "truncated": truncated}


def importance_from_sums(total: torch.Tensor, counts: dict[str, int], denominator: str = "paper",
                         normalize_per_layer: bool = False) -> torch.Tensor:
    """IS (L, H) float32 from the sums S. denominator "paper": layers < L-1 divide by sum(N_e - 1),
    the last layer by sum(Y_e) (the paper's code); "uniform": every layer by sum(N_e - 1), so the last
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


# -- oracle FFN importance -----------------------------------------------------------------------
def ffn_knockout_mask(num_layers: int, layer: int) -> torch.Tensor:
    """(L,) float32 FFN mask with only `layer` switched off."""
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer {layer} out of range for a {num_layers}-layer model")
    mask = torch.ones(num_layers, dtype=torch.float32)  # (L,)
    mask[layer] = 0.0
    return mask


def primary_points(metrics: dict[str, float], metric: str) -> float:
    """The task's primary metric in points (x100), as the paper's plots read results[task][metric]*100."""
    if metric not in metrics:
        raise KeyError(f"evaluation returned no {metric!r}; it has {sorted(metrics)}")
    return 100.0 * float(metrics[metric])


def ffn_importance(evaluation: Any, num_layers: int, metric: str, layers: Sequence[int] | None = None,
                   done: dict[int, dict[str, float]] | None = None,
                   on_layer: Callable[[int, dict[str, float]], None] | None = None,
                   base_metrics: dict[str, float] | None = None, cached: bool = True,
                   progress: Callable[[int], None] | None = None, chunk_units: int | None = None,
                   chunks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Oracle FFN importance: drop[l] = base - metric with FFN l alone knocked out (points, eval split).

    `evaluation` is a tasks.evaluate.TaskEvaluation (instances and scorer built once); its
    `run(ffn_mask=..., start_layer=l)` resumes from the recorded input of layer l, which a knockout
    at l cannot change, so only layers l.. are recomputed (cached=False re-runs the whole model:
    the naive reference). `done` holds already-computed layers' metrics (resume); `on_layer(l, m)`
    is called after each new layer (write its unit file there). chunk_units: run the base and the
    knock-outs `chunk_units` scoring batches at a time, so the recorded layer inputs held at once are
    one chunk's, not the task's (same results bit for bit); chunks: {"done", "on_chunk"} resume and
    save each chunk's partial log-likelihoods (TaskEvaluation.run_knockouts).

    Returns {"metric", "base", "base_metrics", "drop" (L floats), "metrics" (per layer), "ranking"}
    where ranking lists layer ids by ascending drop, stable (ties: lower layer first, as the paper's code).
    """
    layers = list(range(num_layers)) if layers is None else list(layers)
    per_layer: dict[int, dict[str, float]] = dict(done or {})
    todo = [layer for layer in layers if layer not in per_layer]
    if cached and chunk_units is not None and (todo or base_metrics is None):
        # Bounded memory: the base and every knock-out, a chunk of scoring batches at a time, each chunk
        # resumed from its own recorded layer inputs (Scorer.run_knockouts); the same numbers bit for bit.
        runs = [(layer, None, ffn_knockout_mask(num_layers, layer), layer) for layer in todo]
        res = evaluation.run_knockouts(runs, chunk_units, **(chunks or {}))
        base_metrics = res["base"]
        for layer in todo:
            per_layer[layer] = res[layer]
            if on_layer is not None:
                on_layer(layer, res[layer])
    if base_metrics is None:
        base_metrics = evaluation.run(record_layer_inputs=cached) if cached else evaluation.run()
    base = primary_points(base_metrics, metric)
    for layer in layers:
        if layer in per_layer:
            continue
        mask = ffn_knockout_mask(num_layers, layer)
        if cached:
            metrics = evaluation.run(ffn_mask=mask, start_layer=layer)
        else:
            metrics = evaluation.run(ffn_mask=mask)
        per_layer[layer] = metrics
        if on_layer is not None:
            on_layer(layer, metrics)
        if progress is not None:
            progress(1)
    missing = [i for i in range(num_layers) if i not in per_layer]
    drop = [base - primary_points(per_layer[i], metric) for i in range(num_layers) if i in per_layer]
    result = {"metric": metric, "base": base, "base_metrics": base_metrics,
              "metrics": {str(i): per_layer[i] for i in sorted(per_layer)}}
    if not missing:
        result["drop"] = drop
        result["ranking"] = ffn_ranking(drop)
    else:
        result["missing_layers"] = missing
    return result


def stderr_progress(total: int, label: str) -> Callable[[int], None]:
    """A progress callback printing to stderr (opt66b.runs.results.Progress)."""
    bar = Progress(total, label, stream=sys.stderr)
    return bar.update
