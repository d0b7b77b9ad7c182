"""HellaSwag: pick the plausible continuation of an ActivityNet / WikiHow context.

Mirrors lm-evaluation-harness v0.3 `lm_eval/tasks/hellaswag.py` (prompts in docs/method.md).
Zellers et al., "HellaSwag: Can a Machine Really Finish Your Sentence?", ACL 2019,
https://arxiv.org/abs/1905.07830, https://rowanzellers.com/hellaswag/ (data MIT-licensed).
Reads rowanz/hellaswag jsonl (hellaswag_val.jsonl / hellaswag_train.jsonl) or an HF `hellaswag`
export. Fallbacks (docs/data.md): klosax's derived text dump of the val set
(hellaswag_val_full.txt.bz2), whose context line is already preprocessed and has lost the
ctx_a/ctx_b boundary, so ctx_b is NOT re-capitalised ("...on a roof. he" where lm-eval has
"He"): prompts from it are approximate; and the first 3368 train records.
"""

from __future__ import annotations

import re
from typing import Any

from .base import Doc, MultipleChoiceTask
from .data import SplitFile, field, label_index


def preprocess(text: str) -> str:
    """lm-eval HellaSwag.preprocess, in order: strip, " [title]" -> ". ", drop [..] tags, one pass of "  " -> " "."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


class HellaSwag(MultipleChoiceTask):
    NAME, VERSION, DATA_DIR = "hellaswag", 0, "hellaswag"
    FILES = {"validation": [SplitFile("hellaswag_val.jsonl"), SplitFile("validation.jsonl"),
                            SplitFile("hellaswag_val_full.txt.bz2", fmt="hellaswag_txt_bz2",
                                      fallback="derived text dump of val: ctx_b not re-capitalised, "
                                               "prompts approximate")],
             "train": [SplitFile("hellaswag_train.jsonl"), SplitFile("train.jsonl"),
                       SplitFile("hellaswag_train.jsonl.head3368.jsonl", count=3368,
                                 fallback="first 3368 of 39905 train records")]}
    PUBLISHED = {"validation": 10042, "train": 39905}

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        if "ctx_line" in rec:  # derived dump: "<activity_label>: <ctx>" already preprocessed
            query = preprocess(rec["ctx_line"])
        else:
            ctx_b = field(rec, "ctx_b", where, str)
            ctx = field(rec, "ctx_a", where, str) + " " + ctx_b.capitalize()  # capitalize() lowercases the rest
            query = preprocess(field(rec, "activity_label", where, str) + ": " + ctx)
        endings = field(rec, "endings", where, list)
        if len(endings) != 4 or not all(isinstance(e, str) for e in endings):
            raise ValueError(f"{where}: field 'endings' must hold 4 strings, got {endings!r:.80}")
        return {"query": query, "choices": [preprocess(e) for e in endings],
                "gold": label_index(field(rec, "label", where), ["0", "1", "2", "3"], where)}
