"""Evaluate one task at one shot count: prompts -> Scorer -> per-doc metrics -> aggregated metrics.

Mirrors lm-evaluation-harness v0.3 `evaluator.evaluate` for a single task (docs/method.md,
"Evaluation"): the seeded doc order and demos come from
`Task.instances`, scoring from tasks/scoring.py, aggregation from the task (tasks/metrics.py).

`TaskEvaluation` builds the prompts and the scoring plan once, so a pruning sweep can evaluate the
same task under many masks:

    ev = TaskEvaluation(model, tok, get_task("copa", data), shots=1, limit=100)
    base = ev.run(record_layer_inputs=True)               # {"acc": ...}
    knocked = ev.run(ffn_mask=mask, start_layer=layer)    # only layers >= layer recomputed
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Result, Task
from .metrics import task_metrics
from .scoring import Scorer


class TaskEvaluation:
    """Instances and Scorer of (task, shots, limit, seed), built once; `run` under any masks."""

    def __init__(self, model: Any, tokenizer: Any, task: Task, shots: int, limit: int | None = None,
                 seed: int = 42, batch_tokens: int = 4096, max_length: int | None = None,
                 progress_label: str | None = None):
        if shots < 0:
            raise ValueError(f"shots must be >= 0, got {shots}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for all docs), got {limit}")
        self.task, self.shots, self.limit, self.seed = task, shots, limit, seed
        self.instances = task.instances(shots, limit=limit, seed=seed)
        self.requests = [r for inst in self.instances for r in inst.requests]
        self.scorer = Scorer(model, tokenizer, self.requests, batch_tokens=batch_tokens, max_length=max_length,
                             progress_label=progress_label)
        self.results: list[Result] | None = None  # of the latest run, in request order

    def run(self, head_mask: torch.Tensor | None = None, ffn_mask: torch.Tensor | None = None,
            start_layer: int = 0, record_layer_inputs: bool = False) -> dict[str, float]:
        """Aggregated metrics ({metric: value}, fractions not points) under the given masks."""
        self.results = self.scorer.run(head_mask=head_mask, ffn_mask=ffn_mask, start_layer=start_layer,
                                       record_layer_inputs=record_layer_inputs)
        return task_metrics(self.task, self.instances, self.results)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-able record per request of the latest run: doc_id, context, continuation,
        loglikelihood (nats, summed over the continuation), is_greedy."""
        if self.results is None:
            raise ValueError("no results yet: call run() first")
        out, k = [], 0
        for inst in self.instances:
            for req in inst.requests:
                ll, greedy = self.results[k]
                out.append({"doc_id": inst.doc_id, "context": req.context, "continuation": req.continuation,
                            "loglikelihood": ll, "is_greedy": greedy})
                k += 1
        return out


def evaluate_task(model: Any, tokenizer: Any, task: Task, shots: int, limit: int | None = None, seed: int = 42,
                  head_mask: torch.Tensor | None = None, ffn_mask: torch.Tensor | None = None,
                  batch_tokens: int = 4096, max_length: int | None = None,
                  progress_label: str | None = None) -> dict[str, Any]:
    """{"metrics": {metric: value}, "records": [per request: doc_id, context, continuation,
    loglikelihood, is_greedy]} for one task at `shots` demos (lm-eval order: Random(seed))."""
    ev = TaskEvaluation(model, tokenizer, task, shots, limit=limit, seed=seed, batch_tokens=batch_tokens,
                        max_length=max_length, progress_label=progress_label)
    metrics = ev.run(head_mask=head_mask, ffn_mask=ffn_mask)
    return {"metrics": metrics, "records": ev.records()}
