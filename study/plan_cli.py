"""`run.py CMD --plan`: the cost of a step, or of every step of `run.py all`, without running it and without any
weights: the model's shape and placement from its config (study/machine.py), each step priced by its planner
(study/costs.py), a table on stdout or --plan-json PATH.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from opt66b.runs.loading import LoadSettings
from opt66b.runs.settings import step_class

from .costs import PlanSettings, add_precision, format_plan, make_plan, note_data, price
from .machine import model_shape


def plan_of(args: argparse.Namespace) -> dict[str, Any]:
    """The plan of the command `args` holds (all: study/study.py resolves it; a step: its settings, priced)."""
    if args.command == "all":
        from .study import resolve

        return resolve(args, for_plan=True).plan
    settings = step_class(args.step).from_args(args)
    ps, load = PlanSettings.from_args(args), LoadSettings.from_args(args)
    shape, tokenizer, info = model_shape(load, ps.processes)
    plan = make_plan(price([(" ".join(settings.COMMAND), settings, "")], shape, tokenizer), shape, info, ps, load)
    if hasattr(settings, "batch_tokens") and settings.COMMAND[0] in ("eval", "prune"):
        add_precision(plan, ps, settings.data, settings.tasks, settings.shots, settings.limit, settings.out)
    elif getattr(settings, "data", None) is not None:
        note_data(plan, settings.data)
    return plan


def run_plan(args: argparse.Namespace) -> int:
    from opt66b.runs.options import emit_json

    plan = plan_of(args)
    if args.json is None or str(args.json) != "-":
        print(format_plan(plan))
    emit_json(args.json, plan)
    if args.json is not None and str(args.json) != "-":
        print(f"plan written to {args.json}", file=sys.stderr)
    return 0
