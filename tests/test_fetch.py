"""`run.py data fetch`: the hub's rows written where and how the loaders read them, with no network.

Each task's test fixture (release layout) is turned into the rows the hub serves for it (the hub's field names and
label encodings, as lm-evaluation-harness reads them), held in an in-memory `datasets.Dataset` when `datasets` is
installed (a list of rows otherwise: a Dataset iterates as one), and handed to `fetch` in place of the hub. The files
written must give the same documents, in the same order, as the release files: the loaders cannot tell them apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import run
from tasks import fetch as fetch_mod
from tasks.registry import get_task

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"
SG_LABELS = {"cb": ["entailment", "contradiction", "neutral"], "rte": ["entailment", "not_entailment"]}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _choices(choices: list[dict]) -> dict:
    return {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]}


def hub_rows(task: str, split: str) -> list[dict]:
    """The hub's rows for the fixture's records of one split (each task's hub layout, written out by hand)."""
    files = {s: spec for s, specs in get_task(task, FIXTURES).FILES.items() for spec in specs
             if (FIXTURES / get_task(task, FIXTURES).DATA_DIR / spec.name).is_file()}
    folder = FIXTURES / get_task(task, FIXTURES).DATA_DIR
    spec = files[split]
    if task == "mathqa":
        return json.loads((folder / spec.name).read_text(encoding="utf-8"))
    records = _rows(folder / spec.name)
    if task in ("boolq", "wic"):
        return [{**r, "label": int(r["label"])} for r in records]
    if task in SG_LABELS:
        keys = ("sentence1", "sentence2") if task == "rte" else ("premise", "hypothesis")
        return [{keys[0]: r["premise"], keys[1]: r["hypothesis"], "idx": r["idx"],
                 "label": SG_LABELS[task].index(r["label"])} for r in records]
    if task == "wsc":
        return [{"text": r["text"], **r["target"], "idx": r["idx"], "label": int(r["label"])} for r in records]
    if task.startswith("arc_"):
        return [{"id": r["id"], "question": r["question"]["stem"], "choices": _choices(r["question"]["choices"]),
                 "answerKey": r["answerKey"]} for r in records]
    if task == "openbookqa":
        return [{"id": r["id"], "question_stem": r["question"]["stem"], "choices": _choices(r["question"]["choices"]),
                 "answerKey": r["answerKey"]} for r in records]
    if task == "piqa":
        labels = (folder / spec.labels).read_text().split()
        return [{**r, "label": int(label)} for r, label in zip(records, labels)]
    if task == "hellaswag":
        return [{**r, "label": str(r["label"])} for r in records]  # the hub serves the label as a string
    return records  # copa, winogrande, lambada: the hub's fields are the release's


CASES = [("boolq", "validation"), ("cb", "validation"), ("copa", "validation"), ("rte", "validation"),
         ("wic", "validation"), ("wsc", "validation"), ("arc_easy", "test"), ("arc_challenge", "train"),
         ("openbookqa", "test"), ("piqa", "validation"), ("winogrande", "validation"), ("mathqa", "test"),
         ("lambada", "validation"), ("hellaswag", "train")]


def _dataset(rows: list[dict]):
    try:
        import datasets
    except ImportError:
        return rows
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("task, split", CASES)
def test_fetched_files_give_the_release_files_documents(task, split, tmp_path):
    source = fetch_mod.SOURCES[task]
    hub_split = source.splits[split]
    asked = []

    def load(src, name):
        asked.append((src.hub, src.config, name))
        if name != hub_split:
            raise ValueError(f"split {name} not in this test")
        return _dataset(hub_rows(task, split))

    rows = fetch_mod.fetch(tmp_path, [task], load=load, log=lambda msg: None)
    mine = next(r for r in rows if r["split"] == split)
    assert mine["status"] == "written" and Path(mine["file"]).name in fetch_mod.HF_NAMES
    assert (source.hub, source.config, hub_split) in asked
    fetched = get_task(task, tmp_path)
    found = fetched.split_file(split)
    assert found is not None and found[0] == Path(mine["file"])  # the loader picks the fetched file
    assert fetched.docs(split) == get_task(task, FIXTURES).docs(split)


def test_record_and_multirc_hub_rows_load(tmp_path):
    """ReCoRD (one row per query, entities as strings) and MultiRC (one row per answer) in the hub's layout."""
    passage = "The cat sat on the mat. @highlight\nDogs bark at cats"
    record = [{"passage": passage, "query": "The @placeholder sat down.", "entities": ["cat", "Dogs"],
               "entity_spans": {"text": ["cat", "Dogs"], "start": [4, 36], "end": [7, 40]}, "answers": ["cat"],
               "idx": {"passage": 0, "query": q}} for q in range(3)]
    multirc = [{"paragraph": "Tom has two apples.", "question": "How many apples?", "answer": a,
                "idx": {"paragraph": 0, "question": 0, "answer": i}, "label": int(a == "two")}
               for i, a in enumerate(["two", "five"])]
    data = {"record": record, "multirc": multirc}
    fetch_mod.fetch(tmp_path, ["record", "multirc"], load=lambda src, split: _dataset(data[src.config]),
                    log=lambda msg: None)
    assert len(get_task("record", tmp_path).docs("validation")) == 3
    assert len(get_task("multirc", tmp_path).docs("validation")) == 2


def test_a_split_the_hub_cannot_give_is_named_with_where_to_get_it_and_the_rest_is_written(tmp_path):
    def load(src, split):
        if src.hub == "allenai/math_qa":
            raise RuntimeError("Dataset scripts are no longer supported")
        return _dataset(hub_rows("copa", "validation"))

    rows = fetch_mod.fetch(tmp_path, ["mathqa", "copa"], load=load, log=lambda msg: None)
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["task"] for r in failed} == {"mathqa"} and "math-qa.github.io" in failed[0]["note"]
    assert (tmp_path / "copa" / "validation.jsonl").is_file()
    table = fetch_mod.format_fetch(rows)
    assert "failed" in table.splitlines()[-1] and "where to get it by hand" in table


