"""The command-line grammar of run.py as a parser any part of the study can build: each package
contributes its sub-commands through a `register(sub)` function in its cli module. `run.py` and the
steps of `run.py all` (study/pipeline.py, study/plan_cli.py) build the same parser from here, so
nothing under study/ imports the top-level script. Only argparse is imported: `--help` needs no torch.
"""

from __future__ import annotations

import argparse
import importlib

# Packages that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = ["opt66b.runs.commands", "tasks.cli", "prune.cli", "induction.cli", "study.cli", "study.run_cli"]
DESCRIPTION = "opt66b: the Bansal et al. (ACL 2023) in-context-learning interpretability study on any OPT checkpoint."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python run.py all --out runs/tiny      # the whole study on the embedded tiny OPT\n"
               "  python run.py all --random-weights opt-66b --device cuda:0 --plan --throughput 400   # its cost at 66B")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser
