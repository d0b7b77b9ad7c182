"""Prompt tests: hand-written request strings for the first doc of every task, the lm-eval few-shot
layout re-derived independently, and request hashes pinned per (task, VERSION).

Regenerate the pinned hashes after a deliberate prompt change (and bump that task's VERSION):

    python tests/test_prompts.py --update
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.registry import TASKS, get_task  # noqa: E402
from conftest import SHARED_DATA, needs_shared_data  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots" / "requests.json"
SHOTS = {name: (0,) if name == "piqa" else (0, 1, 5) for name in TASKS}  # fixture PIQA has no train split
VARIANTS = [(name, False) for name in TASKS] + [("mathqa", True)]


def snapshot_key(name: str, quirks: bool) -> str:
    return f"{name}-v{TASKS[name].VERSION}" + ("-paper_quirks" if quirks else "")


def request_hashes(name: str, quirks: bool) -> dict[str, str]:
    """sha256 of json [[doc_id, context, continuation], ...] over all fixture instances, per shot count."""
    task = get_task(name, FIXTURES, paper_quirks=quirks)
    out = {}
    for k in SHOTS[name]:
        rows = [[inst.doc_id, r.context, r.continuation] for inst in task.instances(k) for r in inst.requests]
        out[str(k)] = hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()
    return out


@pytest.mark.parametrize("name,quirks", VARIANTS)
def test_requests_pinned(name, quirks):
    pinned = json.loads(SNAPSHOTS.read_text()) if SNAPSHOTS.is_file() else {}
    key = snapshot_key(name, quirks)
    assert key in pinned, f"no pinned requests for {key}: run `python tests/test_prompts.py --update`"
    assert request_hashes(name, quirks) == pinned[key], (
        f"{name}'s requests changed: bump {TASKS[name].__name__}.VERSION, then `python tests/test_prompts.py --update`")


def test_a_one_character_prompt_change_changes_the_pinned_hash(monkeypatch):
    from tasks.superglue import Copa

    before = request_hashes("copa", False)
    monkeypatch.setattr(Copa, "CONNECTOR", {"cause": "because", "effect": "so"})
    after = request_hashes("copa", False)
    assert all(before[k] != after[k] for k in before)


def first(name: str):
    task = get_task(name, FIXTURES)
    doc = task.eval_docs()[0]
    ctx = task.fewshot_context(doc, 0, random.Random(0))
    return task, doc, ctx, [(r.context, r.continuation) for r in task.construct_requests(doc, ctx)]


# Expected strings below were written by hand from lm-eval v0.3's doc_to_text / doc_to_target and the
# raw fixture records.

def test_boolq_first_doc():
    _, _, ctx, reqs = first("boolq")
    assert ctx.startswith("Ethanol fuel -- All biomass goes through at least some of these steps")
    assert ctx.endswith("than producing gasoline.\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [c for _, c in reqs] == [" yes", " no"]


def test_cb_first_doc():
    _, _, ctx, reqs = first("cb")
    assert ctx == ("Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own portion "
                   "of titanic anatomy to shaft? Did he think he was helping?\n"
                   "Question: Valence was helping. True, False or Neither?\nAnswer:")
    assert [c for _, c in reqs] == [" True", " False", " Neither"]


def test_copa_first_doc():
    task, doc, ctx, reqs = first("copa")
    assert ctx == "The man turned on the faucet therefore"
    assert reqs == [(ctx, " the toilet filled with water."), (ctx, " water flowed from the spout.")]
    assert task.doc_to_target(doc) == " water flowed from the spout."


def test_multirc_first_doc():
    task, doc, ctx, reqs = first("multirc")
    assert ctx.startswith("What causes a change in motion? The application of a force.")
    assert ctx.endswith("This requires only a very small force. \nQuestion: Would the mass of a baseball affect how "
                        "much force you have to use to pick it up?\nAnswer:")
    assert [c for _, c in reqs] == [" No\nIs the answer correct? yes", " No\nIs the answer correct? no"]
    assert task.doc_to_target(doc) == " No\nIs the answer correct? no"


def test_record_first_doc():
    task, doc, ctx, reqs = first("record")
    assert ctx.endswith(".\n\n  - Yoshikazu Tanaka is billionaire founder of mobile games company, Gree.\n"
                        "  - The company is valued at $7 billion; personal wealth $2.2 billion.\n"
                        "  - Tanaka hopes his company can change Japanese society.\n"
                        "  - Mobile gaming sector one of few areas experiencing growth.\n")
    assert reqs[0][1] == "  - He hopes Gree can have positive impact on Asia as an example of a successful start-up."
    assert [c.split("impact on ")[1].split(" as an")[0] for _, c in reqs] == doc["entities"] == sorted(doc["entities"])
    assert task.doc_to_target(doc) == ("  - He hopes Gree can have positive impact on Japanese as an example of a "
                                       "successful start-up.")


def test_rte_first_doc():
    _, _, ctx, reqs = first("rte")
    assert ctx == ("Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according "
                   "to the Christopher Reeve Foundation.\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:")
    assert [c for _, c in reqs] == [" True", " False"]


def test_wic_first_doc():
    _, _, ctx, _ = first("wic")
    assert ctx == ("Sentence 1: An emerging professional class.\nSentence 2: Apologizing for losing your temper, even "
                   "though you were badly provoked, showed real class.\nQuestion: Is the word 'class' used in the same "
                   "way in the two sentences above?\nAnswer:")


def test_wsc_first_doc():
    # raw: "Bernard , who had ... could take his claim away from him ." with span2 "him" at word 47
    _, _, ctx, reqs = first("wsc")
    assert ctx == ("Passage: Bernard, who had not told the government official that he was less than 21 when he filed "
                   "for a homestead claim, did not consider that he had done anything dishonest. Still, anyone who knew "
                   "that he was 19 years old could take his claim away from *him*.\nQuestion: In the passage above, "
                   "does the pronoun \"*him*\" refer to \"*anyone*\"?\nAnswer:")
    assert [c for _, c in reqs] == [" yes", " no"]


def test_arc_obqa_first_docs():
    _, _, ctx, reqs = first("arc_easy")
    assert ctx == "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert reqs[0][1] == " Sunlight is the source of energy for nearly all ecosystems." and len(reqs) == 4
    task, doc, ctx, reqs = first("openbookqa")
    assert ctx == ("A person wants to start saving money so that they can afford a nice vacation at the end of the year. "
                   "After looking over their budget and expenses, they decide the best way to save money is to")
    assert task.doc_to_target(doc) == " quit eating lunch out"


def test_hellaswag_first_doc():
    # From the derived dump, ctx_b ("he") is not re-capitalised: lm-eval on the original jsonl has "He".
    task, doc, ctx, reqs = first("hellaswag")
    assert ctx == "Roof shingle removal: A man is sitting on a roof. he"
    assert reqs[1][1] == " is ripping level tiles off."
    assert task.doc_to_target(doc) == " starts pulling up roofing on a roof."


def test_piqa_winogrande_mathqa_lambada_first_docs():
    _, _, ctx, _ = first("piqa")
    assert ctx == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    _, _, ctx, reqs = first("winogrande")
    assert ctx == "Sarah was a much better surgeon than Maria so Maria"  # answer "2": option2 fills the blank
    assert reqs == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                    ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    _, _, ctx, reqs = first("mathqa")
    assert [c for _, c in reqs] == [" 38", " 27.675", " 30", " data inadequate", " none of these"]
    _, _, ctx, reqs = first("lambada")
    assert ctx.endswith("his mouth curved in a confident grin, I don't care about") and reqs[0][1] == " signs"


@pytest.mark.parametrize("name", ["copa", "winogrande", "lambada", "wsc"])
def test_fewshot_layout_matches_an_independent_rederivation(name):
    """Random(42) shuffles the eval docs, then the same generator samples each doc's demos in order."""
    task = get_task(name, FIXTURES)
    docs, pool = task.eval_docs(), task.fewshot_pool()
    rng = random.Random(42)
    order = list(range(len(docs)))
    rng.shuffle(order)
    for inst, i in zip(task.instances(2), order):
        demos = rng.sample(pool, 2) if task.FEWSHOT_SPLIT else [d for d in rng.sample(pool, 3) if d != docs[i]][:2]
        expect = "\n\n".join(task.doc_to_text(d) + task.doc_to_target(d) for d in demos) + "\n\n" + task.doc_to_text(docs[i])
        assert inst.doc_id == i and inst.context == expect
        assert docs[i] not in demos or task.FEWSHOT_SPLIT  # LAMBADA never shows the doc itself


