"""The code's shape, checked on its syntax trees: imports flow one way (run.py -> study -> prune /
induction -> tasks -> opt66b), and a run's shot directory is built and parsed in opt66b/runs/layout.py only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["opt66b", "tasks", "prune", "induction", "study"]
# what each package may import from the project (besides itself); run.py may import them all
ALLOWED = {"opt66b": set(), "tasks": {"opt66b"}, "prune": {"opt66b", "tasks"}, "induction": {"opt66b", "tasks"},
           "study": {"opt66b", "tasks", "prune", "induction"}}


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def project_imports(path: Path) -> set[str]:
    """Top-level project modules a file imports (absolute imports; relative ones stay in its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in [*PACKAGES, "run"]}
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    wrong = {f"{p.relative_to(ROOT)} imports {m}" for p in sources(package)
             for m in project_imports(p) - ALLOWED[package] - {package}}
    assert not wrong, sorted(wrong)


def shot_literals(path: Path) -> list[int]:
    """Lines where code (not a docstring or help text) builds or matches a 'shots-' name: an f-string
    with a shots- part, or a glob / regex pattern for one."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.JoinedStr):
            if any(isinstance(v, ast.Constant) and "shots-" in str(v.value) for v in node.values):
                lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("shots-") and any(c in node.value for c in "*(["):
                lines.append(node.lineno)
    return lines


def test_shot_directories_are_named_in_one_module():
    layout = ROOT / "opt66b" / "runs" / "layout.py"
    assert shot_literals(layout), "the check must see the one place that builds the name"
    found = {f"{p.relative_to(ROOT)}:{line}" for pkg in PACKAGES for p in sources(pkg) if p != layout
             for line in shot_literals(p)}
    found |= {f"run.py:{line}" for line in shot_literals(ROOT / "run.py")}
    assert not found, f"build or parse shot directories with opt66b.runs.layout instead: {sorted(found)}"
