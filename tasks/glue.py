"""RTE as lm-eval's GLUE task (`glue.RTE`): the registry name `rte` maps here, not to SuperGLUE.

Mirrors lm-evaluation-harness v0.3 `lm_eval/tasks/glue.py` RTE (prompts in docs/method.md).
Dagan et al., "The PASCAL Recognising Textual Entailment Challenge" (RTE1-3, 5), as packaged by
Wang et al., "GLUE", ICLR 2019, https://arxiv.org/abs/1804.07461, https://gluebenchmark.com/.
Reads the SuperGLUE RTE release (premise/hypothesis, label "entailment"/"not_entailment"; same
2490/277 examples and label encoding) or an HF `glue/rte` export (sentence1/sentence2, label 0/1).
"""

from __future__ import annotations

from typing import Any, Sequence

from .base import Doc, Request, Result, Task
from .data import SplitFile, field, label_index


class RTE(Task):
    NAME, VERSION, DATA_DIR = "rte", 0, "rte"
    FILES = {"validation": [SplitFile("val.jsonl"), SplitFile("validation.jsonl")],
             "train": [SplitFile("train.jsonl")]}
    PUBLISHED = {"validation": 277, "train": 2490}
    LABELS = ["entailment", "not_entailment"]

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        s1, s2 = ("sentence1", "sentence2") if "sentence1" in rec else ("premise", "hypothesis")
        return {"sentence1": field(rec, s1, where, str), "sentence2": field(rec, s2, where, str),
                "label": label_index(field(rec, "label", where), self.LABELS, where)}

    def doc_to_text(self, doc: Doc) -> str:
        return f"{doc['sentence1']}\nQuestion: {doc['sentence2']} True or False?\nAnswer:"

    def doc_to_target(self, doc: Doc) -> str:
        return " True" if doc["label"] == 0 else " False"

    def construct_requests(self, doc: Doc, ctx: str) -> list[Request]:
        return [Request(ctx, " True"), Request(ctx, " False")]

    def process_results(self, doc: Doc, results: Sequence[Result]) -> dict[str, Any]:
        (ll_true, _), (ll_false, _) = results
        pred = 1 if ll_false > ll_true else 0  # 1 = not_entailment; a tie predicts entailment
        return {"acc": float(pred == doc["label"])}
