"""SuperGLUE tasks with one record per doc: BoolQ, CB, COPA, WiC, WSC (MultiRC: multirc.py, ReCoRD: record.py).

Mirrors lm-evaluation-harness v0.3 `lm_eval/tasks/superglue.py` (prompts in
docs/method.md). Benchmark: Wang et al., "SuperGLUE: A Stickier Benchmark for General-Purpose
Language Understanding Systems", NeurIPS 2019, https://arxiv.org/abs/1905.00537,
https://super.gluebenchmark.com/.
Reads the SuperGLUE release jsonl (val.jsonl/train.jsonl; boolean or class-name labels) or the HF
`super_glue` export (validation.jsonl/train.jsonl; integer labels, WSC spans flattened).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from .base import Doc, Request, Result, Task, first_argmax
from .data import SplitFile, field, label_index

VAL = [SplitFile("val.jsonl"), SplitFile("validation.jsonl")]
TRAIN = [SplitFile("train.jsonl")]


class _YesNoTask(Task):
    """Two requests " yes" / " no"; a strict LL(" yes") > LL(" no") predicts label 1 (ties: "no")."""

    def doc_to_target(self, doc: Doc) -> str:
        return " yes" if doc["label"] == 1 else " no"

    def construct_requests(self, doc: Doc, ctx: str) -> list[Request]:
        return [Request(ctx, " yes"), Request(ctx, " no")]

    def process_results(self, doc: Doc, results: Sequence[Result]) -> dict[str, Any]:
        (ll_yes, _), (ll_no, _) = results
        return {"acc": float((ll_yes > ll_no) == (doc["label"] == 1))}


class BoolQ(_YesNoTask):
    """Clark et al. 2019, "BoolQ: Exploring the Surprising Difficulty of Natural Yes/No Questions"."""

    NAME, VERSION, DATA_DIR = "boolq", 1, "boolq"
    FILES = {"validation": VAL,
             "train": TRAIN + [SplitFile("fewglue_train.jsonl", count=32,
                                         fallback="FewGLUE 32-record subset of train (full train missing)")]}
    PUBLISHED = {"validation": 3270, "train": 9427}

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        return {"passage": field(rec, "passage", where, str), "question": field(rec, "question", where, str),
                "label": label_index(field(rec, "label", where), ["False", "True"], where)}

    def doc_to_text(self, doc: Doc) -> str:
        return f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"


class CommitmentBank(Task):
    """de Marneffe et al. 2019, "The CommitmentBank"; acc and macro-F1 over the 3 classes."""

    NAME, VERSION, DATA_DIR = "cb", 1, "cb"
    FILES = {"validation": VAL, "train": TRAIN}
    PUBLISHED = {"validation": 56, "train": 250}
    METRICS = {"acc": "mean", "f1": "f1_macro"}
    LABELS = ["entailment", "contradiction", "neutral"]
    ANSWERS = [" True", " False", " Neither"]

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        return {"premise": field(rec, "premise", where, str), "hypothesis": field(rec, "hypothesis", where, str),
                "label": label_index(field(rec, "label", where), self.LABELS, where)}

    def doc_to_text(self, doc: Doc) -> str:
        return f"{doc['premise']}\nQuestion: {doc['hypothesis']}. True, False or Neither?\nAnswer:"

    def doc_to_target(self, doc: Doc) -> str:
        return self.ANSWERS[doc["label"]]

    def construct_requests(self, doc: Doc, ctx: str) -> list[Request]:
        return [Request(ctx, a) for a in self.ANSWERS]

    def process_results(self, doc: Doc, results: Sequence[Result]) -> dict[str, Any]:
        pred = first_argmax([ll for ll, _ in results])
        return {"acc": float(pred == doc["label"]), "f1": (pred, doc["label"])}


class Copa(Task):
    """Roemmele et al. 2011, "Choice of Plausible Alternatives"; connector " because"/" therefore"."""

    NAME, VERSION, DATA_DIR = "copa", 0, "copa"
    FILES = {"validation": VAL, "train": TRAIN}
    PUBLISHED = {"validation": 100, "train": 400}
    CONNECTOR = {"cause": "because", "effect": "therefore"}

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        doc = {k: field(rec, k, where, str) for k in ("premise", "choice1", "choice2", "question")}
        if doc["question"] not in self.CONNECTOR:
            raise ValueError(f"{where}: field 'question' = {doc['question']!r}, expected 'cause' or 'effect'")
        doc["label"] = label_index(field(rec, "label", where), ["0", "1"], where)
        return doc

    @staticmethod
    def convert_choice(choice: str) -> str:
        return choice[0].lower() + choice[1:]  # only the first letter; the final period stays

    def doc_to_text(self, doc: Doc) -> str:
        # The premise's last character (its period) is dropped before the connector.
        return doc["premise"].strip()[:-1] + " " + self.CONNECTOR[doc["question"]]

    def doc_to_target(self, doc: Doc) -> str:
        return " " + self.convert_choice(doc["choice1"] if doc["label"] == 0 else doc["choice2"])

    def construct_requests(self, doc: Doc, ctx: str) -> list[Request]:
        return [Request(ctx, " " + self.convert_choice(doc[c])) for c in ("choice1", "choice2")]

    def process_results(self, doc: Doc, results: Sequence[Result]) -> dict[str, Any]:
        return {"acc": float(first_argmax([ll for ll, _ in results]) == doc["label"])}


class WordsInContext(_YesNoTask):
    """Pilehvar & Camacho-Collados 2019, "WiC: the Word-in-Context Dataset"; the word is sentence1[start1:end1]."""

    NAME, VERSION, DATA_DIR = "wic", 0, "wic"
    FILES = {"validation": VAL, "train": TRAIN}
    PUBLISHED = {"validation": 638, "train": 5428}

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        doc = {k: field(rec, k, where, str) for k in ("sentence1", "sentence2")}
        doc.update({k: field(rec, k, where, int) for k in ("start1", "end1")})
        doc["label"] = label_index(field(rec, "label", where), ["False", "True"], where)
        return doc

    def doc_to_text(self, doc: Doc) -> str:
        word = doc["sentence1"][doc["start1"]:doc["end1"]]
        return (f"Sentence 1: {doc['sentence1']}\nSentence 2: {doc['sentence2']}\nQuestion: Is the word "
                f"'{word}' used in the same way in the two sentences above?\nAnswer:")


def general_detokenize(text: str) -> str:
    """lm-eval utils.general_detokenize, rules applied in this order."""
    text = text.replace(" n't", "n't").replace(" )", ")").replace("( ", "(")
    text = text.replace('" ', '"').replace(' "', '"')
    return re.sub(r" (['.,])", r"\1", text)


class SGWinogradSchemaChallenge(_YesNoTask):
    """Levesque et al. 2012, "The Winograd Schema Challenge" (SuperGLUE WSC, not wsc.fixed).
    Few-shot demos come from the label==True train rows only (GPT-3 paper)."""

    NAME, VERSION, DATA_DIR = "wsc", 0, "wsc"
    FILES = {"validation": VAL, "train": TRAIN}
    PUBLISHED = {"validation": 104, "train": 554}
    PAPER_TARGETS_DIFFER = True  # the paper's importance rows are the positives only

    def process_record(self, rec: dict[str, Any], where: str) -> Doc:
        # Release: spans nested under "target"; HF export: flattened to the top level.
        src = rec["target"] if isinstance(rec.get("target"), dict) else rec
        doc = {"text": field(rec, "text", where, str),
               "span1_text": field(src, "span1_text", where, str), "span2_text": field(src, "span2_text", where, str),
               "span2_index": field(src, "span2_index", where, int)}
        doc["label"] = label_index(field(rec, "label", where), ["False", "True"], where)
        return doc

    def fewshot_pool(self) -> list[Doc]:
        return [d for d in self.docs("train") if d["label"] == 1]

    def importance_docs(self) -> list[Doc]:
        # The paper's importance data is its training_docs, which it filtered to label==True (every
        # target " yes"); that quirk is kept behind paper_quirks. Default: all train rows.
        return self.fewshot_pool() if self.paper_quirks else self.docs("train")

    def doc_to_text(self, doc: Doc) -> str:
        pre = " ".join(doc["text"].split()[:doc["span2_index"]])
        post = doc["text"][len(pre) + len(doc["span2_text"]) + 1:]
        passage = general_detokenize(pre + " *" + doc["span2_text"] + "*" + post)
        return (f"Passage: {passage}\nQuestion: In the passage above, does the pronoun "
                f"\"*{doc['span2_text']}*\" refer to \"*{doc['span1_text']}*\"?\nAnswer:")
