"""The code's shape, checked on its syntax trees: imports flow one way (run.py -> study -> prune /
induction -> tasks -> opt66b) between packages and between files (no two files import each other, lazily
or not), the model files import nothing of the run infrastructure (opt66b/runs/), and a run's shot
directory is built and parsed in opt66b/runs/layout.py only."""

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


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def file_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports anywhere (at the top or inside a function: both tie the two files),
    relative imports resolved; `from package import name` counts the submodule when `name` is one."""
    here = module_of(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != module_of(path):
                found.add(t)
    return found


def project_files() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in sources(pkg)] + [ROOT / "run.py"]
    return {module_of(p): p for p in files}


def test_no_file_level_import_circle():
    """A step split in two files that call each other is one step in two rooms: every import between the
    project's files, lazy ones included, points one way (no strongly connected group of files)."""
    files = project_files()
    graph = {m: file_imports(p, set(files)) - {m} for m, p in files.items()}
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert graph["study.pipeline"] and "study.study" in graph["study.pipeline"], "the check must see imports"
    assert not circles, f"files that import each other: {circles}"


def test_the_model_files_import_nothing_of_the_run_infrastructure():
    """opt66b/ holds the model (decoder, config, capture, weights, placement, streaming, layer order, cost,
    export, conversion); opt66b/runs/ the run infrastructure, which may use the model but not the reverse."""
    files = project_files()
    model_files = {m: p for m, p in files.items() if m.startswith("opt66b") and not m.startswith("opt66b.runs")}
    assert "opt66b.model" in model_files and "opt66b.layer_major" in model_files
    wrong = {f"{m} imports {t}" for m, p in model_files.items() for t in file_imports(p, set(files))
             if t.startswith("opt66b.runs") and m != "opt66b"}  # the package's lazy name table may point anywhere
    assert not wrong, sorted(wrong)
