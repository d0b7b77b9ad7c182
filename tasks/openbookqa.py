"""OpenBookQA (main config): evaluated on test, demos from train; the stem is the query, no wrapper.

Mirrors lm-evaluation-harness v0.3 `lm_eval/tasks/openbookqa.py` (prompts in docs/method.md).
Mihaylov et al., "Can a Suit of Armor Conduct Electricity? A New Dataset for Open Book Question
Answering", EMNLP 2018, https://arxiv.org/abs/1809.02789, https://allenai.org/data/open-book-qa.
Reads OpenBookQA-V1-Sep2018 Data/Main jsonl (`question.stem`, `question.choices`) or an HF
`openbookqa/main` export (`question_stem`, `choices{text[],label[]}`); both are named test/train.jsonl.
"""

from __future__ import annotations

from typing import Any

from .arc import choices_and_gold
from .base import Doc, MultipleChoiceTask
from .data import SplitFile, field


class OpenBookQA(MultipleChoiceTask):
    NAME, VERSION, DATA_DIR = "openbookqa", 0, "openbookqa"
    EVAL_SPLIT = "test"
    FILES = {"test": [SplitFile("test.jsonl")], "train": [SplitFile("train.jsonl")]}
    PUBLISHED = {"test": 500, "train": 4957}

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        if "question_stem" in rec:  # HF export
            stem, (choices, gold) = rec["question_stem"], choices_and_gold(rec, where, "choices")
        else:
            stem = field(rec, "question.stem", where, str)
            choices, gold = choices_and_gold(rec, where, "question.choices")
        return {"id": rec.get("id"), "query": stem, "choices": choices, "gold": gold}
