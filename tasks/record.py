"""ReCoRD: cloze queries over news passages; one request per candidate entity; em / f1 (no acc).

Mirrors lm-evaluation-harness v0.3 `superglue.ReCoRD` (prompts in docs/method.md). Zhang et al.,
"ReCoRD: Bridging the Gap between Human and Machine Commonsense Reading Comprehension",
https://arxiv.org/abs/1810.12885, https://sheng-z.github.io/ReCoRD-explorer/ (SuperGLUE version).
The release nests queries (`qas`) under each passage, with entities as character spans
(`end` inclusive); each query becomes one doc, with entities = sorted(set(span texts)) as HF
`super_glue/record` builds them. The SQuAD v1.1 normalisation and token F1 are written here.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Sequence

from .base import Doc, Request, Result, Task, first_argmax
from .data import Record, SplitFile, field


def normalize_answer(s: str) -> str:
    """SQuAD v1.1: lowercase, drop punctuation, drop articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(gold: str, pred: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(pred))


def token_f1(gold: str, pred: str) -> float:
    """SQuAD token F1 on normalised whitespace tokens; two empty answers score 1, one empty scores 0."""
    g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not g or not p:
        return float(g == p)
    common = sum((Counter(g) & Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


# The bundled samples' eval docs (study/make_samples.py): the real validation file is not available.
STANDIN_VALIDATION = "standin_val_from_fewglue_train.jsonl"


class ReCoRD(Task):
    NAME, VERSION, DATA_DIR = "record", 0, "record"
    FILES = {"validation": [SplitFile("val.jsonl"), SplitFile("validation.jsonl"),
                            SplitFile(STANDIN_VALIDATION, standin=True,
                                      fallback="STAND-IN for validation: FewGLUE train queries after the "
                                               "sample's few-shot pool (disjoint from it); not the eval split")],
             "train": [SplitFile("train.jsonl"),
                       SplitFile("fewglue_train.jsonl", count=32,
                                 fallback="FewGLUE 32-query subset of train (full train missing)")]}
    PUBLISHED = {"validation": 10000, "train": 100730}  # queries
    METRICS = {"f1": "mean", "em": "mean"}
    PRIMARY_METRIC = "em"

    def process_records(self, records: list[Record], split: str) -> list[Doc]:
        docs = []
        for where, rec in records:
            if isinstance(rec.get("passage"), str):  # HF export: one query per line, entity strings
                docs.append(self._doc(where, rec["passage"], field(rec, "query", where, str),
                                      field(rec, "entities", where, list), field(rec, "answers", where, list)))
                continue
            text = field(rec, "passage.text", where, str)
            entities = []
            for i, span in enumerate(field(rec, "passage.entities", where, list)):
                e_where = f"{where} (entity {i})"
                start, end = field(span, "start", e_where, int), field(span, "end", e_where, int)
                entities.append(text[start:end + 1])  # `end` is inclusive in the release
            for qi, qa in enumerate(field(rec, "qas", where, list)):
                q_where = f"{where} (query {qi})"
                answers = [field(a, "text", q_where, str) for a in field(qa, "answers", q_where, list)]
                docs.append(self._doc(q_where, text, field(qa, "query", q_where, str), entities, answers))
        return docs

    @staticmethod
    def _doc(where: str, passage: str, query: str, entities: list, answers: list) -> Doc:
        if not entities or not all(isinstance(e, str) for e in entities):
            raise ValueError(f"{where}: 'entities' must be a non-empty list of strings")
        if not answers:
            raise ValueError(f"{where}: 'answers' is empty (a query needs at least one gold answer)")
        return {"passage": passage, "query": query, "entities": sorted(set(entities)), "answers": sorted(set(answers))}

    def doc_to_text(self, doc: Doc) -> str:
        body, *highlights = doc["passage"].strip().split("\n@highlight\n")
        return body + "\n\n" + "".join(f"  - {h}.\n" for h in highlights)

    @staticmethod
    def format_answer(query: str, entity: str) -> str:
        return f"  - {query}".replace("@placeholder", entity)

    def doc_to_target(self, doc: Doc) -> str:
        return self.format_answer(doc["query"], doc["answers"][0])

    def construct_requests(self, doc: Doc, ctx: str) -> list[Request]:
        return [Request(ctx, self.format_answer(doc["query"], e)) for e in doc["entities"]]

    def process_results(self, doc: Doc, results: Sequence[Result]) -> dict[str, Any]:
        pred = doc["entities"][first_argmax([ll for ll, _ in results])]  # raw summed LL, not normalised
        return {"f1": max(token_f1(g, pred) for g in doc["answers"]),
                "em": max(exact_match(g, pred) for g in doc["answers"])}
