"""The command-line grammar of run.py as a parser any part of the study can build: each package
contributes its sub-commands through a `register(sub)` function in its cli module. `run.py` and the
steps of `run.py all` (study/pipeline.py, study/plan_cli.py) build the same parser from here, so
nothing under study/ imports the top-level script. Only argparse is imported: `--help` needs no torch.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re

# Packages that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = ["opt66b.runs.commands", "tasks.cli", "prune.cli", "induction.cli", "study.cli", "study.run_cli"]
DESCRIPTION = "opt66b: the Bansal et al. (ACL 2023) in-context-learning interpretability study on any OPT checkpoint."


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors in one line (docs/errors.md): `run.py CMD: error: ...`, no usage block; an unknown option
    names the nearest valid spelling of the command it was given to. Sub-command parsers inherit the class."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed, extras = super().parse_known_args(args, namespace)
        self._parsed = parsed  # what the line reached, for error(): the command an unknown option was given to
        return parsed, extras

    def error(self, message: str):  # type: ignore[override]
        parser: argparse.ArgumentParser = self
        if message.startswith("unrecognized arguments: ") and getattr(self, "_parsed", None) is not None:
            parser = self._command_parser(self._parsed)
            message = unknown_options(parser, message.removeprefix("unrecognized arguments: ").split())
        choice = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:  # the nearest spelling, not every choice
            options = re.findall(r"'([^']*)'", choice.group(3))
            near = difflib.get_close_matches(choice.group(2), options, n=1, cutoff=0.6)
            message = (f"{choice.group(1)}: unknown choice {choice.group(2)!r}" +
                       (f" (did you mean {near[0]}?)" if near else f" (one of {', '.join(options)})"))
        parser.exit(2, f"{parser.prog}: error: {message} (`{parser.prog} --help` lists the options)\n")

    def _command_parser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The innermost sub-command parser the line reached (`run.py importance heads`), else this one."""
        parser: argparse.ArgumentParser = self
        while True:
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            name = getattr(parsed, subs[0].dest, None) if subs else None
            if not subs or name not in subs[0].choices:
                return parser
            parser = subs[0].choices[name]


def unknown_options(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """'unknown option --shtos (did you mean --shots?)', for the first unknown word on the line."""
    known = [s for a in parser._actions for s in a.option_strings]
    word = next((e for e in extras if e.startswith("-")), extras[0])
    if not word.startswith("-"):
        return f"unexpected argument {word!r}"
    near = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.6)
    return f"unknown option {word.split('=')[0]}" + (f" (did you mean {near[0]}?)" if near else "")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="run.py", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python run.py all --out runs/tiny      # the whole study on the embedded tiny OPT\n"
               "  python run.py all --random-weights opt-66b --device cuda:0 --plan --throughput 400   # its cost at 66B")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser
