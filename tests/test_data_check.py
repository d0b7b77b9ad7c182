"""`run.py data check` on the fixtures and, where the full data exists, counts on the full files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SHARED_DATA, needs_shared_data
from tasks.data_check import check_data
from tasks.registry import TASKS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"


def _run(argv: list[str]) -> int:
    import run

    return run.main(argv)


def test_cli_reports_fixture_counts_and_what_missing_splits_block(capsys, tmp_path):
    assert _run(["data", "check", "--data", str(FIXTURES), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "piqa train missing (train.jsonl): 0-shot only" in out
    assert "dev.json used as the few-shot pool" in out and "FewGLUE 32-record subset" in out
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    by = {(r["task"], r["split"]): r for r in rows}
    assert len(by) == 31  # 16 eval splits + 15 few-shot splits (LAMBADA has none)
    assert by[("copa", "validation")]["docs"] == 8 and by[("copa", "validation")]["published"] == 100
    assert by[("multirc", "validation")]["docs"] == 87 and by[("piqa", "train")]["status"] == "missing"


def test_cli_exits_nonzero_on_a_malformed_file_and_names_it(capsys, tmp_path):
    shutil.copytree(FIXTURES / "rte", tmp_path / "rte")
    with open(tmp_path / "rte" / "train.jsonl", "a") as f:
        f.write("not json\n")
    assert _run(["data", "check", "--data", str(tmp_path), "--tasks", "rte", "copa"]) == 2
    captured = capsys.readouterr()
    assert "rte/train.jsonl:9: malformed JSON" in captured.err
    assert "copa validation missing (val.jsonl, validation.jsonl): task cannot be evaluated" in captured.out
    assert _run(["data", "check", "--data", str(tmp_path / "nope")]) == 2  # run.py's one-line user error


@needs_shared_data
@pytest.mark.parametrize("name", list(TASKS))
def test_full_files_have_the_published_counts(name):
    rows = check_data(SHARED_DATA, [name])
    present = [r for r in rows if r["status"] != "missing"]
    if not present:
        pytest.skip(f"no {name} file in {SHARED_DATA}")
    for r in present:
        # a full file must hold the published count; a declared stand-in its own declared count
        assert r["status"] in ("ok", "fallback"), r
    for r in rows:
        if r["status"] == "missing":
            assert r["note"].endswith("0-shot only" if r["role"] == "few-shot" else "task cannot be evaluated")


def test_a_file_that_differs_from_SHA256SUMS_is_an_error(capsys, tmp_path):
    shutil.copytree(FIXTURES / "copa", tmp_path / "copa")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  copa/val.jsonl\n")
    assert _run(["data", "check", "--data", str(tmp_path), "--tasks", "copa"]) == 2
    assert "copa/val.jsonl: sha256 differs" in capsys.readouterr().err


def test_on_the_bundled_samples_a_row_says_sample_not_count_differs(capsys):
    from tasks.cli_options import SAMPLES_DIR
    from tasks.data_check import check_data, format_report

    rows = check_data(SAMPLES_DIR, ["copa", "piqa", "record", "synthetic_copy"])
    status = {(r["task"], r["split"]): r["status"] for r in rows}
    assert status[("copa", "validation")] == "sample" and status[("copa", "train")] == "sample"
    assert status[("piqa", "train")] == "stand-in" and status[("record", "validation")] == "stand-in"
    assert "count differs" not in status.values()
    copa = next(r for r in rows if r["task"] == "copa" and r["split"] == "validation")
    assert copa["note"] == f"bundled sample ({copa['docs']} of 100 docs)"
    table = format_report(rows)
    assert all(line.startswith("synthetic_copy  ") for line in table.splitlines() if "synthetic" in line)
    assert table.splitlines()[-1].startswith("0 ok, ")  # and "sample" is counted