def test_winogrande_fewshot_requests_replace_only_the_last_segment():
    task = get_task("winogrande", FIXTURES)
    inst = task.instances(1)[0]
    demo, own = inst.context.split("\n\n")
    assert own == task.doc_to_text(inst.doc)
    assert [r.context for r in inst.requests] == [demo + "\n\n" + task.partial_context(inst.doc, inst.doc[o])
                                                  for o in ("option1", "option2")]


def test_mathqa_paper_quirks_drop_the_demo_space_only():
    stock, quirks = get_task("mathqa", FIXTURES), get_task("mathqa", FIXTURES, paper_quirks=True)
    s, q = stock.instances(1)[0], quirks.instances(1)[0]
    assert "\nAnswer: " in s.context and "\nAnswer: " not in q.context  # the demo is "...Answer:<option>"
    assert [r.continuation for r in s.requests] == [r.continuation for r in q.requests]  # scored with the space


@needs_shared_data
@pytest.mark.parametrize("name", [n for n in TASKS if n != "record"])  # fixture record/val.jsonl is a stand-in
def test_full_files_first_doc_is_the_hand_checked_fixture_doc(name):
    """The fixtures hold each file's first records, so the hand-checked strings above hold on the full files."""
    full, fix = get_task(name, SHARED_DATA), get_task(name, FIXTURES)
    if full.split_file(full.EVAL_SPLIT) is None:
        pytest.skip(f"{name} eval file absent from {SHARED_DATA}")
    a, b = full.eval_docs()[0], fix.eval_docs()[0]
    assert full.doc_to_text(a) == fix.doc_to_text(b)
    assert full.construct_requests(a, "x") == fix.construct_requests(b, "x")


def update() -> None:
    pinned = {snapshot_key(n, q): request_hashes(n, q) for n, q in VARIANTS}
    SNAPSHOTS.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOTS.write_text(json.dumps(pinned, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(pinned)} entries to {SNAPSHOTS}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_prompts.py --update   (re-pin request hashes after bumping VERSION)")
    update()
