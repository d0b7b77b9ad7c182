"""tasks/metrics.py (hand-computed aggregation) and tasks/evaluate.py (end to end on fixture records)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import ROOT, random_model
from opt66b import OPTConfig, load_tokenizer
from tasks.base import Instance, Request
from tasks.evaluation import TaskEvaluation, evaluate_task
from tasks.lambada import LAMBADA
from tasks.metrics import split_results, task_metrics
from tasks.multirc import MultiRC
from tasks.registry import get_task
from tasks.superglue import CommitmentBank

FIXTURES = ROOT / "tests" / "fixtures" / "data"
TOKENIZER_DIR = ROOT / "opt66b" / "assets" / "tiny-opt"


def inst(doc, n):
    return Instance(0, doc, "ctx", [Request("ctx", f" c{i}") for i in range(n)])


def test_multirc_acc_all_hand_computed():
    # Question (0, 0): both rows right -> 1; question (0, 1): second row wrong -> 0. acc = 1/2.
    docs = [{"idx": {"paragraph": 0, "question": 0}, "label": 1}, {"idx": {"paragraph": 0, "question": 0}, "label": 0},
            {"idx": {"paragraph": 0, "question": 1}, "label": 1}, {"idx": {"paragraph": 0, "question": 1}, "label": 1}]
    results = [(-1.0, False), (-2.0, False),  # true > false: predicts 1, label 1: right
               (-3.0, False), (-2.5, False),  # predicts 0, label 0: right
               (-1.0, False), (-1.5, False),  # right
               (-4.0, False), (-1.0, False)]  # predicts 0, label 1: wrong
    assert task_metrics(MultiRC(FIXTURES), [inst(d, 2) for d in docs], results) == {"acc": 0.5}


def test_lambada_ppl_and_greedy_acc_hand_computed():
    instances = [inst({"text": "a b"}, 1), inst({"text": "c d"}, 1)]
    m = task_metrics(LAMBADA(FIXTURES), instances, [(-1.0, True), (-3.0, False)])
    assert m["acc"] == 0.5
    assert m["ppl"] == pytest.approx(math.exp(2.0), rel=1e-12)  # exp(-mean(-1, -3)), float64 only


def test_cb_macro_f1_hand_computed():
    # gold 0, 1, 2, 2; preds 0, 2, 2, 0 -> F1: class 0: tp1 fp1 fn0 = 2/3; class 1: 0; class 2: tp1 fp1 fn1 = 1/2.
    golds, preds = [0, 1, 2, 2], [0, 2, 2, 0]
    instances = [inst({"label": g}, 3) for g in golds]
    results = [r for p in preds for r in [(-1.0 if i == p else -5.0, False) for i in range(3)]]
    m = task_metrics(CommitmentBank(FIXTURES), instances, results)
    assert m["acc"] == 0.5
    assert m["f1"] == pytest.approx((2 / 3 + 0 + 1 / 2) / 3, rel=1e-12)  # exact fractions, float64 rounding only


def test_split_results_checks_counts():
    with pytest.raises(ValueError, match="got 3 results for 4 requests of 2 docs"):
        split_results([inst({}, 2), inst({}, 2)], [(0.0, True)] * 3)
    assert split_results([inst({}, 1), inst({}, 2)], [(1.0, True), (2.0, False), (3.0, True)]) == \
        [[(1.0, True)], [(2.0, False), (3.0, True)]]


def reference_results(model, tok, requests):
    """lm-eval style: one full forward per request, full logits, batch 1 (independent of the Scorer)."""
    out = []
    for r in requests:
        ctx, cont = tok.encode(r.context) or [tok.eos_id], tok.encode(r.continuation)
        inp = (ctx + cont)[-2049:][:-1]
        logp = torch.log_softmax(model(torch.tensor([inp])).logits[0, :, :50265].float(), -1)[len(inp) - len(cont):]
        target = torch.tensor(cont)
        out.append((logp.gather(1, target[:, None]).double().sum().item(), bool((logp.argmax(-1) == target).all())))
    return out


@pytest.fixture(scope="module")
def opt_vocab_model():
    cfg = OPTConfig(hidden_size=16, num_layers=2, num_heads=2, ffn_dim=32, vocab_size=50272, max_positions=2048)
    return random_model(cfg, seed=11), load_tokenizer(TOKENIZER_DIR)


@pytest.mark.parametrize("name,shots", [("copa", 1), ("winogrande", 1), ("lambada", 0), ("boolq", 0)])
def test_evaluation_matches_reference_on_fixtures(opt_vocab_model, name, shots):
    model, tok = opt_vocab_model
    task = get_task(name, FIXTURES)
    ev = TaskEvaluation(model, tok, task, shots, limit=4, seed=42, batch_tokens=512)
    metrics = ev.run()
    want = reference_results(model, tok, ev.requests)
    records = ev.records()
    assert [r["doc_id"] for r in records] == [i.doc_id for i in ev.instances for _ in i.requests]
    for rec, (ll, greedy) in zip(records, want):
        # fp32 model, float64 sums on both sides; different batching only reorders reductions.
        assert rec["loglikelihood"] == pytest.approx(ll, abs=1e-5) and rec["is_greedy"] == greedy
    assert {m: metrics[m] for m in task.METRICS} == task_metrics(task, ev.instances, want)
    assert set(metrics) == {*task.METRICS, *(f"{m}_stderr" for m in task.METRICS), "per_doc"}


def test_limit_keeps_first_docs_after_shuffle_and_evaluate_task(opt_vocab_model):
    model, tok = opt_vocab_model
    task = get_task("copa", FIXTURES)
    full = task.instances(1, seed=42)
    limited = task.instances(1, limit=3, seed=42)
    assert [(i.doc_id, i.context) for i in limited] == [(i.doc_id, i.context) for i in full[:3]]
    out = evaluate_task(model, tok, task, 1, limit=3, ffn_mask=torch.tensor([1.0, 0.0]))
    assert len(out["records"]) == 6 and set(out["records"][0]) == {"doc_id", "context", "continuation",
                                                                   "loglikelihood", "is_greedy"}
    unmasked = evaluate_task(model, tok, task, 1, limit=3)
    assert [r["loglikelihood"] for r in out["records"]] != [r["loglikelihood"] for r in unmasked["records"]]
