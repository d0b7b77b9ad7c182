"""LAMBADA (OpenAI's detokenized test set): predict a passage's last word; greedy acc and perplexity.

Mirrors lm-evaluation-harness v0.3 `lm_eval/tasks/lambada.py` with its dataset script (config
`original`, exposed as the validation split). Paperno et al.,
"The LAMBADA dataset: Word prediction requiring a broad discourse context", ACL 2016,
https://arxiv.org/abs/1606.06031; the OpenAI file (sha256 4aa8d02c...) is the one GPT-2 used.
No train split: demos are drawn from the same set, minus the evaluated doc.
"""

from __future__ import annotations

from typing import Any, Sequence

from .base import Doc, Request, Result, Task
from .data import SplitFile, field


class LAMBADA(Task):
    NAME, VERSION, DATA_DIR = "lambada", 0, "lambada"
    FEWSHOT_SPLIT = None
    FILES = {"validation": [SplitFile("lambada_test.jsonl"), SplitFile("validation.jsonl"), SplitFile("test.jsonl")]}
    PUBLISHED = {"validation": 5153}
    METRICS = {"ppl": "perplexity", "acc": "mean"}

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        text = field(rec, "text", where, str)
        if " " not in text:
            raise ValueError(f"{where}: field 'text' has no space, so there is no last word to predict")
        return {"text": text}

    def doc_to_text(self, doc: Doc) -> str:
        return doc["text"].rsplit(" ", 1)[0]

    def doc_to_target(self, doc: Doc) -> str:
        return " " + doc["text"].rsplit(" ", 1)[1]  # trailing punctuation stays attached

    def construct_requests(self, doc: Doc, ctx: str) -> list[Request]:
        return [Request(ctx, self.doc_to_target(doc))]

    def process_results(self, doc: Doc, results: Sequence[Result]) -> dict[str, Any]:
        (ll, is_greedy), = results
        return {"ppl": ll, "acc": float(is_greedy)}
