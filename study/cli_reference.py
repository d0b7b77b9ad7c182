"""docs/cli.md, generated from run.py's parser: every option, what it means, its default and the
commands that take it. One row per (option, meaning): an option that means the same thing in several
commands is one row listing them; where its default differs by command, the row says so.

    python -m study.cli_reference            # rewrite docs/cli.md
    python -m study.cli_reference --check    # exit 1 if docs/cli.md is not what the parser says

tests/test_docs.py runs the check, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> list[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(" ".join(words), parser)]
    out = []
    for name, sub in subs[0].choices.items():
        out += _commands(sub, (*words, name))
    return out


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction)) or action.default is None:
        return "-"
    value = action.default
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    if isinstance(value, Path) and value.is_absolute():
        root = Path(__file__).resolve().parents[1]
        return str(value.relative_to(root)) if value.is_relative_to(root) else str(value)
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").replace("%%", "%").split())


def cli_reference() -> str:
    from .commands import build_parser

    rows: dict[tuple[str, str], dict[str, list[str]]] = {}  # (option, meaning) -> {default: [commands]}
    for command, parser in _commands(build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            key = (", ".join(action.option_strings), _cell(action.help or ""))
            rows.setdefault(key, {}).setdefault(_default(action), []).append(command)
    lines = ["# Command-line options", "",
             "Generated from run.py's parser by `python -m study.cli_reference` (tests/test_docs.py checks it is",
             "current). One row per option and meaning; `-` means no default (the option is off or required).",
             "One spelling per option: the spellings of earlier releases are refused (docs/errors.md).", "",
             "| option | meaning | default | commands |", "|---|---|---|---|"]
    for (option, meaning), defaults in sorted(rows.items()):
        if len(defaults) == 1:
            (default, commands), = defaults.items()
            lines.append(f"| `{option}` | {meaning} | {_cell(default)} | {', '.join(commands)} |")
        else:
            by = "; ".join(f"{_cell(d)} ({', '.join(c)})" for d, c in defaults.items())
            commands = [c for cs in defaults.values() for c in cs]
            lines.append(f"| `{option}` | {meaning} | {by} | {', '.join(commands)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    text = cli_reference()
    if "--check" in sys.argv:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run `python -m study.cli_reference`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
