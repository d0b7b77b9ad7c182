"""Winogrande (xl): partial scoring: the option fills the blank in the context, the suffix is scored.

Mirrors lm-evaluation-harness v0.3 `lm_eval/tasks/winogrande.py` (docs/method.md),
which follows Trinh & Le 2018, "A Simple Method for Commonsense Reasoning". Sakaguchi et al.,
"WinoGrande: An Adversarial Winograd Schema Challenge at Scale", AAAI 2020,
https://arxiv.org/abs/1907.10641, https://winogrande.allenai.org/ (CC BY 2.0). Reads the v1.1
release (dev.jsonl, train_xl.jsonl; `answer` "1"/"2", label .lst files optional) or an HF
`winogrande/winogrande_xl` export. Fallback: train_l.jsonl, the first 10234 records of train_xl.
"""

from __future__ import annotations

from typing import Any, Sequence

from .base import Doc, Request, Result, Task, first_argmax
from .data import SplitFile, field, label_index


class Winogrande(Task):
    NAME, VERSION, DATA_DIR = "winogrande", 0, "winogrande"
    FILES = {"validation": [SplitFile("dev.jsonl"), SplitFile("validation.jsonl")],
             "train": [SplitFile("train_xl.jsonl"), SplitFile("train.jsonl"),
                       SplitFile("train_l.jsonl", count=10234,
                                 fallback="train_l = first 10234 of 40398 train_xl records")]}
    PUBLISHED = {"validation": 1267, "train": 40398}

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        doc = {k: field(rec, k, where, str) for k in ("sentence", "option1", "option2")}
        if "_" not in doc["sentence"]:
            raise ValueError(f"{where}: field 'sentence' has no blank '_'")
        doc["answer"] = label_index(field(rec, "answer", where), ["1", "2"], where, key="answer")  # -> 0/1
        return doc

    @staticmethod
    def partial_context(doc: Doc, option: str) -> str:
        return doc["sentence"][:doc["sentence"].index("_")] + option  # everything after the blank dropped

    @staticmethod
    def partial_target(doc: Doc) -> str:
        return " " + doc["sentence"][doc["sentence"].index("_") + 1:].strip()

    def doc_to_text(self, doc: Doc) -> str:
        return self.partial_context(doc, doc["option1"] if doc["answer"] == 0 else doc["option2"])

    def doc_to_target(self, doc: Doc) -> str:
        return self.partial_target(doc)

    def construct_requests(self, doc: Doc, ctx: str) -> list[Request]:
        """Replace the doc's own (correct-option) segment at the end of ctx by each option's partial context."""
        demos = ctx.split("\n\n")[:-1]
        target = self.partial_target(doc)
        return [Request("\n\n".join([*demos, self.partial_context(doc, doc[o])]), target)
                for o in ("option1", "option2")]

    def process_results(self, doc: Doc, results: Sequence[Result]) -> dict[str, Any]:
        return {"acc": float(first_argmax([ll for ll, _ in results]) == doc["answer"])}
