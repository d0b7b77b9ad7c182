"""Faults of real runs that are not bad input: a checkpoint edited in place with its modification time put
back, and the two caches in OPT66B_CACHE_DIR damaged (cut short, garbage, another schema, unreadable).
Each is met the way a user meets it; none may reuse a wrong result or end in a traceback."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import run
from opt66b.runs import identity


@pytest.fixture
def shard(tmp_path, monkeypatch):
    """A file standing for a safetensors shard, its hash cache in tmp_path/cache, and a counter of hashes."""
    monkeypatch.setenv("OPT66B_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model-00001-of-00002.safetensors"
    path.write_bytes(bytes(range(256)) * 64)
    calls = []
    real = identity.tree_sha256
    monkeypatch.setattr(identity, "tree_sha256", lambda p, **kw: calls.append(p) or real(p, **kw))
    return path, calls


def test_a_shard_changed_in_place_with_its_mtime_put_back_is_hashed_again(shard, monkeypatch):
    path, calls = shard
    monkeypatch.setattr(identity, "RACY_NS", 0)  # the entry below is trusted once its times are older than the hash
    before = identity.file_identities([path])
    assert identity.file_identities([path]) == before and len(calls) == 1  # unchanged: read from the cache
    st = path.stat()
    with open(path, "r+b") as f:  # one byte, same size, in place (same inode)
        f.seek(1000)
        f.write(b"\xff")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # `touch -r`: size, mtime, inode, device as before
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    after = identity.file_identities([path])
    assert len(calls) == 2 and after != before  # the change time gave it away: a new identity, nothing reused


def test_an_entry_hashed_in_the_same_tick_as_a_change_is_not_trusted(shard):
    """git's racy rule: the file was written just before it was hashed, so equal times prove nothing."""
    path, calls = shard
    identity.file_identities([path])
    identity.file_identities([path])
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["cut short", "garbage", "another schema", "unreadable"])
def test_a_damaged_identity_cache_is_said_ignored_and_rebuilt(shard, tmp_path, capsys, damage):
    path, calls = shard
    cache = tmp_path / "cache" / identity.CACHE_NAME
    cache.parent.mkdir(parents=True)
    identity._warned.clear()
    if damage == "cut short":
        cache.write_text('{"/x": {"bytes": 1, "sha2')
    elif damage == "garbage":
        cache.write_bytes(b"\x00\xff\xfe garbage")
    elif damage == "another schema":
        cache.write_text("[1, 2, 3]")
    else:
        cache.mkdir()  # a directory where the file should be: it cannot be read (nor replaced)
    digest = identity.file_identities([path])
    err = capsys.readouterr().err
    assert err.count("damaged checkpoint-hash cache") == 1 and str(cache) in err and "Traceback" not in err
    assert len(calls) == 1 and list(digest.values()) == [identity.tree_sha256(path)]
    if damage != "unreadable":
        assert isinstance(json.loads(cache.read_text()), dict)  # rebuilt


