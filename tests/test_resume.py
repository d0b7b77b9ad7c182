"""The unit store under every step type: SIGKILL part-way + rerun gives the uninterrupted result,
and a rerun into the same --out with other data, another model or another limit is refused.

The kill is a real SIGKILL of a `run.py` subprocess, delivered at a deterministic point: inside the
k-th atomic write, after the unit's temporary file is complete and before it is renamed into place
(the worst moment for a result file).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compare_runs import compare
from conftest import FIXTURES, ROOT, random_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# Runs run.py with os.replace patched to SIGKILL the process at its KILL_AT-th call.
KILLER = r'''
import os, signal, sys
sys.path.insert(0, {root!r})
kill_at, calls = int(os.environ["KILL_AT"]), [0]
real_replace = os.replace
def replace(src, dst):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)
os.replace = replace
import run
sys.exit(run.main(sys.argv[1:]))
'''


def _checkpoint(path: Path, seed: int) -> Path:
    from opt66b import OPTConfig

    cfg = OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, max_positions=512)
    return write_checkpoint(random_model(cfg, seed=seed), path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return _checkpoint(root / "a", seed=3), _checkpoint(root / "b", seed=4), root


@pytest.fixture(scope="module")
def bias_twin(ckpts):
    """Checkpoint a with one element of the final layer norm's bias changed (+1e-3): a patched or
    fine-tuned model looks like this, and its results must never pass for a's."""
    from opt66b import OPTConfig

    ckpt, _, root = ckpts
    cfg = OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, max_positions=512)
    model = random_model(cfg, seed=3)
    with torch.no_grad():
        model.decoder.final_layer_norm.bias[5] += 1e-3
    twin = write_checkpoint(model, root / "a-bias")
    assert (twin / "model.safetensors").stat().st_size == (ckpt / "model.safetensors").stat().st_size
    return twin


def steps(ckpt: Path, imp: Path) -> dict[str, tuple[list[str], str]]:
    """step type -> (run.py argv without --out, glob of its unit files under --out)."""
    model = ["--model", str(ckpt), "--device", "cpu"]
    data = ["--data", str(FIXTURES), "--tasks", "boolq", "rte", "--shots", "0", "1"]
    return {
        "eval": (["eval", *model, *data, "--limit", "3"], "shots-*/tasks/*.json"),
        "importance heads": (["importance", "heads", *model, *data, "--n-docs", "2"], "shots-*/[!a]*.safetensors"),
        "importance ffn": (["importance", "ffn", *model, *data, "--limit", "3"], "shots-*/*/layer-*.json"),
        "prune heads": (["prune", "heads", *model, *data, "--limit", "3", "--head-percents", "0", "50",
                         "--importance", str(imp)], "heads-own/shots-*/*/*.json"),
        "induction prefix": (["induction", "prefix", *model, "--seeds", "4"], "seeds/*.safetensors"),
        "induction copying": (["induction", "copying", *model, "--seeds", "3", "--variant", "residual"],
                              "seeds/*.safetensors"),
        "copytask": (["copytask", *model, "--seeds", "2", "--length", "6"], "copytask.json"),
    }


@pytest.fixture(scope="module")
def importance_dir(ckpts):
    import run

    ckpt, _, root = ckpts
    argv, _ = steps(ckpt, root)["importance heads"]
    assert run.main([*argv, "--out", str(root / "imp")]) == 0
    return root / "imp"


@pytest.mark.parametrize("step", ["eval", "importance heads", "importance ffn", "prune heads", "induction prefix",
                                  "induction copying", "copytask"])
