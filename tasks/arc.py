"""AI2 Reasoning Challenge, Easy and Challenge sets: evaluated on test, demos from train.

Mirrors lm-evaluation-harness v0.3 `lm_eval/tasks/arc.py` (prompts in docs/method.md).
Clark et al., "Think you have Solved Question Answering? Try ARC, the AI2 Reasoning Challenge",
2018, https://arxiv.org/abs/1803.05457, https://allenai.org/data/arc. Reads the ARC-V1-Feb2018
jsonl (`question.stem`, `question.choices[{text,label}]`) or an HF `ai2_arc` export
(`question`, `choices{text[],label[]}`).
"""

from __future__ import annotations

from typing import Any

from .base import Doc, MultipleChoiceTask
from .data import SplitFile, field

KEYS = ["A", "B", "C", "D", "E"]
NUM_TO_LETTER = {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}


def choices_and_gold(rec: dict[str, Any], where: str, choices_key: str) -> tuple[list[str], int]:
    """Choice texts and the gold index from an AI2-style record (release or HF layout)."""
    raw = field(rec, choices_key, where)
    texts = [field(c, "text", where, str) for c in raw] if isinstance(raw, list) else field(raw, "text", where, list)
    key = field(rec, "answerKey", where, str).strip()
    key = NUM_TO_LETTER.get(key, key)
    if key not in KEYS[:len(texts)]:
        raise ValueError(f"{where}: answerKey {key!r} does not name one of the {len(texts)} choices")
    return texts, KEYS.index(key)


class ARCEasy(MultipleChoiceTask):
    NAME, VERSION, DATA_DIR = "arc_easy", 0, "arc_easy"
    EVAL_SPLIT = "test"
    FILES = {"test": [SplitFile("ARC-Easy-Test.jsonl"), SplitFile("test.jsonl")],
             "train": [SplitFile("ARC-Easy-Train.jsonl"), SplitFile("train.jsonl")]}
    PUBLISHED = {"test": 2376, "train": 2251}

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        q = field(rec, "question", where)
        stem = field(q, "stem", where, str) if isinstance(q, dict) else q
        choices, gold = choices_and_gold(rec, where, "question.choices" if isinstance(q, dict) else "choices")
        return {"id": rec.get("id"), "query": "Question: " + stem + "\nAnswer:", "choices": choices, "gold": gold}


class ARCChallenge(ARCEasy):
    NAME, DATA_DIR = "arc_challenge", "arc_challenge"
    FILES = {"test": [SplitFile("ARC-Challenge-Test.jsonl"), SplitFile("test.jsonl")],
             "train": [SplitFile("ARC-Challenge-Train.jsonl"), SplitFile("train.jsonl")]}
    PUBLISHED = {"test": 1172, "train": 1119}
