"""Task tests on fixture records: interface, determinism, space convention, loaders (release and HF
export formats), clear errors, importance examples, and metric cases computed by hand."""

from __future__ import annotations

import bz2
import json
import math
import random
import shutil
from pathlib import Path

import pytest

from tasks.base import AGGREGATIONS, MultipleChoiceTask, acc_all, f1_macro, first_argmax, perplexity
from tasks.record import exact_match, normalize_answer, token_f1
from tasks.registry import TASKS, get_task

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"


@pytest.mark.parametrize("name", list(TASKS))
def test_interface_determinism_and_space_convention(name):
    cls = TASKS[name]
    assert cls.NAME == name and isinstance(cls.VERSION, int) and cls.DATA_DIR
    assert set(cls.METRICS) and all(a in AGGREGATIONS for a in cls.METRICS.values())
    assert cls.PRIMARY_METRIC in cls.METRICS and cls.EVAL_SPLIT in cls.PUBLISHED
    shots = 0 if name == "piqa" else 1
    a, b = get_task(name, FIXTURES).instances(shots), get_task(name, FIXTURES).instances(shots)
    assert len(a) == len(get_task(name, FIXTURES).eval_docs()) > 0
    assert [(i.doc_id, i.context, i.requests) for i in a] == [(i.doc_id, i.context, i.requests) for i in b]
    for inst in a:
        assert inst.requests
        for r in inst.requests:
            assert not r.context.endswith(" "), (name, r.context[-40:])
            assert r.continuation.startswith(" ") and len(r.continuation) > 1, (name, r.continuation)
        # one doc's process_results on fake log-likelihoods gives every declared metric, and aggregates
        fake = [(-float(j), j == 0) for j in range(len(inst.requests))]
        values = get_task(name, FIXTURES).process_results(inst.doc, fake)
        assert set(values) == set(cls.METRICS)
    task = get_task(name, FIXTURES)
    per_doc = [task.process_results(i.doc, [(-float(j), j == 0) for j in range(len(i.requests))]) for i in a]
    for m in cls.METRICS:
        assert math.isfinite(task.aggregate(m, [v[m] for v in per_doc]))


def test_limit_keeps_the_first_docs_after_the_shuffle():
    task = get_task("copa", FIXTURES)
    assert [i.doc_id for i in task.instances(0, limit=3)] == [i.doc_id for i in task.instances(0)][:3]
    assert sorted(i.doc_id for i in task.instances(0)) == list(range(8))
    assert [i.doc_id for i in task.instances(0)] != list(range(8))  # Random(42) does move them


def test_registry_error_lists_valid_names():
    with pytest.raises(KeyError, match="boolq.*lambada"):
        get_task("boolk", FIXTURES)


def test_request_counts_follow_each_tasks_rule():
    inst = get_task("record", FIXTURES).instances(0)[0]
    assert len(inst.requests) == len(inst.doc["entities"]) > 1
    assert len(get_task("arc_easy", FIXTURES).instances(0)[0].requests) == len(
        get_task("arc_easy", FIXTURES).instances(0)[0].doc["choices"])
    assert all(len(i.requests) == 5 for i in get_task("mathqa", FIXTURES).instances(0))


def test_piqa_missing_train_blocks_fewshot_only():
    task = get_task("piqa", FIXTURES)
    assert len(task.instances(0)) == 8
    with pytest.raises(FileNotFoundError, match=r"piqa: train split missing.*few-shot \(k>0\).*0-shot"):
        task.instances(1)


def test_wsc_fewshot_pool_is_positive_rows_only():
    task = get_task("wsc", FIXTURES)
    assert len(task.fewshot_pool()) == 9 and all(d["label"] == 1 for d in task.fewshot_pool())
    assert all(c.split("\nAnswer:")[1].startswith(" yes") for c in task.instances(5)[0].context.split("\n\n")[:-1])


def test_multirc_flattens_paragraph_question_answer_in_file_order():
    docs = get_task("multirc", FIXTURES).eval_docs()
    raw = json.loads((FIXTURES / "multirc/val.jsonl").read_text().splitlines()[0])
    q0 = raw["passage"]["questions"][0]
    assert [d["answer"] for d in docs[:len(q0["answers"])]] == [a["text"] for a in q0["answers"]]
    assert docs[0]["idx"] == {"paragraph": raw["idx"], "question": q0["idx"], "answer": q0["answers"][0]["idx"]}
    assert len(docs) == 87  # answer rows of the first 2 paragraphs (counted by the loader's definition)


