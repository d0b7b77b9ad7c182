"""The README's quick start, run word for word (`python run.py all --out runs/tiny`, in a temporary directory): it
finishes, and the README's excerpt of its report is exactly what the rule in study/readme_excerpt.py cuts from the
report it wrote. When the study's output changes, `python -m study.readme_excerpt runs/tiny --write` updates the
README from a fresh quick start. About 3 minutes on 2 cores."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from study import readme_excerpt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """The quick start's run directory, made by the README's command (the README names runs/tiny; here a temp dir)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"## Quick start.*?```bash\n(.*?)\n```", readme, re.S).group(1).strip()
    assert command == "python run.py all --out runs/tiny", command  # the command this test runs
    out = tmp_path_factory.mktemp("quickstart") / "tiny"
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "all", "--out", str(out)], capture_output=True,
                          text=True, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_the_readme_excerpt_is_what_the_quick_start_writes(quick_start):
    out, _ = quick_start
    written = readme_excerpt.cut((out / "report.md").read_text(encoding="utf-8"))
    shown = readme_excerpt.in_readme((ROOT / "README.md").read_text(encoding="utf-8"))
    assert shown == written, "README.md's excerpt differs from the quick start's report: run " \
                             "`python run.py all --out runs/tiny && python -m study.readme_excerpt runs/tiny --write`"


def test_the_quick_start_report_starts_with_what_it_is_and_a_summary(quick_start):
    out, proc = quick_start
    report = (out / "report.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", report, re.M)
    assert sections[:2] == ["What this run is", "Summary"], sections[:4]
    head = report.split("## Summary")[0]
    assert "**Protocol: corrected**" in report.split("\n## ")[0]  # its first lines name the protocol
    for word in ("content identity", "the bundled samples", "seeds", "protocol", "git commit", "started", "torch"):
        assert word in head, word
    summary = report.split("## Summary")[1].split("\n## ")[0]
    assert "within their interval of chance" in summary and "Induction heads" in summary
    assert report.count("±") == 1 and "no ± is used" in report  # stated once, in the header: intervals are [lo, hi]
    assert proc.stderr.rstrip().splitlines()[-1].startswith("[all] done in ")  # the last line: the end, at 100%
    assert "100%" not in "".join(line for line in proc.stderr.splitlines() if line.startswith("[all] step"))