@pytest.mark.parametrize("damage", ["cut short", "garbage", "another schema"])
def test_a_damaged_plan_cache_entry_is_said_and_recomputed(tmp_path, monkeypatch, capsys, damage):
    from tasks.cli_options import SAMPLES_DIR

    monkeypatch.setenv("OPT66B_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(SAMPLES_DIR / "copa", data / "copa")
    argv = ["eval", "--tasks", "copa", "--shots", "0", "--data", str(data), "--throughput", "1", "--plan-json"]
    assert run.main([*argv, str(tmp_path / "first.json")]) == 0
    entry = next((tmp_path / "cache" / "plans").glob("copa-*.json"))
    text = entry.read_text()
    entry.write_text({"cut short": text[: len(text) // 2], "garbage": "\x00 not json",
                      "another schema": json.dumps({"value": [1, 2]})}[damage])
    capsys.readouterr()
    assert run.main([*argv, str(tmp_path / "again.json")]) == 0
    err = capsys.readouterr().err
    assert err.count("damaged cache entry") == 1 and "tokenising its requests" in err and "Traceback" not in err
    first, again = (json.loads((tmp_path / f"{n}.json").read_text())["total"] for n in ("first", "again"))
    assert again == first  # the same passes, from the data, not from the damaged entry
    assert json.loads(entry.read_text())["value"] != [1, 2]  # rebuilt


# -- a damaged unit: computed again with one line naming it, never read as a result ---------------------------------
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "data")
STEPS = {  # a step run alone, and one of the unit files it resumes from
    "eval": (["eval", "--data", FIXTURES, "--tasks", "copa", "--shots", "0", "--limit", "2"], "shots-0/tasks/copa.json"),
    "importance": (["importance", "heads", "--data", FIXTURES, "--tasks", "copa", "--shots", "0", "--n-docs", "1"],
                   "shots-0/copa.safetensors"),
    "induction": (["induction", "prefix", "--seeds", "1"], "seeds/prefix_matching_paper_seed_0.safetensors"),
}


def _cut_short(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _garbage(data: bytes) -> bytes:
    return b"\x00\x01 not a result"


def _one_number_changed(data: bytes) -> bytes:
    """The file still parses and carries its fingerprint; one of its numbers differs (a flipped bit in a float)."""
    if data.startswith(b"{") or data.startswith(b"["):
        doc = json.loads(data)
        doc["results"]["acc"] = doc["results"]["acc"] + 0.25
        return json.dumps(doc).encode()
    return data[:-1] + bytes([data[-1] ^ 0x40])  # the last byte of the last tensor


@pytest.mark.parametrize("step", sorted(STEPS))
@pytest.mark.parametrize("damage", [_cut_short, _garbage, _one_number_changed], ids=lambda f: f.__name__[1:])
def test_a_damaged_unit_is_computed_again_with_one_line(step, damage, tmp_path, capsys):
    argv, rel = STEPS[step]
    out = tmp_path / "out"
    assert run.main([*argv, "--out", str(out)]) == 0
    unit = out / rel
    intact = unit.read_bytes()
    unit.write_bytes(damage(intact))
    capsys.readouterr()
    assert run.main([*argv, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "damaged unit" in line]
    assert len(lines) == 1 and str(unit) in lines[0] and "computing it again" in lines[0], err
    assert "Traceback" not in err
    assert run.main([*argv, "--out", str(out)]) == 0  # the unit written again is whole: a third run reuses it
    assert "damaged unit" not in capsys.readouterr().err


# -- the run directory's lock ---------------------------------------------------------------------------------------
@pytest.fixture
def sleeper():
    """A live process of this host standing for a run that holds a directory."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _hold(out, pid, **over):
    from opt66b.runs.lock import holder_record, process_start

    out.mkdir(parents=True, exist_ok=True)
    held = {**holder_record("run.py all --out elsewhere", out), "pid": pid, "process_start": process_start(pid), **over}
    (out / "run.lock").write_text(json.dumps(held))
    return held


EVAL = ["eval", "--data", FIXTURES, "--tasks", "copa", "--shots", "0", "--limit", "1"]


def test_a_second_run_into_a_held_directory_exits_2_naming_it_and_the_holder(tmp_path, capsys, sleeper):
    out = tmp_path / "run"
    _hold(out, sleeper.pid)
    for target in (out, out / "eval"):  # the directory itself, or one inside it
        assert run.main([*EVAL, "--out", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err and f"pid {sleeper.pid}" in err, err
        assert "another run is writing here" in err and "run.py all --out elsewhere" in err
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing was written, the holder's lock stays


def test_a_stale_lock_is_taken_over_with_one_line_and_released_at_the_end(tmp_path, capsys, sleeper):
    out = tmp_path / "run"
    _hold(out, sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    assert run.main([*EVAL, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("[lock]") == 1 and "taking over the stale lock" in err and f"pid {sleeper.pid}" in err
    assert not (out / "run.lock").exists() and (out / "shots-0" / "results.json").is_file()


def test_a_reused_pid_a_damaged_lock_and_another_host(tmp_path, capsys):
    out = tmp_path / "run"
    _hold(out, os.getpid(), process_start="1")  # this pid, but a process that started at another time: gone
    assert run.main([*EVAL, "--out", str(out)]) == 0
    assert "taking over the stale lock" in capsys.readouterr().err
    (out / "run.lock").write_text('{"host": "vm", "pi')  # cut short
    assert run.main([*EVAL, "--out", str(out)]) == 0
    assert "unreadable lock file" in capsys.readouterr().err
    _hold(out, 1, host="node-17.cluster")  # a shared file system: that host's processes cannot be seen from here
    assert run.main([*EVAL, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "node-17.cluster" in err and "another host" in err and str(out / "run.lock") in err


def test_processes_of_one_torchrun_share_the_lock_of_their_job(tmp_path, monkeypatch, sleeper):
    from opt66b.runs.lock import DirectoryBusy, RunLock, job_id

    out = tmp_path / "run"
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
                       "TORCHELASTIC_RUN_ID": "job-1"}.items():
        monkeypatch.setenv(key, value)
    _hold(out, sleeper.pid, job=job_id())  # rank 0 of this job holds it
    with RunLock(out):
        pass
    monkeypatch.setenv("RANK", "0")
    with RunLock(out):
        pass
    assert (out / "run.lock").is_file()  # rank 0 of the job found its job's lock: it is not released by a sharer
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")  # another job: refused, on every rank
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(DirectoryBusy, match="another run is writing here"):
            RunLock(out).acquire()


def test_a_run_refused_before_writing_leaves_no_directory(tmp_path):
    out = tmp_path / "new" / "run"
    assert run.main([*EVAL[:-4], "--tasks", "nosuchtask", "--out", str(out)]) == 2
    assert not (tmp_path / "new").exists()


def test_a_lock_copied_with_its_directory_does_not_lock_the_copy(tmp_path, capsys, sleeper):
    """`cp -r` of a running run (to look at it): the copy's lock names the original directory, so the copy is free."""
    import shutil

    out = tmp_path / "run"
    _hold(out, sleeper.pid)
    shutil.copytree(out, tmp_path / "copy")
    assert run.main([*EVAL, "--out", str(tmp_path / "copy")]) == 0
    err = capsys.readouterr().err
    assert "taking over the stale lock" in err and f"it was copied from {out.resolve()}" in err
    assert run.main([*EVAL, "--out", str(out)]) == 2  # the original stays locked by its live run