def test_record_entities_come_from_inclusive_spans():
    raw = json.loads((FIXTURES / "record/val.jsonl").read_text().splitlines()[0])
    text = raw["passage"]["text"]
    doc = get_task("record", FIXTURES).eval_docs()[0]
    spans = {text[e["start"]:e["end"] + 1] for e in raw["passage"]["entities"]}
    assert doc["entities"] == sorted(spans) and "Gree" in doc["entities"]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_hf_exports_load_to_the_same_docs(tmp_path):
    """Hand-made HF-`datasets`-style rows (their field names and int labels) equal the release records."""
    _write_jsonl(tmp_path / "boolq/validation.jsonl", [{"question": "is it", "passage": "P -- x", "idx": 0, "label": 1}])
    _write_jsonl(tmp_path / "rte/validation.jsonl", [{"sentence1": "A.", "sentence2": "B.", "label": 1, "idx": 0}])
    _write_jsonl(tmp_path / "wsc/validation.jsonl", [{"text": "Mark lied . He erred .", "span1_index": 0,
                 "span2_index": 3, "span1_text": "Mark", "span2_text": "He", "idx": 0, "label": 0}])
    _write_jsonl(tmp_path / "arc_easy/test.jsonl", [{"id": "q", "question": "Why?", "answerKey": "2",
                 "choices": {"text": ["a", "b"], "label": ["1", "2"]}}])
    _write_jsonl(tmp_path / "multirc/validation.jsonl", [{"paragraph": "P", "question": "Q", "answer": "A",
                 "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": 0}])
    _write_jsonl(tmp_path / "record/validation.jsonl", [{"passage": "Body\n@highlight\nH", "query": "@placeholder won",
                 "entities": ["B", "A", "B"], "answers": ["A"], "idx": {"passage": 0, "query": 0}}])
    assert get_task("boolq", tmp_path).eval_docs() == [{"passage": "P -- x", "question": "is it", "label": 1}]
    assert get_task("rte", tmp_path).eval_docs() == [{"sentence1": "A.", "sentence2": "B.", "label": 1}]
    wsc = get_task("wsc", tmp_path)
    assert wsc.doc_to_text(wsc.eval_docs()[0]).startswith("Passage: Mark lied. *He* erred.\n")
    arc = get_task("arc_easy", tmp_path).eval_docs()[0]
    assert arc["gold"] == 1 and arc["choices"] == ["a", "b"]  # "2" -> "B"
    assert get_task("multirc", tmp_path).eval_docs()[0]["answer"] == "A"
    rec = get_task("record", tmp_path)
    assert rec.eval_docs()[0]["entities"] == ["A", "B"]
    assert rec.doc_to_text(rec.eval_docs()[0]) == "Body\n\n  - H.\n"


# -- errors name the file and the line ------------------------------------------------------------

def _copy(tmp_path: Path, task: str) -> Path:
    shutil.copytree(FIXTURES / task, tmp_path / task)
    return tmp_path / task


def test_malformed_line_names_file_and_line(tmp_path):
    d = _copy(tmp_path, "boolq")
    lines = (d / "val.jsonl").read_text().splitlines(keepends=True)
    (d / "val.jsonl").write_text(lines[0] + '{"question": "x", \n' + "".join(lines[1:]))
    with pytest.raises(ValueError, match=r"boolq/val\.jsonl:2: malformed JSON"):
        get_task("boolq", tmp_path).eval_docs()


def test_missing_field_names_file_line_and_key(tmp_path):
    d = _copy(tmp_path, "cb")
    rows = [json.loads(x) for x in (d / "val.jsonl").read_text().splitlines()]
    del rows[2]["hypothesis"]
    _write_jsonl(d / "val.jsonl", rows)
    with pytest.raises(ValueError, match=r"cb/val\.jsonl:3: missing field 'hypothesis'"):
        get_task("cb", tmp_path).eval_docs()


