"""PIQA: physical commonsense, two solutions per goal; labels in a separate .lst file.

Mirrors lm-evaluation-harness v0.3 `lm_eval/tasks/piqa.py` (prompts in docs/method.md).
Bisk et al., "PIQA: Reasoning about Physical Commonsense in Natural Language", AAAI 2020,
https://arxiv.org/abs/1911.11641, https://yonatanbisk.com/piqa/ (Academic Free License v3.0).
Reads the release (valid.jsonl + valid-labels.lst, train.jsonl + train-labels.lst, line-aligned)
or an HF `piqa` export (validation.jsonl / train.jsonl with a `label` field). Without the train split
(docs/data.md) few-shot (k>0) then raises a clear error; 0-shot works. The bundled samples carry
a labelled stand-in pool cut from the validation file after their eval docs.
"""

from __future__ import annotations

from typing import Any

from .base import Doc, MultipleChoiceTask
from .data import SplitFile, field, label_index


# The bundled samples' few-shot pool (study/make_samples.py): the real train file is not available.
STANDIN_TRAIN, STANDIN_TRAIN_LABELS = "standin_train_from_valid.jsonl", "standin_train_from_valid-labels.lst"


class PiQA(MultipleChoiceTask):
    NAME, VERSION, DATA_DIR = "piqa", 0, "piqa"
    FILES = {"validation": [SplitFile("valid.jsonl", labels="valid-labels.lst"), SplitFile("validation.jsonl")],
             "train": [SplitFile("train.jsonl", labels="train-labels.lst"),
                       SplitFile(STANDIN_TRAIN, labels=STANDIN_TRAIN_LABELS, standin=True,
                                 fallback="STAND-IN for train: validation records cut after the sample's eval "
                                          "docs (disjoint from them); few-shot demos only")]}
    PUBLISHED = {"validation": 1838, "train": 16113}

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        return {"query": "Question: " + field(rec, "goal", where, str) + "\nAnswer:",
                "choices": [field(rec, "sol1", where, str), field(rec, "sol2", where, str)],
                "gold": label_index(field(rec, "label", where), ["0", "1"], where)}
