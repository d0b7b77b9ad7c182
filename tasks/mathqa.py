"""MathQA: math word problems with 5 options parsed from one string; evaluated on test.

Mirrors lm-evaluation-harness v0.3 `lm_eval/tasks/mathqa.py` (prompts in docs/method.md).
Amini et al., "MathQA: Towards Interpretable Math Word Problem Solving with Operation-Based
Formalisms", NAACL 2019, https://arxiv.org/abs/1905.13319, https://math-qa.github.io/.
Reads the release (test.json / train.json, one JSON array each) or an HF `math_qa` export
(test.jsonl / train.jsonl). Fallback: dev.json as the few-shot pool (train.json missing), a
deviation from lm-eval. paper_quirks=True: demo targets without the leading space (the paper's fork).
"""

from __future__ import annotations

import re
from typing import Any

from .base import Doc, MultipleChoiceTask
from .data import SplitFile, field

OPTION_RE = re.compile(r"[abcd] \) .*?, |e \) .*?$")


def parse_options(options: str) -> list[str]:
    """lm-eval's parse: lazy match up to the first ", " (so "10 , 000" style options are cut), drop "a ) "."""
    return [m[4:].rstrip(" ,") for m in OPTION_RE.findall(options)]


class MathQA(MultipleChoiceTask):
    NAME, VERSION, DATA_DIR = "mathqa", 0, "mathqa"
    EVAL_SPLIT = "test"
    FILES = {"test": [SplitFile("test.json", fmt="json"), SplitFile("test.jsonl")],
             "train": [SplitFile("train.json", fmt="json"), SplitFile("train.jsonl"),
                       SplitFile("dev.json", fmt="json", count=4475,
                                 fallback="dev.json used as the few-shot pool (train.json missing; deviation)")]}
    PUBLISHED = {"test": 2985, "train": 29837}

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        correct = field(rec, "correct", where, str)
        if correct not in "abcde" or len(correct) != 1:
            raise ValueError(f"{where}: field 'correct' = {correct!r}, expected one of a-e")
        choices = parse_options(field(rec, "options", where, str))
        if "abcde".index(correct) >= len(choices):
            raise ValueError(f"{where}: 'correct' = {correct!r} but only {len(choices)} options parse from 'options'")
        return {"query": "Question: " + field(rec, "Problem", where, str) + "\nAnswer:",
                "choices": choices, "gold": "abcde".index(correct)}

    def doc_to_target(self, doc: Doc) -> str:
        gold = doc["choices"][doc["gold"]]
        return gold if self.paper_quirks else " " + gold
