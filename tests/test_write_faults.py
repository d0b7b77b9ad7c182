"""Writes that fail midway (a full disk, a file-size limit): exit 2 naming the file, no partial file,
the previous version intact, and a rerun without the fault continues to the clean result.

The fault is real: the command runs in a subprocess under RLIMIT_FSIZE (what `ulimit -f` sets), so
the kernel refuses the write with EFBIG part-way through the file (Python ignores SIGXFSZ, so the
write fails instead of killing the process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compare_runs import compare
from conftest import FIXTURES, ROOT, random_model

resource = pytest.importorskip("resource", reason="RLIMIT_FSIZE needs a POSIX system")


def _run(argv: list[str], limit: int | None = None) -> subprocess.CompletedProcess:
    def cap() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *argv], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=cap, timeout=300)


def _leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith(".tmp"))


EVAL = ["eval", "--data", str(FIXTURES), "--tasks", "copa", "rte", "--shots", "0", "--limit", "4"]


def test_eval_under_a_file_size_limit_names_the_file_leaves_nothing_partial_and_resumes(tmp_path):
    faulty = tmp_path / "faulty"
    proc = _run([*EVAL, "--out", str(faulty)], limit=2048)  # `ulimit -f 2`
    err = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and err.startswith("run.py eval: error: ")
    assert str(faulty) in err and "could not be written" in err and "File too large" in err, err
    assert _leftovers(faulty) == []
    for path in faulty.rglob("*.json"):  # whatever is there is whole
        json.loads(path.read_text())
    assert _run([*EVAL, "--out", str(faulty)]).returncode == 0  # the fault gone, the rerun continues
    clean = tmp_path / "clean"
    assert _run([*EVAL, "--out", str(clean)]).returncode == 0
    rep = compare(clean, faulty)
    assert rep["number_diffs"] == {} and rep["only_in_a"] == [] and rep["only_in_b"] == [], rep


def test_a_failed_rewrite_keeps_the_previous_file(tmp_path):
    out = tmp_path / "out"
    assert _run([*EVAL, "--out", str(out)]).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = _run([*EVAL, "--out", str(out), "--recompute"], limit=2048)
    assert proc.returncode == 2 and "could not be written" in proc.stderr, proc.stderr[-2000:]
    assert _leftovers(out) == []
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_convert_under_a_file_size_limit_names_the_shard(tiny_config, tmp_path):
    import torch

    model = random_model(tiny_config)
    src = tmp_path / "bin"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(model.config.to_hf_dict()))
    torch.save({"model." + k: v for k, v in model.state_dict().items()}, src / "pytorch_model.bin")
    size = (src / "pytorch_model.bin").stat().st_size
    dst = tmp_path / "st"
    proc = _run(["convert", str(src), "--out", str(dst)], limit=size // 2)
    err = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "model-00001-of-00001.safetensors" in err and "could not be written" in err, err
    assert not dst.exists() or [p.name for p in dst.iterdir()] == []
    assert _run(["convert", str(src), "--out", str(dst)]).returncode == 0
    assert (dst / "model-00001-of-00001.safetensors").is_file()
