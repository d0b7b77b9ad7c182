"""The documentation a clone carries stays true: README.md and docs/*.md link to files that exist,
every `python run.py ...` command they show parses with run.py's real parser, every docs/ page the
code names exists, and nothing points outside the repository (a clone has no sibling directories).

These tests read files only; parsing a command builds the argparse tree without running anything.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".benchmarks", "runs", "build", "dist"}
TEXT_SUFFIXES = {".py", ".md", ".txt", ".json", ".ini", ".cfg", ".toml", ".sh", ""}
THIS = Path(__file__).resolve()

# A reader of the repository alone cannot follow these: the reference notes that live next to the
# checkout during development, and words about how the work was organised rather than about the code.
OUTSIDE = re.compile(r"\.\./shared|shared/specs|paper_method_spec|lm_eval_task_spec|opt_checkpoint_facts"
                     r"|style_anchors")
PROCESS = re.compile(r"\bthe issue's\b|\bfoundation issue\b|(?<!transformers )\bissue \d+\b|\bhelper session\b",
                     re.IGNORECASE)
MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
DOCS_PATH = re.compile(r"\bdocs/[A-Za-z0-9_./-]+\.(?:md|png)")
# File paths a page names in backticks or plain text, e.g. prune/importance.py or tests/golden/.
CODE_PATH = re.compile(r"(?<![\w./~-])((?:opt66b|tasks|prune|induction|study|tests|docs)/[A-Za-z0-9_./-]*"
                       r"[A-Za-z0-9_])")


def repo_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES and path.stat().st_size < 2_000_000:
            out.append(path)
    return out


def code_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, logical line) of every line inside fenced or 4-space-indented code blocks,
    with backslash continuations joined."""
    lines, fenced, out = text.splitlines(), False, []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
            i += 1
            continue
        if fenced or line.startswith("    "):
            start, logical = i + 1, line.strip()
            while logical.endswith("\\") and i + 1 < len(lines):
                i += 1
                logical = logical[:-1] + " " + lines[i].strip()
            out.append((start, logical))
        i += 1
    return out


def run_py_commands() -> list[tuple[str, list[str]]]:
    """Every run.py invocation shown in a code block: (where, argv after run.py)."""
    found = []
    for page in PAGES:
        for lineno, line in code_blocks(page.read_text(encoding="utf-8")):
            if "run.py" not in line or line.startswith(("#", ">>>")):
                continue
            lex = shlex.shlex(line, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            tokens = list(lex)  # shlex drops a trailing `# comment`
            starts = [k for k, tok in enumerate(tokens) if tok.endswith("run.py")]
            if not starts:
                continue
            argv = []
            for tok in tokens[starts[0] + 1:]:
                if tok in {"&&", "||", "|", ";", ">", ">>", "<", "&"}:
                    break
                argv.append(tok)
            found.append((f"{page.relative_to(ROOT)}:{lineno}: {line}", argv))
    return found


COMMANDS = run_py_commands()


def test_pages_exist_and_readme_is_short():
    names = {p.name for p in PAGES}
    for page in ["method.md", "validation.md", "data.md", "scale.md", "porting.md"]:
        assert page in names, f"docs/{page} is missing"
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 260


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_resolve(page):
    missing = []
    for target in MD_LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # web links and in-page anchors
        if not (page.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_file_paths_named_in_pages_exist(page):
    text = page.read_text(encoding="utf-8")
    missing = sorted({p for p in CODE_PATH.findall(text) if "*" not in p and "{" not in p
                      and not (ROOT / p).exists()})
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_docs_pages_named_in_code_exist():
    missing = []
    for path in repo_files():
        if path.suffix != ".py":
            continue
        for ref in DOCS_PATH.findall(path.read_text(encoding="utf-8", errors="replace")):
            if not (ROOT / ref).exists():
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, "docs/ pages named in the code do not exist:\n" + "\n".join(missing)


def test_nothing_points_outside_the_repository():
    hits = []
    for path in repo_files():
        if path.resolve() == THIS:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line) or PROCESS.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not hits, ("references a clone cannot follow (say it here, or cite the paper or a docs/ page):\n"
                      + "\n".join(hits))


def test_readme_setup_matches_ci():
    """.ci/run installs and tests exactly as the README tells a fresh clone to."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace(" --quiet", "")
    for command in ["python -m pip install torch==2.13.0", 'python -m pip install -e ".[test,plots]"',
                    "python -m pytest -q"]:
        assert command in readme, f"README lacks the set-up command {command!r}"
        assert command in ci, f".ci/run lacks {command!r}"


def test_commands_were_found():
    assert len(COMMANDS) >= 15, f"only {len(COMMANDS)} run.py commands found in README.md and docs/"


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w.split(": ")[0] for w, _ in COMMANDS])
def test_documented_command_parses(where, argv):
    import run

    parser = run.build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            pytest.fail(f"{where}\n  does not parse with run.py's parser (exit {exc.code})")


def test_cli_reference_is_what_the_parser_says():
    """docs/cli.md is generated from run.py's parser (study/cli_reference.py): every option, its meaning,
    default and commands. A changed option without a regenerated page fails here."""
    from study.cli_reference import DOC, cli_reference

    text = cli_reference()
    assert DOC.read_text() == text, "docs/cli.md is out of date: run `python -m study.cli_reference`"
    for option in ("--random-weights", "--head-percents", "--head-percent", "--protocol", "--reserve", "--seed"):
        assert f"`{option}`" in text or f"`{option}," in text, option
    table = text.split("| option |", 1)[1]  # old spellings: named in the introduction, never a row
    assert "`--size`" not in table and "`--heads-percent`" not in table


def test_section_numbers_are_the_papers():
    """Induction heads are the paper's §6.3 and §6.3.1 (its §7 is related work), per-task capacity its
    Appendix A.9: no page or docstring may cite §7 for them."""
    for path in [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("*/*.py"), ROOT / "run.py"]:
        if "tests" in path.parts:
            continue
        assert "§7" not in path.read_text(), f"{path} cites §7"
