"""`run.py all`: the whole study, in order, on a model loaded once.

Each step is a typed settings object (opt66b/runs/settings.py; `plan_steps` builds them from `all`'s
options) that `all` hands, with the one loaded model, to the step's experiment (`settings.execute`):
no argument list is rendered or parsed to run a step. OUT/commands.txt holds each step as the
`run.py` line its settings render (`settings.argv`), which parses back into equal settings, so an
auditor can replay any step alone and compute exactly what the step computed. Every step is resumable on its own (units whose fingerprint
matches are skipped), so rerunning `all` after a kill continues where it stopped. The steps share
one evaluation cache (tasks.evaluate.EvaluationCache), so a cell two sweeps contain is evaluated
once; a replayed commands.txt line recomputes it and gets the same numbers. OUT/work.json
records, per model step, the forward / backward passes and tokens this invocation computed (resumed
units count nothing).

    data check -> evaluation -> head importance (+ aggregate of the seen tasks) -> FFN oracle
    -> head / FFN / grid pruning -> Spearman matrices -> cross-task transfer (partners from them)
    -> prefix matching -> copying -> capacity retained
    -> synthetic copy task -> report
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from opt66b.runs.layout import RunLayout
from tasks.registry import PAPER_SEEN_TASKS, PAPER_UNSEEN_TASKS, seen_in

PAPER_TASKS = [*PAPER_SEEN_TASKS, *PAPER_UNSEEN_TASKS]
# The default run adds the synthetic copy task (not the paper's; never in its aggregate or task means).
DEFAULT_TASKS = PAPER_TASKS + ["synthetic_copy"]




def available_tasks(data_dir: Path, wanted: list[str], shots: list[int],
                    explicit: bool = False) -> tuple[list[str], list[str]]:
    """Split `wanted` into tasks whose eval split (and few-shot pool, when shots > 0) can be read
    from data_dir, and the rest with the reason, so a partial data directory still runs the default
    study. Tasks the user named (`explicit`) must all be readable: one that is not is an error."""
    from tasks.registry import get_task

    ok, skipped = [], []
    for name in wanted:
        task = get_task(name, data_dir)
        try:
            task.eval_docs()
            if max(shots) > 0:
                task.fewshot_pool()
            ok.append(name)
        except (FileNotFoundError, ValueError) as err:
            if explicit:
                raise type(err)(f"--tasks {name}: {str(err).splitlines()[0]} (drop it from --tasks to run "
                                "without it)") from err
            skipped.append(str(err).splitlines()[0])
    return ok, skipped


def model_flags(args: argparse.Namespace) -> list[str]:
    """The model options of `all`, rendered for every step that uses the model (commands.txt)."""
    from opt66b.runs.loading import LOAD_OPTIONS

    flags = []
    for name in LOAD_OPTIONS:
        value = getattr(args, name, None)
        if value not in (None, False):
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def plan_steps(args: argparse.Namespace, tasks: list[str]) -> list[tuple[str, Any]]:
    """The study as (label, settings) pairs: each step's typed settings (opt66b/runs/settings.py), built from
    `all`'s options. `all` runs them with `settings.execute`; commands.txt holds `settings.argv(...)`."""
    from induction.settings import CapacitySettings, CopyingSettings, PrefixSettings
    from prune.settings import CorrelateSettings, FFNOracleSettings, HeadImportanceSettings, PruneSettings
    from tasks.settings import DataCheckSettings, EvalSettings

    from .settings import CopyTaskSettings

    out = RunLayout(Path(args.out))
    run = {"recompute": bool(getattr(args, "recompute", False)), "threads": getattr(args, "threads", None)}
    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731 - all's unset options: step defaults

    def seed_for(role: str) -> int | None:  # a role's own seed, else --seed, else the step's default
        own = getattr(args, role, None)
        return own if own is not None else getattr(args, "seed", None)

    data = {"data": Path(args.data), "tasks": tuple(tasks), "shots": tuple(args.shots), "protocol": args.protocol}
    evaluates = {**run, **data, **given(seed=seed_for("eval_seed")), "limit": args.limit,
                 **given(batch_tokens=args.batch_tokens)}
    importance = {**run, **data, **given(seed=seed_for("importance_seed")), "n_docs": args.n_docs,
                  **given(backward=getattr(args, "backward", None)), "max_memory": getattr(args, "max_memory", None)}
    sweep = {**evaluates, "out": out.prune, "max_memory": getattr(args, "max_memory", None)}
    steps: list[tuple[str, Any]] = [
        ("data check", DataCheckSettings(data=Path(args.data), tasks=tuple(tasks), json=out.data_check)),
        ("evaluation", EvalSettings(**evaluates, out=out.eval, max_memory=getattr(args, "max_memory", None))),
        ("head importance", HeadImportanceSettings(**importance, out=out.importance)),
    ]
    other, differ = other_protocol(args), targets_differ(tasks)
    if differ:  # the tasks whose importance examples the protocol changes, under the other one's targets
        steps.append((f"head importance under the {other} protocol's targets ({', '.join(differ)})",
                      HeadImportanceSettings(**{**importance, "tasks": tuple(differ), "protocol": other},
                                             out=out.importance_under(other))))
    steps += [
        ("FFN oracle", FFNOracleSettings(**evaluates, out=out.ffn, max_memory=getattr(args, "max_memory", None))),
        ("head pruning (own ranking)", PruneSettings(**sweep, sweep="heads", importance=out.importance)),
        ("head pruning (aggregate ranking)", PruneSettings(**sweep, sweep="heads", ranking="aggregate",
                                                           importance=out.importance)),
        ("FFN pruning", PruneSettings(**sweep, sweep="ffn", ffn_importance=out.ffn)),
        ("combined grid", PruneSettings(**sweep, sweep="grid", importance=out.importance, ffn_importance=out.ffn)),
        ("Spearman correlations", CorrelateSettings(importance=out.importance, out=out.correlate,
                                                    compare_importance=out.importance_under(other) if differ else None)),
    ]
    if len(seen_in(tasks)) > 1:  # partners need at least two seen tasks with importance
        steps.append(("cross-task transfer (highest / lowest correlated partners)",
                      PruneSettings(**sweep, sweep="transfer", correlations=out.correlations, importance=out.importance)))
    first_seed = given(first_seed=seed_for("sequence_seed"))
    steps += [
        ("prefix matching", PrefixSettings(**run, seeds=args.seeds, **first_seed, out=out.induction)),
        ("copying", CopyingSettings(**run, seeds=args.seeds, **first_seed, out=out.induction)),
        ("capacity retained", CapacitySettings(scores=out.induction, importance=out.importance, out=out.capacity)),
        ("synthetic copy task", CopyTaskSettings(**run, seeds=min(args.seeds, 16), **given(seed=seed_for("sequence_seed")),
                                                 out=out.copytask)),
    ]
    return steps


