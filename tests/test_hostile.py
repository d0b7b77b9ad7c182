"""Hostile inputs and faults: every case of tests/hostile_cases.py exits 2 with one line naming the
culprit, no traceback, and an untouched output directory; plus the fault tests (kill -9 during an
atomic write, orphan cleanup), the flags that relax or record (--soft-masks, --threads, --debug)
and the path rules of shard indexes.

Cases run in-process through run.main (milliseconds each: validation comes before heavy work);
a few go through real subprocesses to check what a user sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from hostile_cases import all_cases
from hostile_kit import FIXTURES, ROOT, TINY, Kit, ev, index_of, with_config

CASES = all_cases()
GROUPS = ("checkpoints", "configs", "conversion", "data", "data check", "masks", "options", "output paths",
          "resume", "study commands", "tokenizer files")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return Kit(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module", autouse=True)
def fast_tiny_tokenizer(one_thread):
    """Cases whose culprit is not the tokenizer reuse one load of the tiny model's tokenizer (the
    50k-merge BPE build is most of a case's time); tokenizer cases name other directories."""
    import opt66b.runs.loading as runtime

    real, cache = runtime.load_tokenizer, {}

    def load(directory, *args, **kwargs):
        if Path(directory).resolve() != TINY.resolve():
            return real(directory, *args, **kwargs)
        if "tok" not in cache:
            cache["tok"] = real(directory, *args, **kwargs)
        return cache["tok"]

    mp = pytest.MonkeyPatch()
    mp.setattr(runtime, "load_tokenizer", load)
    yield
    mp.undo()


def run_main(argv: list[str]) -> int:
    import run

    try:
        return run.main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        return exc.code


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and modification time, every directory's presence (a directory's own time moves when the
    run's lock is taken and given back in it, which leaves nothing)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in sorted(root.rglob("*"))}


def test_table_size_and_groups(capsys):
    counts = Counter(c.group for c in CASES)
    with capsys.disabled():
        print(f"\nhostile table: {len(CASES)} cases: " + ", ".join(f"{g} {counts[g]}" for g in GROUPS))
    assert len(CASES) >= 150
    assert set(counts) == set(GROUPS) and min(counts.values()) >= 8
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case, kit, tmp_path, capsys):
    (tmp_path / "file").write_text("x")  # a file where some cases want a directory
    argv = case.argv(kit, tmp_path / "out")
    before = snapshot(tmp_path)
    code = run_main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}, stderr:\n{err}"
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for word in case.expect:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    assert snapshot(tmp_path) == before, "the failed command wrote to its output directory"


# -- what a user sees: real processes ------------------------------------------------------------------
def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


def test_subprocess_errors_are_one_line_and_debug_shows_the_traceback(kit, tmp_path):
    bad = kit.model("sub-cfg", config=with_config(do_layer_norm_before="false"))
    argv = ev(tmp_path / "out", model=bad)
    plain = _cli(*argv)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.count("error:") == 1 and "do_layer_norm_before" in plain.stderr
    debug = _cli(*argv, "--debug")
    assert "Traceback" in debug.stderr and "do_layer_norm_before" in debug.stderr
    tpu = _cli(*ev(tmp_path / "out"), "--device", "tpu")
    assert tpu.returncode == 2 and "Traceback" not in tpu.stderr and "--device" in tpu.stderr
    assert not (tmp_path / "out").exists()


def test_kill_9_during_a_large_atomic_write_leaves_an_orphan_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    writer = ("import sys, torch; sys.path.insert(0, %r)\n"
              "from opt66b.runs.results import write_tensors\n"
              "write_tensors(%r, {'x': torch.zeros(1 << 28, dtype=torch.uint8)})\n") % (str(ROOT), str(out / "big.safetensors"))
    proc = subprocess.Popen([sys.executable, "-c", writer])
    deadline = time.monotonic() + 120
    orphans: list[Path] = []
    while time.monotonic() < deadline and not orphans:
        orphans = list(out.glob(".big.safetensors.*.tmp")) if out.is_dir() else []
        time.sleep(0.01)
    assert orphans, "the writer never started its temporary file"
    time.sleep(0.05)  # into the write: 256 MiB take longer than this
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "big.safetensors").exists() and orphans[0].exists()  # killed mid-write: only the orphan
    code = run_main(["correlate", "--importance", str(tmp_path / "nothing"), "--out", str(out)])  # any command on out
    assert code == 2  # (it fails on its own input, after the output check)
    assert not orphans[0].exists() and list(out.iterdir()) == []