def test_sigkilled_step_resumes_to_the_uninterrupted_result(step, ckpts, importance_dir, tmp_path):
    import run

    ckpt, _, _ = ckpts
    argv, units = steps(ckpt, importance_dir)[step]
    assert run.main([*argv, "--out", str(tmp_path / "clean")]) == 0
    total = len(list((tmp_path / "clean").glob(units)))
    killed = tmp_path / "killed"
    kill_at = 2 if total > 1 else 1  # the 2nd write (the 1st for the single-unit copy task)
    proc = subprocess.run([sys.executable, "-c", KILLER.format(root=str(ROOT)), *argv, "--out", str(killed)],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": str(kill_at)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    done = len(list(killed.glob(units))) if killed.exists() else 0
    assert done < total, f"{step}: the kill left {done} of {total} units"
    assert run.main([*argv, "--out", str(killed)]) == 0  # the rerun finishes the missing units
    rep = compare(tmp_path / "clean", killed)
    assert rep["number_diffs"] == {} and rep["only_in_a"] == [] and rep["only_in_b"] == [], rep
    assert len(list(killed.glob(units))) == total
    assert rep["json_files"] + rep["tensor_files"] >= total  # the comparison covered every unit


def _run_err(capsys, argv) -> tuple[int, str]:
    import run

    capsys.readouterr()
    code = run.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("step", ["eval", "importance heads", "importance ffn", "prune heads", "induction prefix",
                                  "copytask"])
def test_other_model_is_refused_naming_the_unit_and_the_change(step, ckpts, importance_dir, tmp_path, capsys):
    ckpt, other, _ = ckpts
    argv, _ = steps(ckpt, importance_dir)[step]
    out = tmp_path / "out"
    assert _run_err(capsys, [*argv, "--out", str(out)])[0] == 0
    code, err = _run_err(capsys, [*[str(other) if a == str(ckpt) else a for a in argv], "--out", str(out)])
    assert code == 2 and "made with different settings" in err and str(out) in err, err
    assert "model.shards.model.safetensors.content_sha256" in err and "--recompute" in err
    assert err.strip().splitlines()[-1].startswith(f"run.py {argv[0]}: error: ")  # one line, no traceback


@pytest.mark.parametrize("step", ["eval", "importance heads", "importance ffn", "prune heads", "induction prefix",
                                  "induction copying", "copytask"])
def test_a_checkpoint_differing_in_one_bias_element_is_another_model(step, ckpts, bias_twin, importance_dir,
                                                                     tmp_path, capsys):
    ckpt, _, _ = ckpts
    argv, _ = steps(ckpt, importance_dir)[step]
    out = tmp_path / "out"
    assert _run_err(capsys, [*argv, "--out", str(out)])[0] == 0
    code, err = _run_err(capsys, [*[str(bias_twin) if a == str(ckpt) else a for a in argv], "--out", str(out)])
    assert code == 2 and "model.shards.model.safetensors.content_sha256" in err, err


def test_other_data_file_other_limit_refused_same_data_elsewhere_resumes(ckpts, tmp_path, capsys):
    ckpt, _, _ = ckpts
    out = tmp_path / "eval"
    base = ["eval", "--model", str(ckpt), "--device", "cpu", "--tasks", "rte", "--shots", "0", "--out", str(out)]
    assert _run_err(capsys, [*base, "--data", str(FIXTURES), "--limit", "3"])[0] == 0
    unit = out / "shots-0" / "tasks" / "rte.json"
    stamp = unit.stat().st_mtime_ns
    # The same bytes under another directory: resumes (identity by content, not path).
    copy = tmp_path / "data-copy"
    shutil.copytree(FIXTURES, copy)
    assert _run_err(capsys, [*base, "--data", str(copy), "--limit", "3"])[0] == 0
    assert unit.stat().st_mtime_ns == stamp
    # Other limit: refused, naming the field.
    code, err = _run_err(capsys, [*base, "--data", str(copy), "--limit", "2"])
    assert code == 2 and f"{unit}: made with different settings (limit)" in err, err
    # Another batch budget (a run resumed on a machine with less memory): the units are reused, not refused;
    # each records the batch it was computed with (a batch shape moves at most the last float bits).
    assert _run_err(capsys, [*base, "--data", str(copy), "--limit", "3", "--batch-tokens", "512"])[0] == 0
    assert unit.stat().st_mtime_ns == stamp
    assert json.loads(unit.read_text())["config"]["batch_tokens"] == 4096
    # One record of the data file changed: refused, naming that file's hash.
    data_file = sorted((copy / "rte").glob("*.jsonl"))
    for path in data_file:
        path.write_text(path.read_text().replace("a", "b", 1))
    code, err = _run_err(capsys, [*base, "--data", str(copy), "--limit", "3"])
    assert code == 2 and "data_sha256.rte/" in err and str(unit) in err, err
    # --recompute replaces the unit instead.
    assert _run_err(capsys, [*base, "--data", str(copy), "--limit", "3", "--recompute"])[0] == 0
    assert unit.stat().st_mtime_ns != stamp


def test_moved_run_directory_resumes(ckpts, importance_dir, tmp_path, capsys):
    ckpt, _, _ = ckpts
    argv, units = steps(ckpt, importance_dir)["prune heads"]
    assert _run_err(capsys, [*argv, "--out", str(tmp_path / "a")])[0] == 0
    # Move both the importance it ranks by and the run: the rankings are identified by content.
    shutil.copytree(importance_dir, tmp_path / "imp-moved")
    shutil.move(tmp_path / "a", tmp_path / "b")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "b").glob(units)}
    moved = [str(tmp_path / "imp-moved") if a == str(importance_dir) else a for a in argv]
    assert _run_err(capsys, [*moved, "--out", str(tmp_path / "b")])[0] == 0
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_importance_made_with_streamed_layers_is_reused_by_all(tmp_path, capsys):
    """The OPT-66B-on-one-GPU recipe (README): head importance alone with streamed layers (layer-wise
    backward), then `all` into the same --out reuses its units: placement is not part of the
    fingerprint, since streaming gives the resident model's numbers (tests/test_offload.py)."""
    import json

    out = tmp_path / "run"
    small = ["--tasks", "copa", "rte", "--shots", "0", "--n-docs", "3"]
    assert _run_err(capsys, ["importance", "heads", "--offload", "mmap", *small, "--out", str(out / "importance")])[0] == 0
    unit = out / "importance" / "shots-0" / "copa.safetensors"
    stamp = unit.stat().st_mtime_ns
    code, err = _run_err(capsys, ["all", *small, "--limit", "2", "--seeds", "1", "--out", str(out)])
    assert code == 0, err[-2000:]
    assert json.loads((out / "work.json").read_text())["head importance"]["forward_passes"] == 0
    assert unit.stat().st_mtime_ns == stamp


def test_a_unit_fingerprinted_with_batch_tokens_by_an_earlier_release_is_reused(tmp_path):
    """batch_tokens left the fingerprints (it is recorded instead): a unit that still carries it resumes."""
    from opt66b.runs.results import write_json
    from opt66b.runs.store import UnitStore

    store = UnitStore({"model": "m", "limit": 3})
    path = tmp_path / "unit.json"
    write_json(path, {"value": 1, "fingerprint": {**store.fingerprint(task="copa"), "batch_tokens": 4096}})
    assert store.done(path, task="copa")
    write_json(path, {"value": 1, "fingerprint": {**store.fingerprint(task="copa"), "limit": 4}})
    with pytest.raises(ValueError, match="limit"):
        store.done(path, task="copa")
