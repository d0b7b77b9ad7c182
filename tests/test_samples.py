"""The bundled data samples (tasks/samples): present, small, cut as documented, loadable by the tasks."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, SHARED_DATA, needs_shared_data

SAMPLES = ROOT / "tasks" / "samples"
# file -> records kept (study/make_samples.py: 40 by default, fewer for large records)
EXPECTED = {
    "arc_challenge/ARC-Challenge-Dev.jsonl": 40, "arc_challenge/ARC-Challenge-Test.jsonl": 40,
    "arc_challenge/ARC-Challenge-Train.jsonl": 40, "arc_easy/ARC-Easy-Dev.jsonl": 40,
    "arc_easy/ARC-Easy-Test.jsonl": 40, "arc_easy/ARC-Easy-Train.jsonl": 40,
    "boolq/fewglue_train.jsonl": 32, "boolq/val.jsonl": 30, "cb/train.jsonl": 40, "cb/val.jsonl": 40,
    "copa/train.jsonl": 40, "copa/val.jsonl": 40, "hellaswag/hellaswag_train.jsonl.head3368.jsonl": 30,
    "lambada/lambada_test.jsonl": 40, "multirc/train.jsonl": 4, "multirc/val.jsonl": 4,
    "openbookqa/dev.jsonl": 40, "openbookqa/test.jsonl": 40, "openbookqa/train.jsonl": 40,
    "piqa/valid-labels.lst": 40, "piqa/valid.jsonl": 40, "record/fewglue_train.jsonl": 16,
    "record/standin_val_from_fewglue_train.jsonl": 16, "piqa/standin_train_from_valid.jsonl": 40,
    "piqa/standin_train_from_valid-labels.lst": 40,
    "rte/train.jsonl": 40, "rte/val.jsonl": 40, "wic/train.jsonl": 40, "wic/val.jsonl": 40,
    "winogrande/dev-labels.lst": 40, "winogrande/dev.jsonl": 40, "winogrande/train_l-labels.lst": 40,
    "winogrande/train_l.jsonl": 40, "wsc/train.jsonl": 40, "wsc/val.jsonl": 40,
}
# Splits the full data lacks; the samples carry labelled stand-ins for them (study/make_samples.py).
STANDINS = {("record", "validation"), ("piqa", "train")}


def count_records(path) -> int:
    if path.name.endswith(".json"):
        return len(json.loads(path.read_text(encoding="utf-8")))
    if path.name.endswith(".txt.bz2"):
        import bz2

        return len(bz2.decompress(path.read_bytes()).decode("utf-8").splitlines()) // 6  # 6 lines per task
    return sum(1 for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())


@pytest.mark.parametrize("rel,n", sorted(EXPECTED.items()))
def test_sample_file_counts(rel, n):
    assert count_records(SAMPLES / rel) == n


def test_json_and_bz2_samples_and_total_size():
    assert count_records(SAMPLES / "mathqa/test.json") == 40
    assert count_records(SAMPLES / "mathqa/dev.json") == 40
    assert count_records(SAMPLES / "hellaswag/hellaswag_val_full.txt.bz2") == 40
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 1_500_000, f"samples are {total} bytes; the bundle must stay under 1.5 MB"
    assert "License" in (SAMPLES / "SOURCES.md").read_text(encoding="utf-8")


def test_every_task_loads_from_samples():
    registry = pytest.importorskip("tasks.registry")
    for name in registry.TASKS:
        task = registry.get_task(name, SAMPLES)
        for split in {task.EVAL_SPLIT, task.FEWSHOT_SPLIT} - {None}:
            docs = task.load_split(split)
            assert len(docs) >= 4, f"{name} {split}: only {len(docs)} docs"  # multirc: 4 paragraphs
            assert task.split_file(split)[1].standin == ((name, split) in STANDINS), (name, split)


def test_standins_are_disjoint_from_the_split_beside_them():
    from tasks.data_check import check_data

    def lines(rel):
        return {ln for ln in (SAMPLES / rel).read_text(encoding="utf-8").splitlines() if ln.strip()}

    assert not lines("record/standin_val_from_fewglue_train.jsonl") & lines("record/fewglue_train.jsonl")
    assert not lines("piqa/standin_train_from_valid.jsonl") & lines("piqa/valid.jsonl")
    rows = check_data(SAMPLES, ["record", "piqa"])
    assert {(r["task"], r["split"]) for r in rows if r["status"] == "stand-in"} == STANDINS
    assert all("STAND-IN" in r["note"] for r in rows if r["status"] == "stand-in")
    assert "STAND-IN" in (SAMPLES / "SOURCES.md").read_text(encoding="utf-8")


@needs_shared_data
def test_samples_are_regenerated_identically(tmp_path):
    """study/make_samples.py is deterministic and the shipped files are its output."""
    from study.make_samples import make_samples

    made = make_samples(SHARED_DATA, tmp_path)
    for rel in made:
        assert (tmp_path / rel).read_bytes() == (SAMPLES / rel).read_bytes(), rel