def command_line(args: argparse.Namespace, settings: Any) -> str:
    """The OUT/commands.txt line of a step: `python run.py` with its argv (model options included)."""
    return "python run.py " + shlex.join(settings.argv(model_flags(args)))


def other_protocol(args: argparse.Namespace) -> str:
    return "corrected" if getattr(args, "protocol", "corrected") == "paper" else "paper"


def targets_differ(tasks: list[str]) -> list[str]:
    """The tasks whose importance examples differ between the protocols (Task.PAPER_TARGETS_DIFFER)."""
    from tasks.registry import ALL_TASKS

    return [t for t in tasks if ALL_TASKS[t].PAPER_TARGETS_DIFFER]


class StudyClock:
    """The whole study's progress: each step's planned FLOPs (study/plan_cli.make_plan, the same plan
    `all --plan` prints) against the time the computed steps took so far, so the ETA follows this
    machine's real rate; work.json gets planned and measured seconds per step. A plan that cannot be
    made (an unusual setup) leaves the run without an overall ETA, never fails it."""

    def __init__(self, args: argparse.Namespace):
        self.flops: dict[str, float] = {}
        self.tflops = self.reserve = None
        try:
            from .plan_cli import make_plan

            plan = make_plan(argparse.Namespace(**{**vars(args), "json": None}), keep=True)
            self.flops = {r["step"]: float(r["flops"]) for r in plan["steps"]}
            self.tflops, self.reserve = plan["throughput_tflops"], plan.get("reserve")
        except Exception as err:  # noqa: BLE001 - the ETA is a convenience, the study must not depend on it
            print(f"[all] no overall ETA ({type(err).__name__}: {err})", file=sys.stderr)
        self.total = sum(self.flops.values())
        self.finished = 0.0  # planned FLOPs of the steps done
        self.rate_flops = self.rate_seconds = 0.0  # of the steps that computed (resumed ones say nothing of speed)

    def done(self, label: str, seconds: float, computed: bool) -> None:
        self.finished += self.flops.get(label, 0.0)
        if computed and self.flops.get(label):
            self.rate_flops += self.flops[label]
            self.rate_seconds += seconds

    def line(self) -> str:
        if not self.total:
            return ""
        share = self.finished / self.total
        if not self.rate_flops:
            return f"; {share:.0%} of the planned work done"
        left = (self.total - self.finished) * self.rate_seconds / self.rate_flops
        return f"; {share:.0%} of the planned work done, ETA for the whole study {left:.0f}s"

    def record(self, label: str, seconds: float) -> dict[str, Any]:
        planned = self.flops.get(label)
        return {"planned_flops": planned, "measured_seconds": round(seconds, 3),
                "planned_seconds": None if planned is None or not self.tflops else planned / (self.tflops * 1e12)}


