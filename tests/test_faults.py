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
