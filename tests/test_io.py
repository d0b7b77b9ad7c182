"""opt66b.runs.results: atomic result files."""

from __future__ import annotations

import os
import stat
import sys

import pytest


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_atomic_write_gives_umask_permissions_and_leaves_no_temp(tmp_path):
    from opt66b.fileio import atomic_write_text, read_json
    from opt66b.runs.results import write_json

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "sub" / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as open() would make it, not mkstemp's 0600
    assert read_json(path) == {"a": 1}
    atomic_write_text(path, "{\"a\": 2}\n")  # replaced whole
    assert read_json(path) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # no .tmp left behind
