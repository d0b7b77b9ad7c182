"""The Task abstraction: a small declarative class per dataset; the base class owns the algorithms.

Mirrors lm-evaluation-harness v0.3's `Task` / `MultipleChoiceTask` (lm_eval/base.py);
docs/method.md, "Evaluation". A subclass says where its data is and how a record becomes
text, target and candidate continuations; this module owns few-shot assembly, the seeded document
order and request construction, so every task follows the same rules.

Space convention (lm-eval): a context never ends with a space; each target / continuation carries
its own leading space (" yes"), which is the first character of what is scored.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .data import Record, SplitFile, find_split_file, read_split_file

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
    METRICS: dict[str, str] = {"acc": "mean"}  # metric -> aggregation name (see AGGREGATIONS below)
    PRIMARY_METRIC: str = "acc"  # what the paper reads (ReCoRD: em)
    DATA_DIR: str = ""  # folder under --data holding this task's files
    FILES: dict[str, list[SplitFile]] = {}  # split -> accepted files, original release first, then HF export
    PUBLISHED: dict[str, int] = {}  # split -> published doc count (docs/data.md)
    # True where the paper's released code builds other importance examples than the corrected protocol (targets
    # without the leading space; WSC's positive rows): `all` computes this task's importance both ways.
    PAPER_TARGETS_DIFFER: bool = False

    def __init__(self, data_dir: str | Path, paper_quirks: bool = False):
        """paper_quirks: follow the paper's lm-eval fork where it differs from stock lm-eval
        (MathQA demo targets without the leading space, as the fork's MathQA writes them)."""
        self.data_dir = Path(data_dir)
        self.paper_quirks = paper_quirks
        self._cache: dict[str, list[Doc]] = {}

    # -- data ------------------------------------------------------------------------------
    def split_file(self, split: str) -> tuple[Path, SplitFile] | None:
        """The file this split would be read from (first accepted name present), or None."""
        return find_split_file(self.data_dir / self.DATA_DIR, self.FILES.get(split, []))

    def load_split(self, split: str) -> list[Doc]:
        found = self.split_file(split)
        if found is None:
            tried = ", ".join(s.name for s in self.FILES.get(split, [])) or "(no file declared)"
            blocks = ("few-shot (k>0) needs it; 0-shot evaluation works without it"
                      if split == self.FEWSHOT_SPLIT else "the task cannot be evaluated")
            raise FileNotFoundError(f"{self.NAME}: {split} split missing: none of [{tried}] in "
                                    f"{self.data_dir / self.DATA_DIR}; {blocks}")
        path, spec = found
        return self.process_records(read_split_file(path, spec), split)

    def process_records(self, records: list[Record], split: str) -> list[Doc]:
        """Raw (where, record) pairs -> docs. Override to flatten (MultiRC answers, ReCoRD queries)."""
        return [self.process_record(rec, where) for where, rec in records]

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:  # pragma: no cover
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
        """Files this task reads (hashed into every output): the eval and few-shot files present."""
        out = []
        for split in dict.fromkeys([self.EVAL_SPLIT, self.FEWSHOT_SPLIT]):
            found = self.split_file(split) if split else None
            if found:
                out.append(found[0])
                if found[1].labels and (found[0].parent / found[1].labels).is_file():
                    out.append(found[0].parent / found[1].labels)
        return out

    # -- prompts ---------------------------------------------------------------------------
    def doc_to_text(self, doc: Doc) -> str:  # pragma: no cover
        raise NotImplementedError

    def doc_to_target(self, doc: Doc) -> str:  # pragma: no cover
        raise NotImplementedError

    def fewshot_examples(self, doc: Doc, k: int, rng: random.Random) -> list[Doc]:
        pool = self.fewshot_pool()
        need = k if self.FEWSHOT_SPLIT else k + 1
        if need > len(pool):
            raise ValueError(f"{self.NAME}: {k}-shot needs {need} few-shot docs but the pool has {len(pool)}")
        if self.FEWSHOT_SPLIT:
            return rng.sample(pool, k)
        # No train split: sample k+1 from the eval pool, drop the doc itself, keep k (lm-eval §1.2).
        picked = rng.sample(pool, k + 1)
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
        """Per-doc metric values, one key per METRICS entry; combine them with `aggregate`."""
        raise NotImplementedError

    def aggregate(self, metric: str, values: Sequence[Any]) -> float:
        """Combine the per-doc values of one metric over the eval set (METRICS names the rule:
        "mean", "perplexity" (exp of minus the mean LL), "acc_all" (MultiRC), "f1_macro" (CB))."""
        if metric not in self.METRICS:
            raise KeyError(f"{self.NAME} has no metric {metric!r}; it has {sorted(self.METRICS)}")
        return AGGREGATIONS[self.METRICS[metric]](values)

    # -- importance-score data (docs/method.md, "Head importance") ---------------------------------
    def importance_docs(self) -> list[Doc]:
        """The split the paper computes importance on: train (WSC: its positive-only pool), else validation."""
        return self.fewshot_pool()

    def importance_target(self, doc: Doc) -> str:
        """The gold continuation scored for importance (MC tasks override it under paper_quirks)."""
        return self.doc_to_target(doc)

    def importance_examples(self, n_docs: int, shots: int, rng: random.Random,
                            paper_quirks: bool = False) -> list[Request]:
        """The first n_docs of the importance split, each as (fewshot_context(doc, shots, rng), gold
        target). Demos come from the same pool and may include the doc itself, as in the paper. With
        paper_quirks the MC targets lose their leading space (ARC/OBQA/HellaSwag/PIQA/MathQA) and
        MathQA demos too."""
        task = self if paper_quirks == self.paper_quirks else self.with_quirks(paper_quirks)
        docs = task.importance_docs()[:n_docs]
        return [Request(task.fewshot_context(doc, shots, rng), task.importance_target(doc)) for doc in docs]

    def with_quirks(self, paper_quirks: bool) -> "Task":
        """The same task (sharing the loaded docs) with paper_quirks switched."""
        twin = type(self)(self.data_dir, paper_quirks=paper_quirks)
        twin._cache = self._cache
        return twin

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
    PAPER_TARGETS_DIFFER = True  # the paper's importance target is choices[gold] without the space

    def importance_target(self, doc: Doc) -> str:
        # The paper's doc_to_cont is choices[gold] with no leading space (the paper's released code, docs/method.md).
        return doc["choices"][doc["gold"]] if self.paper_quirks else self.doc_to_target(doc)

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


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("cannot aggregate an empty list of per-doc values")
    return sum(values) / len(values)


def perplexity(lls: Sequence[float]) -> float:
    """exp(-mean per-doc log-likelihood): lm-eval's LAMBADA ppl (per passage, not per token)."""
    return math.exp(-mean(lls))


def acc_all(values: Sequence[tuple[Any, float]]) -> float:
    """MultiRC: values are (question key, row correct); a question counts 1 only if all its rows
    are correct; mean over questions (lm-eval metrics.acc_all)."""
    groups: dict[Any, bool] = {}
    for key, correct in values:
        key = tuple(key) if isinstance(key, list) else key  # per-doc values may have gone through JSON
        groups[key] = groups.get(key, True) and bool(correct)
    return mean([float(v) for v in groups.values()])


def f1_macro(values: Sequence[tuple[int, int]]) -> float:
    """CB: values are (pred, gold); unweighted mean over the classes {0, 1, 2} of binary F1
    (sklearn f1_score(average="macro") with labels 0..2; a class with no tp/fp/fn scores 0)."""
    if not values:
        raise ValueError("cannot aggregate an empty list of per-doc values")
    scores = []
    for c in range(3):
        tp = sum(1 for p, g in values if p == c and g == c)
        fp = sum(1 for p, g in values if p == c and g != c)
        fn = sum(1 for p, g in values if p != c and g == c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return mean(scores)


AGGREGATIONS: dict[str, Callable[[Sequence[Any]], float]] = {
    "mean": mean, "perplexity": perplexity, "acc_all": acc_all, "f1_macro": f1_macro}

TaskFactory = Callable[[Path], Task]
