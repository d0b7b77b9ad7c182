"""`run.py all`: the whole study, in order, on a model loaded once.

The study is resolved once (study/study.py: every step's typed settings, the fitted batch, backward and
reserve, the plan); each step's settings go, with the one loaded model, to its experiment
(`settings.execute`): no argument list is rendered or parsed to run a step. OUT/commands.txt holds each
step as the `run.py` line its settings render, which parses back into equal settings, so an auditor can
replay any step alone and compute exactly what the step computed. Every step is resumable on its own
(units whose fingerprint matches are skipped), so rerunning `all` after a kill continues where it stopped.
The steps share one evaluation cache (tasks.evaluation.EvaluationCache), so a cell two sweeps contain is
evaluated once; a replayed commands.txt line recomputes it and gets the same numbers. OUT/work.json
records, per model step, the forward / backward passes and tokens this invocation computed (resumed
units count nothing).

    data check -> evaluation -> head importance (+ aggregate of the seen tasks) -> FFN oracle
    -> head / FFN / grid pruning -> Spearman matrices -> cross-task transfer (partners from them)
    -> prefix matching -> copying -> capacity retained
    -> synthetic copy task -> report
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .study import Study, targets_differ


class StudyClock:
    """The whole study's progress: each step's planned FLOPs (the study's plan, the one `all --plan` prints)
    against the time the computed steps took so far, so the ETA follows this machine's real rate; work.json
    gets planned and measured seconds per step. A study without a plan (one could not be made) runs without
    an overall ETA."""

    def __init__(self, plan: dict[str, Any] | None):
        self.flops: dict[str, float] = {r["step"]: float(r["flops"]) for r in (plan or {}).get("steps", [])}
        self.tflops = (plan or {}).get("throughput_tflops")
        self.total = sum(self.flops.values())
        self.finished = 0.0  # planned FLOPs of the steps done
        self.rate_flops = self.rate_seconds = 0.0  # of the steps that computed (resumed ones say nothing of speed)

    def done(self, label: str, seconds: float, computed: bool) -> None:
        self.finished += self.flops.get(label, 0.0)
        if computed and self.flops.get(label):
            self.rate_flops += self.flops[label]
            self.rate_seconds += seconds

    def line(self, steps_left: int) -> str:
        """The share of the planned model work done and the ETA; once the model work is all done (the steps that
        only read files are left, priced at no FLOPs) it says so instead of a premature 100%."""
        if not self.total:
            return ""
        share = self.finished / self.total
        if share >= 1 - 1e-9:
            return f"; the model work is done, {steps_left} step(s) reading files left"
        if not self.rate_flops:
            return f"; {int(share * 100)}% of the planned work done"
        left = (self.total - self.finished) * self.rate_seconds / self.rate_flops
        return f"; {int(share * 100)}% of the planned work done, ETA for the whole study {left:.0f}s"

    def record(self, label: str, seconds: float) -> dict[str, Any]:
        planned = self.flops.get(label)
        return {"planned_flops": planned, "measured_seconds": round(seconds, 3),
                "planned_seconds": None if planned is None or not self.tflops else planned / (self.tflops * 1e12)}


def run_all(study: Study) -> int:
    """Run every step of `study` on one loaded model, then write the report; returns the exit status."""
    from opt66b.host_memory import trim
    from opt66b.runs.distributed import barrier, is_main, rank_world
    from opt66b.runs.results import write_json
    from tasks.evaluation import EvaluationCache

    from .report import write_report

    layout, s = study.layout, study.settings
    for line in study.skipped:
        print(f"[all] skipping {line}", file=sys.stderr)
    start = time.monotonic()
    eta = StudyClock(study.plan)
    # The one model load of the whole study, before anything is written: a model it refuses (NaN weights, a bad
    # checkpoint) leaves no run directory behind.
    loaded = study.load.load(threads=s.threads)
    main = is_main()  # under torchrun: every process runs the model steps on its share of the units
    if main:
        _write_run_files(study, loaded[2])
    from opt66b.runs.store import model_fingerprint

    # one evaluation cache for every step and every process, on disk: an evaluation any of them ran is read, not run again
    cache = EvaluationCache(loaded[0], layout.evaluations, model_fingerprint(loaded[2]))
    work: dict[str, dict[str, Any]] = {}  # OUT/work.json: per step, every process's work together
    mine: dict[str, dict[str, Any]] = {}  # this process's (OUT/work/rank-R.json)
    rank, world = rank_world()
    for i, (label, settings) in enumerate(study.steps, 1):
        if main:
            print(f"[all] step {i}/{len(study.steps)}: {label} ({time.monotonic() - start:.0f}s elapsed"
                  f"{eta.line(len(study.steps) - i + 1)})",
                  file=sys.stderr, flush=True)
        step_start = time.monotonic()
        if not settings.USES_MODEL and not main:  # steps that only read files run once, on rank 0
            barrier()
            continue
        try:  # evaluations one step ran are not run again by a later one (the shared cache)
            step_work = settings.execute(loaded, cache) if settings.USES_MODEL else settings.execute()
        except (FileNotFoundError, ValueError, KeyError):
            print(f"[all] step '{label}' failed; fix the cause and rerun: finished work is kept", file=sys.stderr)
            raise
        trim()  # the step's freed host memory back to the system before the next (opt66b/host_memory.py)
        seconds = time.monotonic() - step_start
        eta.done(label, seconds, computed=bool((step_work or {}).get("forward_passes")))
        if step_work is not None:
            mine[label] = {**step_work, "measured_seconds": round(seconds, 3)}
            write_json(layout.work_of(rank), mine)
        barrier()  # the next step reads what rank 0 merged in this one; every process's work is on disk
        if step_work is not None and main:
            work[label] = {**_all_processes(layout, label, world, study.plan, i - 1), **eta.record(label, seconds)}
            write_json(layout.work, work)
    if not main:
        return 0
    report = write_report(layout.root, skipped_tasks=list(study.skipped))
    print(f"[all] done in {time.monotonic() - start:.0f}s: every step, 100% of the planned work; report: {report}",
          file=sys.stderr)
    print(report)
    return 0


def _write_run_files(study: Study, info: dict[str, Any]) -> None:
    """The run's directory and its top files: the tasks skipped, what the run is (the model `info` the loader gave,
    the data, the seeds by step, the protocol, the code, the start and the machine: the report's header), and every
    step's command line."""
    import platform

    import torch

    from opt66b.fileio import atomic_write_text
    from opt66b.runs.distributed import rank_world
    from opt66b.runs.results import write_json
    from opt66b.runs.store import code_identity

    layout, s = study.layout, study.settings
    layout.root.mkdir(parents=True, exist_ok=True)
    write_json(layout.skipped_tasks, list(study.skipped))
    # each step's seed (the induction steps: their first seed)
    seeds = [(label, getattr(st, "first_seed", getattr(st, "seed", None))) for label, st in study.steps]
    device = info.get("device", "?")
    if str(device).startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(0)})"
    write_json(layout.study, {
        "protocol": s.protocol.name, "other_protocol": s.protocol.other.name,
        "targets_differ": targets_differ(list(study.tasks)), "tasks": list(study.tasks), "shots": list(s.shots),
        "model": {k: info.get(k) for k in ("model", "layers", "heads", "dtype", "device", "identity")},
        "data": str(s.data),
        "seeds": {label: seed for label, seed in seeds if isinstance(seed, int)},
        "code": code_identity(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "device": device, "threads": torch.get_num_threads(), "processes": rank_world()[1]}})
    atomic_write_text(layout.commands, "".join(line + "\n" for line in study.commands()))


def _all_processes(layout: Any, label: str, world: int, plan: dict[str, Any] | None, index: int) -> dict[str, Any]:
    """One step's entry of work.json: the passes, tokens and FLOPs of every process together, and per process
    the FLOPs it executed beside the FLOPs the plan assigned it (the same schedule, opt66b.runs.distributed.assign;
    equal but for evaluations another step or process had already left in the cache)."""
    from opt66b.fileio import read_json

    ranks = [read_json(layout.work_of(r)).get(label, {}) for r in range(world)]
    row = (plan or {}).get("steps", [{}] * (index + 1))[index]
    planned = row.get("per_process_flops") if (plan or {}).get("processes") == world else None
    out = {k: sum(r.get(k, 0) for r in ranks) for k in ("forward_passes", "backward_passes", "tokens", "flops")}
    out["processes"] = [{"rank": r, "executed_flops": w.get("flops", 0.0), "measured_seconds": w.get("measured_seconds"),
                         "planned_flops": None if planned is None else planned[r]} for r, w in enumerate(ranks)]
    return out