def run_all(args: argparse.Namespace) -> int:
    from opt66b.runs.distributed import barrier, is_main
    from opt66b.host_memory import trim
    from opt66b.fileio import atomic_write_text
    from opt66b.runs.results import write_json
    from opt66b.runs.loading import load_from_args

    from tasks.evaluate import EvaluationCache

    from .report import write_report

    out = Path(args.out)
    layout = RunLayout(out)
    data = Path(args.data)
    tasks, skipped = available_tasks(data, args.tasks or DEFAULT_TASKS, args.shots, explicit=bool(args.tasks))
    for line in skipped:
        print(f"[all] skipping {line}", file=sys.stderr)
    if not tasks:
        raise ValueError(f"{data}: none of the requested tasks has its data; see `python run.py data check --data {data}`")
    start = time.monotonic()
    # The plan first: its FLOPs give the overall ETA, and on an auto device map with GPU budgets it fits
    # the activation reserve (study/plan_cli.fit_reserve), which every step then loads with.
    eta = StudyClock(args)
    if eta.reserve and not getattr(args, "reserve", None):
        args.reserve = eta.reserve
    steps = plan_steps(args, tasks)
    # The one model load of the whole study, before anything is written: a model it refuses (NaN
    # weights, a bad checkpoint) leaves no run directory behind.
    loaded = load_from_args(args)
    main = is_main()  # under torchrun: every process runs the model steps on its share of the units
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(layout.skipped_tasks, skipped)
        write_json(layout.study, {"protocol": args.protocol, "other_protocol": other_protocol(args),
                                        "targets_differ": targets_differ(tasks), "tasks": tasks, "shots": args.shots})
        atomic_write_text(layout.commands, "".join(command_line(args, st) + "\n" for _, st in steps))
    cache = EvaluationCache(loaded[0])
    work: dict[str, dict[str, Any]] = {}
    for i, (label, settings) in enumerate(steps, 1):
        if main:
            print(f"[all] step {i}/{len(steps)}: {label} ({time.monotonic() - start:.0f}s elapsed{eta.line()})",
                  file=sys.stderr, flush=True)
        step_start = time.monotonic()
        if not settings.USES_MODEL and not main:  # steps that only read files run once, on rank 0
            barrier()
            continue
        # The step's typed settings go straight to its experiment, on the model loaded above; its
        # commands.txt line parses back into the same settings (tests/test_settings.py).
        try:
            # evaluations one step ran are not run again by a later one (the shared cache)
            result = settings.execute(loaded, cache) if settings.USES_MODEL else settings.execute()
        except (FileNotFoundError, ValueError, KeyError):
            print(f"[all] step '{label}' failed; fix the cause and rerun: finished work is kept", file=sys.stderr)
            raise
        trim()  # the step's freed host memory back to the system before the next (opt66b/host_memory.py)
        seconds = time.monotonic() - step_start
        step_work = result.get("work")
        eta.done(label, seconds, computed=bool((step_work or {}).get("forward_passes")))
        if step_work is not None and main:
            work[label] = {**step_work, **eta.record(label, seconds)}
            write_json(layout.work, work)
        if result["code"]:
            print(f"[all] step '{label}' failed (exit {result['code']}); fix the cause and rerun: finished work "
                  "is kept", file=sys.stderr)
            return result["code"]
        barrier()  # the next step reads what rank 0 merged in this one
    if not main:
        return 0
    report = write_report(out, skipped_tasks=skipped)
    print(f"[all] done in {time.monotonic() - start:.0f}s; report: {report}", file=sys.stderr)
    print(report)
    return 0
