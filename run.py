#!/usr/bin/env python3
"""opt66b: the Bansal et al. (ACL 2023) in-context-learning interpretability study on any OPT checkpoint.

One sub-command per experiment. Each package registers its own sub-commands (a `register(sub)`
function in its cli module) from the shared grammar (opt66b/runs/options.py, tasks/cli_options.py);
heavy imports happen inside the handlers, so `--help` imports no torch and is instant. Every step
that runs the model also answers `--plan` (study/plan.py): its cost, without running it.

    python run.py --help
    python run.py <command> --help
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from study.commands import build_parser  # the grammar lives in study/commands.py


# Options that name an output directory / file: checked (creatable, writable, not a file) before any
# computation, and cleared of temp files orphaned by killed writes.
OUTPUT_DIR_OPTIONS = {"out": "--out"}
OUTPUT_FILE_OPTIONS = {"json": "--json"}
# Errors that mean "the input is wrong", not "the program is": one line, exit 2.
USER_ERRORS = (OSError, ValueError, KeyError, EOFError, UnicodeError)


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user-facing failure prints one line `run.py CMD: error: ...` and returns 2;
    anything else is reported as an internal error (exit 1). `--debug` anywhere on the line (or
    OPT66B_DEBUG=1) shows the traceback instead."""
    import os

    from opt66b.runs.options import require_out

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("OPT66B_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of errors (anywhere on the line)")
    args = parser.parse_args(argv)
    require_out(parser, args)
    previous = os.environ.get("OPT66B_DEBUG")
    if debug:
        os.environ["OPT66B_DEBUG"] = "1"  # steps of `run.py all` run through main() too
    try:
        if getattr(args, "plan", False):
            from study.plan_cli import run_plan  # the cost of the step, instead of the step

            return run_plan(args)
        check_outputs(args)
        with run_directory_lock(args):
            if getattr(args, "step", None):  # a step of the study: its settings class, checked, loaded, run
                from opt66b.runs.loading import run_step

                return run_step(args)
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"run.py {args.command}: interrupted; finished units are kept, rerun to resume", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        if isinstance(err, USER_ERRORS):
            # KeyError's str() adds quotes; its first argument is our message.
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            msg = _with_cause(args, err, msg)
            print(f"run.py {args.command}: error: {_one_line(msg)}", file=sys.stderr)
            return 2
        if type(err).__name__ == "OutOfMemoryError":  # torch's, a RuntimeError: not a bug of ours
            print(f"run.py {args.command}: error: out of device memory ({_one_line(err)[:200]}); lower "
                  "--batch-tokens, or spread the model with --device-map/--offload", file=sys.stderr)
            return 2
        print(f"run.py {args.command}: internal error ({type(err).__name__}: {_one_line(err)}); "
              "rerun with --debug for the traceback and report it", file=sys.stderr)
        return 1
    finally:
        if previous is None:
            os.environ.pop("OPT66B_DEBUG", None)
        else:
            os.environ["OPT66B_DEBUG"] = previous


def check_outputs(args: argparse.Namespace) -> None:
    """Every output directory/file option is writable before the command computes anything."""
    from opt66b.runs.results import check_output_dir

    for name, label in OUTPUT_DIR_OPTIONS.items():
        if getattr(args, name, None) is not None:
            check_output_dir(getattr(args, name), label)
    for name, label in OUTPUT_FILE_OPTIONS.items():
        path = getattr(args, name, None)
        label = "--plan-json" if name == "json" and hasattr(args, "throughput") else label
        if isinstance(path, (str, Path)) and str(path) != "-":  # "-": stdout
            path = Path(path)
            if path.is_dir():
                raise IsADirectoryError(f"{label} {path}: is a directory; give a file name")
            check_output_dir(path.parent, label)


def run_directory_lock(args: argparse.Namespace) -> Any:
    """The lock of the run directory a command writes (opt66b/runs/lock.py); none for a command without one."""
    import contextlib

    from opt66b.runs.lock import RunLock

    if getattr(args, "out_required", False) and args.out is not None:
        if getattr(args, "reads_out", False) and not Path(args.out).is_dir():
            return contextlib.nullcontext()  # `report` on a missing run: its own error names it
        return RunLock(args.out)
    return contextlib.nullcontext()


def _with_cause(args: argparse.Namespace, err: Exception, msg: object) -> object:
    """A non-finite value met while running a model: add where it comes from (which weight file and
    tensor, or the activations; opt66b.runs.diagnose), so the user knows what to fix."""
    from opt66b.runs.results import NonFiniteError

    if not isinstance(err, NonFiniteError) or err.cause_known or not hasattr(args, "random_weights"):
        return msg
    from opt66b.runs.diagnose import explain_nonfinite
    from opt66b.runs.loading import TINY_MODEL_DIR, resolve_device, resolve_dtype

    try:
        dtype = resolve_dtype(getattr(args, "dtype", None), resolve_device(getattr(args, "device", None)))
        model_dir = None if args.random_weights else Path(args.model or TINY_MODEL_DIR).expanduser()
        return f"{msg}; {explain_nonfinite(model_dir, dtype)}"
    except Exception as diag_err:  # the diagnosis must never hide the error it explains
        return f"{msg} (the weights could not be scanned: {diag_err})"


def _one_line(msg: object) -> str:
    return " ".join(str(msg).split())


if __name__ == "__main__":
    sys.exit(main())
