"""`run.py eval` end to end on a tiny random checkpoint and the fixture records: layout, resume, masks."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT, random_model, write_checkpoint
from opt66b import OPTConfig
from opt66b.fileio import read_json, sha256_file
from opt66b.runs.results import write_tensors
from run import main

FIXTURES = ROOT / "tests" / "fixtures" / "data"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    cfg = OPTConfig(hidden_size=16, num_layers=2, num_heads=2, ffn_dim=32, vocab_size=50272, max_positions=2048)
    return write_checkpoint(random_model(cfg, seed=21), d)


def run_eval(checkpoint, out, *extra):
    return main(["eval", "--model", str(checkpoint), "--device", "cpu", "--dtype", "float32", "--data", str(FIXTURES),
                 "--tasks", "copa", "lambada", "--limit", "3", "--out", str(out), *extra])


def test_eval_writes_lm_eval_layout_and_resumes(checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_eval(checkpoint, out, "--shots", "0", "1") == 0
    err = capsys.readouterr().err
    assert "ETA" in err  # progress line on stderr
    for k in (0, 1):
        res = read_json(out / f"shots-{k}" / "results.json")
        assert set(res["results"]) == {"copa", "lambada"}
        assert set(res["results"]["copa"]) == {"acc", "acc_stderr", "acc_ci95"}
        assert set(res["results"]["lambada"]) == {"ppl", "acc", "ppl_stderr", "acc_stderr", "ppl_ci95", "acc_ci95"}
        assert res["config"]["stderr"]["bootstrap_iters"] == 1000 and res["results"]["lambada"]["ppl_stderr"] > 0
        assert res["config"]["ci95"]["bootstrap_iters"] == 20000
        low, high = res["results"]["lambada"]["ppl_ci95"]  # the bootstrap's percentiles hold the estimate
        assert low <= res["results"]["lambada"]["ppl"] <= high
        k_right = round(3 * res["results"]["copa"]["acc"])
        from tasks.uncertainty import proportion_interval
        assert res["results"]["copa"]["acc_ci95"] == list(proportion_interval(k_right, 3))
        assert 0.0 <= res["results"]["copa"]["acc"] <= 1.0 and res["results"]["lambada"]["ppl"] > 1.0
        assert res["versions"] == {"copa": 0, "lambada": 0}
        assert res["config"]["seed"] == 42 and res["config"]["shots"] == k and res["config"]["limit"] == 3
        copa_val = str(FIXTURES / "copa" / "val.jsonl")
        assert res["config"]["data_files"]["copa"][copa_val] == sha256_file(copa_val)
        lines = (out / f"shots-{k}" / "requests" / "copa.jsonl").read_text().splitlines()
        assert len(lines) == 6  # 3 docs x 2 choices
        rec = json.loads(lines[0])
        assert set(rec) == {"doc_id", "context", "continuation", "loglikelihood", "is_greedy"}
        assert rec["loglikelihood"] < 0.0 and isinstance(rec["is_greedy"], bool)
        if k == 1:
            assert "\n\n" in rec["context"]  # one demo before the doc
    first = read_json(out / "shots-1" / "results.json")["results"]
    task_file = out / "shots-1" / "tasks" / "copa.json"
    before = task_file.read_bytes()
    (out / "shots-1" / "tasks" / "lambada.json").unlink()  # as if killed before lambada finished
    assert run_eval(checkpoint, out, "--shots", "1") == 0
    err = capsys.readouterr().err
    assert "copa 1-shot: done earlier" in err and "lambada 1-shot: done earlier" not in err
    assert task_file.read_bytes() == before  # skipped, not rewritten
    assert read_json(out / "shots-1" / "results.json")["results"] == first  # recomputed lambada identical

    assert run_eval(checkpoint, out, "--shots", "1", "--seed", "7") == 2
    assert "made with different settings (seed)" in capsys.readouterr().err


def test_mask_files(checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    write_tensors(bad, {"head_mask": torch.ones(3, 2)})
    assert run_eval(checkpoint, tmp_path / "a", "--head-mask", str(bad)) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "expected (layers, heads) = (2, 2)" in err

    ffn_only = tmp_path / "ffn.safetensors"
    write_tensors(ffn_only, {"ffn_mask": torch.tensor([1.0, 0.0])})
    assert run_eval(checkpoint, tmp_path / "b", "--head-mask", str(ffn_only)) == 2
    err = capsys.readouterr().err
    assert str(ffn_only) in err and "no 'head_mask'" in err

    assert run_eval(checkpoint, tmp_path / "c", "--ffn-mask", str(tmp_path / "missing.safetensors")) == 2
    assert "mask file not found" in capsys.readouterr().err

    assert run_eval(checkpoint, tmp_path / "plain", "--tasks", "copa") == 0
    assert run_eval(checkpoint, tmp_path / "masked", "--tasks", "copa", "--ffn-mask", str(ffn_only)) == 0
    cfg = read_json(tmp_path / "masked" / "shots-0" / "results.json")["config"]
    assert cfg["ffn_mask"]["sha256"] == sha256_file(ffn_only)
    lls = [[json.loads(line)["loglikelihood"] for line in (tmp_path / d / "shots-0" / "requests" / "copa.jsonl").open()]
           for d in ("plain", "masked")]
    assert lls[0] != lls[1]  # the mask reached the model


def test_unknown_task_is_a_clear_error(checkpoint, tmp_path, capsys):
    assert run_eval(checkpoint, tmp_path / "x", "--tasks", "copa", "nosuchtask") == 2
    err = capsys.readouterr().err
    assert "unknown task(s) nosuchtask" in err and "valid names: boolq" in err
