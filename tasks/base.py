"""The Task abstraction: a small declarative class per dataset; the base class owns the algorithms.

Mirrors lm-evaluation-harness v0.3's `Task` / `MultipleChoiceTask` (lm_eval/base.py), facts in
../shared/specs/lm_eval_task_spec.md §1. A subclass says where its data is and how a record becomes
text, target and candidate continuations; this module owns few-shot assembly, the seeded document
order and request construction, so every task follows the same rules.

Space convention (lm-eval): a context never ends with a space; each target / continuation carries
its own leading space (" yes"), which is the first character of what is scored.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

Doc = dict[str, Any]
Result = tuple[float, bool]  # (summed log-likelihood of the continuation, is_greedy)


@dataclass(frozen=True)
class Request:
    context: str
    continuation: str


@dataclass
class Instance:
    """One evaluated document: its prompt and the log-likelihood requests it sends."""

    doc_id: int  # index of the doc in the eval split's original (file) order
    doc: Doc
    context: str
    requests: list[Request] = field(default_factory=list)


class Task:
    NAME: str = ""
    VERSION: int = 0
    EVAL_SPLIT: str = "validation"  # lm-eval: test if the task has test docs, else validation
    FEWSHOT_SPLIT: str | None = "train"  # None: draw demos from the eval split minus the doc (LAMBADA)
    METRICS: dict[str, str] = {"acc": "mean"}  # metric -> aggregation name (see metrics.AGGREGATIONS)
    PRIMARY_METRIC: str = "acc"  # what the paper reads (ReCoRD: em)

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self._cache: dict[str, list[Doc]] = {}

    # -- data ------------------------------------------------------------------------------
    def load_split(self, split: str) -> list[Doc]:  # pragma: no cover - each task implements it
        raise NotImplementedError

    def docs(self, split: str) -> list[Doc]:
        if split not in self._cache:
            self._cache[split] = self.load_split(split)
        return self._cache[split]

    def eval_docs(self) -> list[Doc]:
        return self.docs(self.EVAL_SPLIT)

    def fewshot_pool(self) -> list[Doc]:
        return self.docs(self.FEWSHOT_SPLIT) if self.FEWSHOT_SPLIT else self.eval_docs()

    def data_files(self) -> list[Path]:
        """Files this task reads (hashed into every output)."""
        return []

    # -- prompts ---------------------------------------------------------------------------
    def doc_to_text(self, doc: Doc) -> str:  # pragma: no cover
        raise NotImplementedError

    def doc_to_target(self, doc: Doc) -> str:  # pragma: no cover
        raise NotImplementedError

    def fewshot_examples(self, doc: Doc, k: int, rng: random.Random) -> list[Doc]:
        if self.FEWSHOT_SPLIT:
            return rng.sample(self.fewshot_pool(), k)
        # No train split: sample k+1 from the eval pool, drop the doc itself, keep k (lm-eval §1.2).
        picked = rng.sample(self.fewshot_pool(), k + 1)
        return [d for d in picked if d != doc][:k]

    def fewshot_context(self, doc: Doc, k: int, rng: random.Random | None) -> str:
        if rng is None:
            raise ValueError("fewshot_context needs an explicit random.Random")
        if k == 0:
            return self.doc_to_text(doc)
        shots = self.fewshot_examples(doc, k, rng)
        demos = "\n\n".join(self.doc_to_text(d) + self.doc_to_target(d) for d in shots)
        return demos + "\n\n" + self.doc_to_text(doc)

    def construct_requests(self, doc: Doc, ctx: str) -> list[Request]:  # pragma: no cover
        raise NotImplementedError

    def process_results(self, doc: Doc, results: Sequence[Result]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    # -- the seeded order, shared by evaluation and everything that masks the model --------------
    def instances(self, shots: int, limit: int | None = None, seed: int = 42) -> list[Instance]:
        """lm-eval's order: Random(seed) shuffles the eval docs, then the same generator draws each
        doc's demos in shuffled order. `limit` keeps the first N docs after the shuffle."""
        rng = random.Random(seed)
        order = list(range(len(self.eval_docs())))
        rng.shuffle(order)
        if limit is not None:
            order = order[:limit]
        out = []
        for i in order:
            doc = self.eval_docs()[i]
            ctx = self.fewshot_context(doc, shots, rng)
            out.append(Instance(i, doc, ctx, self.construct_requests(doc, ctx)))
        return out


class MultipleChoiceTask(Task):
    """Docs normalised to {"query", "choices", "gold"}; one request per " " + choice."""

    METRICS = {"acc": "mean", "acc_norm": "mean"}

    def doc_to_text(self, doc: Doc) -> str:
        return doc["query"]

    def doc_to_target(self, doc: Doc) -> str:
        return " " + doc["choices"][doc["gold"]]

    def construct_requests(self, doc: Doc, ctx: str) -> list[Request]:
        return [Request(ctx, " " + c) for c in doc["choices"]]

    def process_results(self, doc: Doc, results: Sequence[Result]) -> dict[str, Any]:
        lls = [ll for ll, _ in results]
        gold = doc["gold"]
        # np.argmax semantics: the first index wins ties. acc_norm divides by character length.
        acc = float(first_argmax(lls) == gold)
        acc_norm = float(first_argmax([ll / len(c) for ll, c in zip(lls, doc["choices"])]) == gold)
        return {"acc": acc, "acc_norm": acc_norm}


def first_argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


TaskFactory = Callable[[Path], Task]