def test_bad_label_and_missing_file_and_label_file_mismatch(tmp_path):
    d = _copy(tmp_path, "winogrande")
    rows = [json.loads(x) for x in (d / "dev.jsonl").read_text().splitlines()]
    rows[0]["answer"] = "3"
    _write_jsonl(d / "dev.jsonl", rows)
    with pytest.raises(ValueError, match=r"dev\.jsonl:1: field 'answer' = '3'"):
        get_task("winogrande", tmp_path).eval_docs()
    with pytest.raises(FileNotFoundError, match=r"copa: validation split missing: none of \[val\.jsonl, validation\.jsonl\]"):
        get_task("copa", tmp_path).eval_docs()
    p = _copy(tmp_path, "piqa")
    (p / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(ValueError, match=r"valid-labels\.lst: 2 labels for 8 records"):
        get_task("piqa", tmp_path).eval_docs()
    (p / "valid-labels.lst").unlink()
    with pytest.raises(FileNotFoundError, match=r"valid-labels\.lst: not found"):
        get_task("piqa", tmp_path).eval_docs()


def test_truncated_hellaswag_dump_and_mathqa_array_errors(tmp_path):
    d = _copy(tmp_path, "hellaswag")
    (d / "hellaswag_val_full.txt.bz2").write_bytes(bz2.compress(b"ctx\n1\na\nb\n"))
    with pytest.raises(ValueError, match="not a multiple of 6"):
        get_task("hellaswag", tmp_path).eval_docs()
    m = _copy(tmp_path, "mathqa")
    (m / "test.json").write_text('[\n {"Problem": "x",\n')
    with pytest.raises(ValueError, match=r"mathqa/test\.json:3: malformed JSON"):
        get_task("mathqa", tmp_path).eval_docs()


# -- quirks ---------------------------------------------------------------------------------------

def test_hellaswag_preprocess_and_capitalize_on_an_original_record(tmp_path):
    from tasks.hellaswag import preprocess

    # strip -> "Cook [title] Heat the pan.  [step] Add oil."; " [title]" -> ". " gives "Cook.  Heat";
    # dropping "[step]" leaves 3 spaces after "pan."; one non-overlapping "  " -> " " pass leaves 2 there.
    assert preprocess(" Cook [title] Heat the pan.  [step] Add oil. ") == "Cook. Heat the pan.  Add oil."
    _write_jsonl(tmp_path / "hellaswag/hellaswag_val.jsonl", [{"activity_label": "Roof shingle removal",
                 "ctx_a": "A man is sitting on a roof.", "ctx_b": "he IS", "endings": ["a", "b", "c", "d"], "label": 3}])
    assert get_task("hellaswag", tmp_path).eval_docs()[0]["query"] == "Roof shingle removal: A man is sitting on a roof. He is"


def test_mathqa_option_regex_including_the_comma_quirk():
    from tasks.mathqa import parse_options

    assert parse_options("a ) rs . 400 , b ) rs . 300 , c ) rs . 500 , d ) rs . 350 , e ) none of these") == [
        "rs . 400", "rs . 300", "rs . 500", "rs . 350", "none of these"]
    # the lazy ".*?, " stops after "10 , ": "10 , 000" is cut to "10", and "000 , " is skipped
    assert parse_options("a ) 10 , 000 , b ) 2 , c ) 3 , d ) 4 , e ) 5") == ["10", "2", "3", "4", "5"]


def test_copa_wsc_detokenize_and_lambada_target():
    from tasks.superglue import general_detokenize

    assert general_detokenize('He did n\'t say " hi " ( ok ) , then left .') == "He didn't say\"hi\"(ok), then left."
    lam = get_task("lambada", FIXTURES)
    assert lam.doc_to_target({"text": 'He said "go home."'}) == ' home."'


def test_importance_examples_follow_the_paper():
    rng = random.Random(1234)
    arc = get_task("arc_easy", FIXTURES)
    reqs = arc.importance_examples(3, 1, rng, paper_quirks=True)
    docs = arc.docs("train")
    assert [r.continuation for r in reqs] == [d["choices"][d["gold"]] for d in docs[:3]]  # no leading space
    assert all(r.context.endswith(arc.doc_to_text(d)) for r, d in zip(reqs, docs))
    assert arc.importance_examples(2, 0, rng)[0].continuation == " " + docs[0]["choices"][docs[0]["gold"]]
    mq = get_task("mathqa", FIXTURES).importance_examples(2, 2, random.Random(0), paper_quirks=True)
    assert "\nAnswer: " not in mq[0].context and not mq[0].continuation.startswith(" ")
    # The paper's WSC importance data is the positive-only pool (paper_quirks); by default all rows.
    wsc = get_task("wsc", FIXTURES).importance_examples(100, 0, rng, paper_quirks=True)
    assert len(wsc) == 9 and {r.continuation for r in wsc} == {" yes"}
    wsc_all = get_task("wsc", FIXTURES).importance_examples(100, 0, rng)
    assert len(wsc_all) > 9 and {r.continuation for r in wsc_all} == {" yes", " no"}
    boolq = get_task("boolq", FIXTURES).importance_examples(100, 1, rng, paper_quirks=True)
    assert len(boolq) == 8 and all(r.continuation in (" yes", " no") for r in boolq)
    assert len(get_task("lambada", FIXTURES).importance_examples(5, 1, rng)) == 5


# -- metrics, computed by hand --------------------------------------------------------------------

def test_acc_all_groups_answers_by_question():
    # q1: both rows right -> 1; q2: one of three wrong -> 0; q3: single right row -> 1  => 2/3
    values = [((0, 1), 1.0), ((0, 1), 1.0), ((0, 2), 1.0), ((0, 2), 0.0), ((0, 2), 1.0), ((1, 1), 1.0)]
    assert acc_all(values) == pytest.approx(2 / 3, abs=1e-12)  # exact ratio; 1e-12 is float rounding only
    assert acc_all([([0, 1], 1.0), ([0, 1], 0.0), ([0, 2], 1.0)]) == 0.5  # keys as lists after a JSON round trip


def test_cb_macro_f1_by_hand():
    # (pred, gold) pairs; per-class F1 = 2tp / (2tp + fp + fn)
    pairs = [(0, 0), (0, 0), (0, 2), (1, 1), (2, 1)]
    # class 0: tp 2, fp 1 (0,2), fn 0 -> 4/5; class 1: tp 1, fp 0, fn 1 (2,1) -> 2/3; class 2: tp 0 fp 1 fn 1 -> 0
    assert f1_macro(pairs) == pytest.approx((4 / 5 + 2 / 3 + 0) / 3, abs=1e-12)  # float rounding only
    task = get_task("cb", FIXTURES)
    doc = {"label": 2}
    assert task.process_results(doc, [(-1.0, False), (-1.0, False), (-1.0, False)]) == {"acc": 0.0, "f1": (0, 2)}


def test_record_em_f1_with_squad_normalisation():
    assert normalize_answer("The  Blue-Jays!") == "bluejays"
    assert exact_match("the U.S.", "US") == 1.0
    # gold "new york city" vs pred "new york": common 2, precision 2/2, recall 2/3 -> F1 0.8
    assert token_f1("New York City", "the New York") == pytest.approx(0.8, abs=1e-12)  # float rounding only
    task = get_task("record", FIXTURES)
    doc = {"entities": ["Gree", "Japan", "Japanese"], "answers": ["Japan", "Japanese"]}
    assert task.process_results(doc, [(-3.0, False), (-1.0, False), (-2.0, False)]) == {"f1": 1.0, "em": 1.0}
    assert task.process_results(doc, [(-1.0, False), (-1.0, False), (-2.0, False)]) == {"f1": 0.0, "em": 0.0}  # tie: first


def test_squad_metrics_agree_with_the_transformers_reference():
    squad = pytest.importorskip("transformers.data.metrics.squad_metrics")
    pairs = [("New York City", "the New York"), ("U.S.", "us"), ("", ""), ("a", ""), ("Tanaka's firm", "tanaka firm"),
             ("Gree Inc.", "Gree"), ("the the", "The")]
    for gold, pred in pairs:
        assert exact_match(gold, pred) == squad.compute_exact(gold, pred)
        assert token_f1(gold, pred) == pytest.approx(squad.compute_f1(gold, pred), abs=1e-12)  # same formula


def test_acc_norm_uses_character_length_and_ties_take_the_first():
    task = get_task("arc_easy", FIXTURES)
    doc = {"choices": ["ab", "abcdef"], "gold": 1}
    # acc: -4 > -6 -> choice 0 (wrong). acc_norm: -4/2 = -2 < -6/6 = -1 -> choice 1 (right)
    assert MultipleChoiceTask.process_results(task, doc, [(-4.0, False), (-6.0, False)]) == {"acc": 0.0, "acc_norm": 1.0}
    assert first_argmax([1.0, 3.0, 3.0]) == 1


def test_yes_no_and_rte_tie_rules():
    boolq, rte = get_task("boolq", FIXTURES), get_task("rte", FIXTURES)
    assert boolq.process_results({"label": 0}, [(-1.0, False), (-1.0, False)]) == {"acc": 1.0}  # tie -> "no"
    assert boolq.process_results({"label": 1}, [(-0.5, False), (-1.0, False)]) == {"acc": 1.0}
    assert rte.process_results({"label": 0}, [(-1.0, False), (-1.0, False)]) == {"acc": 1.0}  # tie -> entailment
    assert rte.process_results({"label": 1}, [(-2.0, False), (-1.0, False)]) == {"acc": 1.0}


def test_lambada_perplexity_is_exp_of_minus_mean_doc_ll():
    assert perplexity([-1.0, -3.0]) == pytest.approx(math.e ** 2, rel=1e-12)  # float rounding only
    lam = get_task("lambada", FIXTURES)
    assert lam.process_results({"text": "a b"}, [(-2.5, True)]) == {"ppl": -2.5, "acc": 1.0}
    assert lam.aggregate("ppl", [-1.0, -3.0]) == pytest.approx(math.e ** 2, rel=1e-12)
    with pytest.raises(KeyError, match="has no metric 'f1'"):
        lam.aggregate("f1", [1.0])