def test_orphan_cleanup_keeps_a_live_writers_file_and_foreign_recent_ones(tmp_path):
    from opt66b.fileio import _HOST
    from opt66b.runs.results import check_output_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    files = {"dead": tmp_path / "sub" / f".a.json.{_HOST}-{dead_pid}-x1.tmp",
             "live": tmp_path / f".b.json.{_HOST}-{os.getppid()}-x2.tmp",
             "other-host-recent": tmp_path / ".c.json.0000beef-1-x3.tmp",
             "other-host-old": tmp_path / ".d.json.0000beef-1-x4.tmp",
             "not-ours": tmp_path / ".e.json.tmp"}
    for path in files.values():
        path.parent.mkdir(exist_ok=True)
        path.write_text("partial")
    old = time.time() - 2 * 3600
    os.utime(files["other-host-old"], (old, old))
    check_output_dir(tmp_path)
    assert {k for k, p in files.items() if p.exists()} == {"live", "other-host-recent", "not-ours"}


# -- flags that allow or record -----------------------------------------------------------------------
def test_soft_masks_flag_accepts_fractions_and_is_recorded(kit, tmp_path, capsys):
    t = torch.ones(2, 4)
    t[0, 1] = 0.5
    mask = kit.mask("soft-ok", tensors={"head_mask": t})
    assert run_main(ev(tmp_path / "hard", "--head-mask", mask)) == 2
    assert run_main(ev(tmp_path / "soft", "--head-mask", mask, "--soft-masks", "--threads", "1")) == 0
    done = json.loads((tmp_path / "soft" / "shots-0" / "tasks" / "copa.json").read_text())
    assert done["config"]["head_mask"]["soft_masks"] is True
    assert done["config"]["threads"] == 1  # --threads is recorded with the results
    assert "threads: 1" in capsys.readouterr().err


def test_default_threads_are_printed(tmp_path, capsys):
    assert run_main(["induction", "prefix", "--seeds", "1", "--variant", "paper", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"threads: {torch.get_num_threads()} (torch's default" in err
    meta = json.loads((tmp_path / "prefix_matching_paper.json").read_text())
    assert meta["threads"] == torch.get_num_threads()


def test_results_json_is_strict(tmp_path):
    from opt66b.runs.results import write_json

    with pytest.raises(ValueError, match=r"r\.json.*results\.copa\.acc"):
        write_json(tmp_path / "r.json", {"results": {"copa": {"acc": float("nan")}}})
    assert not (tmp_path / "r.json").exists()


# -- shard index paths ------------------------------------------------------------------------------------
def test_hf_cache_snapshot_links_into_its_blobs_load(tmp_path):
    """The Hugging Face cache layout (snapshots/<rev>/file -> ../../blobs/<hash>) is not an escape."""
    from opt66b.weights import load_model

    repo = tmp_path / "models--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (blobs / "h1").write_bytes((TINY / "model.safetensors").read_bytes())
    (snap / "model-00001-of-00001.safetensors").symlink_to("../../blobs/h1")
    (snap / "config.json").write_text((TINY / "config.json").read_text())
    (snap / "model.safetensors.index.json").write_text(json.dumps(index_of(lambda k: "model-00001-of-00001.safetensors")))
    model = load_model(snap)
    assert model.config.num_layers == 2


def test_fixtures_are_untouched_by_the_table():
    """The table corrupts copies only."""
    assert (FIXTURES / "copa" / "val.jsonl").read_bytes().startswith(b"{")


def test_an_unwritable_output_dir_is_refused_before_work(tmp_path, monkeypatch):
    """(Permission bits do not stop root, who runs this suite in containers, so os.access is faked.)"""
    import opt66b.runs.results as io

    monkeypatch.setattr(io.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match=r"--out .*new.*cannot be created \(.* is not writable\)"):
        io.check_output_dir(tmp_path / "new")
    with pytest.raises(PermissionError, match="is not writable"):
        io.check_output_dir(tmp_path)


def test_library_entry_points_expand_the_home_directory(tmp_path, monkeypatch):
    """The README's library example passes "~/ckpt/..." to Python functions: no shell expands it there."""
    import shutil

    import opt66b
    from opt66b import load_model, load_tokenizer

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(TINY, tmp_path / "ckpt" / "tiny")
    assert load_model("~/ckpt/tiny").config.num_layers == 2
    assert load_tokenizer("~/ckpt/tiny").bos_id == 2
    model, tok, info = opt66b.load("~/ckpt/tiny", tokenizer="~/ckpt/tiny")
    assert info["model"] == str(tmp_path / "ckpt" / "tiny") and tok.pad_id == 1
