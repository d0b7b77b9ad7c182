"""MultiRC: one doc per (paragraph, question, candidate answer) row; acc = all answers of a question right.

Mirrors lm-evaluation-harness v0.3 `superglue.MultiRC` (prompts in docs/method.md).
Khashabi et al., "Looking Beyond the Surface: A Challenge Set for Reading Comprehension over
Multiple Sentences", NAACL 2018, https://cogcomp.seas.upenn.edu/multirc/ (SuperGLUE version).
The release nests questions and answers under each paragraph; they are flattened to answer rows in
file order (paragraph, question, answer), exactly as HF `super_glue/multirc` does. An HF export
(one answer row per line: paragraph, question, answer, idx, label) is read as is.
"""

from __future__ import annotations

from typing import Any, Sequence

from .base import Doc, Request, Result, Task
from .data import Record, SplitFile, field, label_index


class MultiRC(Task):
    NAME, VERSION, DATA_DIR = "multirc", 1, "multirc"
    FILES = {"validation": [SplitFile("val.jsonl"), SplitFile("validation.jsonl")],
             "train": [SplitFile("train.jsonl")]}
    PUBLISHED = {"validation": 4848, "train": 27243}  # answer rows (953 / 5131 questions)
    METRICS = {"acc": "acc_all"}

    def process_records(self, records: list[Record], split: str) -> list[Doc]:
        docs = []
        for where, rec in records:
            if "paragraph" in rec:  # HF export: already one answer row
                docs.append(self._row(where, rec["paragraph"], rec.get("question"), rec.get("answer"),
                                      field(rec, "idx", where, dict), field(rec, "label", where)))
                continue
            p_idx = field(rec, "idx", where)
            text = field(rec, "passage.text", where, str)
            for qi, q in enumerate(field(rec, "passage.questions", where, list)):
                q_where = f"{where} (question {qi})"
                for ai, a in enumerate(field(q, "answers", q_where, list)):
                    a_where = f"{q_where} (answer {ai})"
                    idx = {"paragraph": p_idx, "question": field(q, "idx", q_where), "answer": field(a, "idx", a_where)}
                    docs.append(self._row(a_where, text, field(q, "question", q_where, str),
                                          field(a, "text", a_where, str), idx, field(a, "label", a_where)))
        return docs

    @staticmethod
    def _row(where: str, paragraph: Any, question: Any, answer: Any, idx: dict, label: Any) -> Doc:
        row = {"paragraph": paragraph, "question": question, "answer": answer}
        for k, v in row.items():
            if not isinstance(v, str):
                raise ValueError(f"{where}: missing or non-string field '{k}'")
        for k in ("paragraph", "question"):
            if k not in idx:
                raise ValueError(f"{where}: field 'idx' lacks '{k}' (needed to group answers by question)")
        return {**row, "idx": idx, "label": label_index(label, ["False", "True"], where)}

    @staticmethod
    def format_answer(answer: str, label: bool) -> str:
        return f"{answer}\nIs the answer correct? {'yes' if label else 'no'}"

    def doc_to_text(self, doc: Doc) -> str:
        return f"{doc['paragraph']}\nQuestion: {doc['question']}\nAnswer:"

    def doc_to_target(self, doc: Doc) -> str:
        return " " + self.format_answer(doc["answer"], doc["label"] == 1)

    def construct_requests(self, doc: Doc, ctx: str) -> list[Request]:
        return [Request(ctx, " " + self.format_answer(doc["answer"], True)),
                Request(ctx, " " + self.format_answer(doc["answer"], False))]

    def process_results(self, doc: Doc, results: Sequence[Result]) -> dict[str, Any]:
        """acc: ((paragraph idx, question idx), row correct), grouped by `acc_all` at aggregation."""
        (ll_true, _), (ll_false, _) = results
        correct = (ll_true > ll_false) == (doc["label"] == 1)
        return {"acc": ((doc["idx"]["paragraph"], doc["idx"]["question"]), float(correct))}
