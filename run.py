#!/usr/bin/env python3
"""opt66b: the Bansal et al. (ACL 2023) in-context-learning interpretability study on any OPT checkpoint.

One sub-command per experiment. Each package registers its own sub-commands (a `register(sub)`
function in its cli module) from the shared grammar (opt66b/cli_options.py, tasks/cli_options.py);
heavy imports happen inside the handlers, so `--help` imports no torch and is instant. Every step
that runs the model also answers `--plan` (study/plan.py): its cost, without running it.

    python run.py --help
    python run.py <command> --help
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Packages that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = ["opt66b.cli", "tasks.cli", "prune.cli", "induction.cli", "opt66b.scale_cli", "study.cli", "study.run_cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python run.py all --out runs/tiny      # the whole study on the embedded tiny OPT\n"
               "  python run.py all --random-weights opt-66b --device cuda:0 --plan --throughput 400   # its cost at 66B")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from opt66b.cli_options import require_out

    parser = build_parser()
    args = parser.parse_args(argv)
    require_out(parser, args)
    try:
        if getattr(args, "plan", False):
            from study.plan_cli import run_plan  # the cost of the step, instead of the step

            return run_plan(args)
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as err:
        # User-facing problems (missing files, malformed records, bad masks): one clear line, exit 2.
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"run.py {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