def test_a_file_already_there_is_kept_unless_overwrite(tmp_path):
    calls = []
    load = lambda src, split: calls.append(split) or _dataset(hub_rows("copa", "validation"))
    fetch_mod.fetch(tmp_path, ["copa"], load=load, log=lambda msg: None)
    again = fetch_mod.fetch(tmp_path, ["copa"], load=load, log=lambda msg: None)
    assert {r["status"] for r in again} == {"kept"} and len(calls) == 2
    fetch_mod.fetch(tmp_path, ["copa"], load=load, overwrite=True, log=lambda msg: None)
    assert len(calls) == 4


def test_every_task_of_the_study_has_a_source_and_a_file_its_loader_reads():
    from tasks.registry import ALL_TASKS

    assert set(fetch_mod.SOURCES) == {t for t in ALL_TASKS if t != "synthetic_copy"}
    for task, source in fetch_mod.SOURCES.items():
        assert set(source.splits) == set(ALL_TASKS[task].FILES), task
        for split in source.splits:
            assert fetch_mod.target_name(task, split) in fetch_mod.HF_NAMES
        assert source.by_hand.startswith("http"), task


def test_the_command_refuses_unknown_tasks_before_any_download_and_needs_out(tmp_path, capsys):
    assert run.main(["data", "fetch", "--out", str(tmp_path), "--tasks", "copa", "nosuchtask"]) == 2
    err = capsys.readouterr().err
    assert "nosuchtask" in err and "[fetch]" not in err and not any(tmp_path.iterdir())
    assert run.main(["data", "fetch"]) == 2
    assert "--out DIR" in capsys.readouterr().err


def test_once_the_hub_cannot_be_reached_the_other_splits_are_not_tried(tmp_path):
    calls = []

    def load(src, split):
        calls.append(src.hub)
        raise ConnectionError(f"Couldn't reach '{src.hub}' on the Hub (LocalEntryNotFoundError)")

    rows = fetch_mod.fetch(tmp_path, ["copa", "rte", "lambada"], load=load, log=lambda msg: None)
    assert len(calls) == 1 and [r["status"] for r in rows] == ["failed"] * 5
    assert all("not tried: the hub could not be reached" in r["note"] for r in rows[1:])
    assert "gluebenchmark.com" in rows[-2]["note"]  # each still says where to get it by hand


def test_the_command_exits_2_after_its_table_when_a_split_failed(tmp_path, capsys, monkeypatch):
    pytest.importorskip("datasets")  # the command checks the optional package before anything else
    monkeypatch.setattr(fetch_mod, "hub_loader", lambda src, split: (_ for _ in ()).throw(RuntimeError("gone")))
    assert run.main(["data", "fetch", "--out", str(tmp_path), "--tasks", "copa"]) == 2
    captured = capsys.readouterr()
    assert "2 failed" in captured.out and "2 of 2 splits could not be fetched" in captured.err
