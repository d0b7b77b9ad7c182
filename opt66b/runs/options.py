"""The command-line grammar shared by every run.py sub-command: model, output, seed, JSON and plan options.

One definition per option, so an option means the same thing and has the same default wherever it
appears. Only argparse and pathlib are imported here (no torch): `run.py --help` and every
`run.py CMD --help` build all parsers, and they must stay instant. The task options (--data,
--tasks, --shots, --limit) live next to the tasks, in tasks/cli_options.py.

    --out DIR        every output directory (finished units are skipped on rerun)
    --seed N         every randomised step, with the default the paper's released code used for that step
    --json PATH      write a file-only command's result as JSON to PATH ("-": to stdout): data check's
                     rows, device-map's map
    --plan           print passes, tokens, FLOPs, memory and time of the command without running it
    --plan-json PATH the same plan as JSON (implies --plan)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DTYPE_NAMES = ("bfloat16", "float16", "float32")


class _PlanJson(argparse.Action):
    """--plan-json PATH: write the plan as JSON, which implies --plan."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.json, namespace.plan = values, True


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --tokenizer, --dtype, --device and the scale options (opt66b/placement.py, offload.py),
    read by opt66b.runs.loading.load_from_args. With no --model the embedded tiny OPT is used."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", type=Path, default=None,
                   help="HF OPT checkpoint directory with safetensors (default: the embedded tiny OPT)")
    g.add_argument("--tokenizer", type=Path, default=None,
                   help="directory with vocab.json + merges.txt (default: the model directory)")
    g.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                   help="weight dtype (default: float32 on CPU, float16 on GPU)")
    g.add_argument("--device", default=None, help="compute device, e.g. cpu or cuda:0 (default: cuda if available)")
    g.add_argument("--device-map", default=None, metavar="MAP",
                   help="layer placement: auto (needs --max-memory), ranges like 0-31:cuda:0,32-63:cuda:1 "
                        "(optional embed:DEVICE entry for the embeddings/output head), or a .json file")
    g.add_argument("--max-memory", default=None, metavar="BUDGETS",
                   help="per-device budgets for --device-map auto and --offload mmap, e.g. "
                        "cuda:0=70GiB,cuda:1=70GiB,cpu=200GiB")
    g.add_argument("--reserve", default=None, metavar="BUDGETS",
                   help="memory --device-map auto keeps free for activations on each GPU, e.g. cuda:0=14GiB "
                        "(default: 8192 tokens of one layer's working set + 2048 rows of logits; `all` sets it "
                        "from its plan when the default leaves a step over budget)")
    g.add_argument("--offload", choices=["auto", "none", "pinned", "mmap"], default="auto",
                   help="auto/pinned: layers mapped to cpu are streamed to the GPU from pinned memory; "
                        "none: they run on the CPU; mmap: every layer streamed from the safetensors files "
                        "(CPU-only big models; peak RSS bounded by --max-memory cpu=...)")
    g.add_argument("--random-weights", default=None, metavar="SIZE",
                   help="no checkpoint: random weights of an official shape (e.g. opt-66b) built directly on "
                        "the devices; tokenizer from the embedded tiny OPT. For placement/speed tests and --plan")
    g.add_argument("--random-weights-seed", type=int, default=0, help="seed of --random-weights (default 0)")
    g.add_argument("--recompute", action="store_true",
                   help="replace result units in --out made with other settings (default: refuse them, naming "
                        "the file and what changed)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: torch's choice, printed; recorded in every output). "
                        "On a shared machine set it to the cores you may use")


def add_out_arg(parser: argparse.ArgumentParser, what: str = "output directory") -> None:
    """--out DIR; required, except with --plan (run.py checks it: `require_out`)."""
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help=f"{what} (required)")
    parser.set_defaults(out_required=True)


def require_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 with argparse's own message when --out is missing and the command is going to run."""
    if getattr(args, "out_required", False) and args.out is None and not getattr(args, "plan", False):
        command = getattr(parser, "_command_parser", lambda _: parser)(args)  # `run.py all: error: ...`
        command.error("the following argument is required: --out (or --plan)")


def add_seed_arg(parser: argparse.ArgumentParser, default: int, what: str) -> None:
    parser.add_argument("--seed", type=int, default=default, help=f"{what} (default: {default})")


def add_json_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help=f"write {what} as JSON to PATH ('-': to stdout, instead of the table)")


def add_plan_args(parser: argparse.ArgumentParser, step: str) -> None:
    """--plan (and its --throughput / --plan-json) for a step that runs the model; `step` names the
    planner in study/plan.py. run.py answers --plan before the step's handler is called."""
    g = parser.add_argument_group("plan (cost estimate without running; study/plan.py)")
    g.add_argument("--plan", action="store_true",
                   help="print per step the forward/backward passes, tokens, FLOPs, peak memory per device and "
                        "an estimated time, then exit; loads no weights (also with --random-weights SIZE)")
    g.add_argument("--throughput", type=float, default=None, metavar="TFLOPS",
                   help="with --plan: sustained TFLOP/s of the compute device (default: measured by a short "
                        "timed layer-shaped matmul on --device)")
    g.add_argument("--gpu", default=None, metavar="KIND",
                   help="with --plan: the GPU kind to plan for without the card (h100-80gb, h100-pcie, h200, a100-40gb, "
                        "a100-80gb, l40s; opt66b/hardware.py): its usable memory bounds --max-memory and its dense "
                        "peak --throughput, and 45%% of that peak is the default throughput (on a GPU: read from it)")
    g.add_argument("--processes", type=int, default=None, metavar="N",
                   help="with --plan: the time on N torchrun processes, each with its own copy of the placement "
                        "(default: WORLD_SIZE under torchrun, else 1)")
    if step in ("all", "eval", "prune"):
        g.add_argument("--target-halfwidth", type=float, default=None, metavar="POINTS",
                       help="with --plan: the least-cost documents per task that bring the 95%% half-width of the "
                            "mean drop over the seen tasks (what the paper reads) down to POINTS, their FLOPs beside "
                            "the full data's, or the best half-width the data gives (study/precision.py)")
    for action in parser._actions:
        if action.dest == "out":
            action.help = action.help.replace("(required)", "(required, except with --plan)")
    g.add_argument("--plan-json", dest="json", action=_PlanJson, type=Path, default=None, metavar="PATH",
                   help="write the plan as JSON to PATH ('-': to stdout, instead of the table); implies --plan")


def emit_json(path: Path | None, obj: Any) -> None:
    """The --json PATH rule: '-' prints `obj` to stdout, any other path is written atomically."""
    from opt66b.runs.results import json_default, write_json

    if path is None:
        return
    if str(path) == "-":
        sys.stdout.write(json.dumps(obj, indent=2, default=json_default) + "\n")
        return
    write_json(path, obj)


def example(*commands: str) -> str:
    """The epilog every --help ends with: one or more commands to copy."""
    head = "example:" if len(commands) == 1 else "examples:"
    return head + "".join(f"\n  {c}" for c in commands)
