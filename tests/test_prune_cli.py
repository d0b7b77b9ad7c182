"""`run.py importance heads|ffn` and `run.py prune` end to end on a tiny checkpoint; SIGKILL + rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, random_model, write_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"
TOTAL_UNITS = 2 * 10  # 2 tasks x heads 0..90%


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_thread):
    """A tiny checkpoint with the real tokenizer, and its head + FFN importance from the CLI."""
    from opt66b import OPTConfig

    import run

    root = tmp_path_factory.mktemp("study")
    ckpt = root / "ckpt"
    cfg = OPTConfig(hidden_size=64, num_layers=3, num_heads=4, ffn_dim=128, max_positions=1024)
    write_checkpoint(random_model(cfg, seed=7), ckpt)
    common = ["--model", str(ckpt), "--device", "cpu", "--data", str(FIXTURES), "--tasks", "boolq", "rte"]
    assert run.main(["importance", "heads", *common, "--shots", "1", "--n-docs", "3",
                     "--out", str(root / "imp")]) == 0
    assert run.main(["importance", "ffn", *common, "--shots", "1", "--limit", "4",
                     "--out", str(root / "ffn")]) == 0
    return root, common


def test_importance_outputs(study):
    from opt66b.runs.results import read_tensors

    root, _ = study
    tensors, meta = read_tensors(root / "imp" / "shots-1" / "boolq.safetensors")
    assert tensors["importance"].shape == (3, 4) and bool((tensors["importance"] > 0).all())
    assert json.loads(meta["seed"]) == 1234 and json.loads(meta["counts"])["examples"] == 3
    assert "data_sha256" in meta and "model" in meta
    agg, _ = read_tensors(root / "imp" / "shots-1" / "aggregate.safetensors")
    rte, _ = read_tensors(root / "imp" / "shots-1" / "rte.safetensors")
    mean = (tensors["importance"].double() + rte["importance"].double()) / 2
    assert (agg["importance"].double() - mean).abs().max() < 1e-6  # float32 storage of the mean
    ffn = json.loads((root / "ffn" / "shots-1" / "rte.json").read_text())
    assert sorted(ffn["ranking"]) == [0, 1, 2] and len(ffn["drop"]) == 3
    assert (root / "ffn" / "shots-1" / "aggregate.json").is_file()


def test_rerun_skips_finished_units(study, capsys):
    import run

    root, common = study
    before = (root / "imp" / "shots-1" / "boolq.safetensors").stat().st_mtime_ns
    assert run.main(["importance", "heads", *common, "--shots", "1", "--n-docs", "3", "--out", str(root / "imp")]) == 0
    assert (root / "imp" / "shots-1" / "boolq.safetensors").stat().st_mtime_ns == before


def prune_args(study, out: Path) -> list[str]:
    root, common = study
    return ["prune", "heads", *common, "--shots", "1", "--importance", str(root / "imp"), "--out", str(out)]


def test_sigkilled_sweep_resumes_to_identical_results(study, tmp_path):
    import run

    assert run.main(prune_args(study, tmp_path / "clean")) == 0  # the uninterrupted reference

    killed = tmp_path / "killed"
    units = killed / "heads-own"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *prune_args(study, killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(units.glob("shots-*/*/*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(list(units.glob("shots-*/*/*.json")))
    assert 1 <= n_done < TOTAL_UNITS, f"kill did not land part-way ({n_done} units done)"
    assert not (killed / "heads-own.json").exists()

    assert run.main(prune_args(study, killed)) == 0  # rerun: only the missing units are evaluated
    a = json.loads((tmp_path / "clean" / "heads-own.json").read_text())
    b = json.loads((killed / "heads-own.json").read_text())
    assert a["results"] == b["results"] and a["counts"] == b["counts"] and b["missing_units"] == []
    assert len(list(units.glob("shots-*/*/*.json"))) == TOTAL_UNITS
    # Units made under other settings are never mixed into the same table.
    assert run.main([*prune_args(study, killed), "--limit", "3"]) == 2


def test_bad_arguments_give_clear_errors(study, capsys):
    import run

    root, common = study
    assert run.main(["prune", "heads", *common, "--out", str(root / "x")]) == 2
    assert "needs --importance" in capsys.readouterr().err
    assert run.main(["prune", "heads", *common, "--ranking", "nope", "--importance", str(root / "imp"),
                     "--out", str(root / "x")]) == 2
    assert "--ranking must be own, aggregate or a task name" in capsys.readouterr().err
    assert run.main(["prune", "heads", *common, "--shots", "0", "--importance", str(root / "imp"),
                     "--out", str(root / "x")]) == 2
    assert "run `run.py importance heads`" in capsys.readouterr().err
