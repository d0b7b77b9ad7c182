"""The cost plan: what a list of steps costs on a placed model, as one JSON-able object and as a table.

    steps = price([(label, settings, command), ...], shape, tokenizer)   # one StepPlan per step
    plan = make_plan(steps, shape, info, plan_settings)                    # {"model", "steps", "total", ...}
    print(format_plan(plan))

A step is priced by its own work units (study/planners.py) with the rules of opt66b/cost.py (FLOPs) and
study/plan.py (memory on the placement); `run.py CMD --plan`
(study/plan_cli.py) and `run.py all` (study/study.py, which also fits the device map's reserve to it) both
come here. "Plan" in this code means this cost plan and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from opt66b.runs.settings import Options, option

from .machine import HOST_TO_DEVICE_GBS, calibrate_tflops
from opt66b.cost import FLOP_MODEL
from opt66b.hardware import SUSTAINED_FRACTION, check_plan_hardware, detect_gpu, gpu_kind

from .plan import Shape, StepPlan, duration_text, flops_text
from .planners import price_step, reset

GIB = 1 << 30


@dataclass(frozen=True, kw_only=True)
class PlanSettings(Options):
    """The options of `--plan` (opt66b.runs.options.add_plan_args): throughput, processes, precision, output."""

    throughput: float | None = option(None)
    gpu: str | None = option(None)
    processes: int | None = option(None)
    target_halfwidth: float | None = option(None)
    json: Path | None = option(None)

    def check(self) -> None:
        if self.gpu is not None:
            gpu_kind(self.gpu)  # a ValueError listing the kinds
        if self.throughput is not None and self.throughput <= 0:
            raise ValueError(f"--throughput must be > 0 TFLOP/s, got {self.throughput}")
        if self.processes is not None and self.processes < 1:
            raise ValueError(f"--processes must be >= 1, got {self.processes}")
        if self.target_halfwidth is not None and self.target_halfwidth <= 0:
            raise ValueError(f"--target-halfwidth must be > 0 points, got {self.target_halfwidth}")


def price(steps: Sequence[tuple[str, Any, str]], shape: Shape, tokenizer: Any) -> list[StepPlan]:
    """One StepPlan per (label, settings, command): its work units' passes, FLOPs and memory (study/planners.py;
    a step without units only reads files)."""
    reset()
    out = []
    for label, settings, command in steps:
        step = StepPlan(label, shape, command=command)
        price_step(step, settings, tokenizer)
        out.append(step)
    return out


def check_hardware(ps: PlanSettings, load: Any, compute: str) -> Any:
    """The GPU the plan is for (--gpu, else the card at `compute` on this machine, else None), after refusing a
    --max-memory entry above its usable memory or a --throughput above its peak (opt66b/hardware.py)."""
    ps.check()
    kind = gpu_kind(ps.gpu) if ps.gpu else detect_gpu(compute)
    if kind is not None:
        check_plan_hardware(kind, load.max_memory, ps.throughput)
    return kind


def throughput(ps: PlanSettings, kind: Any, info: dict[str, Any], shape: Shape) -> tuple[float | None, str]:
    """(TFLOP/s, where it comes from): --throughput; with --gpu KIND and no card, the stated fraction of the
    kind's dense peak; else a timed matmul on the compute device (none when it is not on this machine)."""
    if ps.throughput is not None:
        return ps.throughput, "given (--throughput)"
    if ps.gpu:
        return kind.default_tflops, (f"{SUSTAINED_FRACTION:.0%} of the {kind.name}'s dense fp16/bf16 peak of "
                                     f"{kind.peak_tflops:g} TFLOP/s (opt66b/hardware.py; give --throughput once a run "
                                     "has measured its rate)")
    return calibrate_tflops(info["compute"], info["dtype"], shape.cfg)


def make_plan(steps: list[StepPlan], shape: Shape, info: dict[str, Any], ps: PlanSettings,
              load: Any = None) -> dict[str, Any]:
    """The plan as JSON: the model, every step's row, the totals, the throughput and the schedule on
    ps.processes processes (default: WORLD_SIZE under torchrun, else 1)."""
    from opt66b.runs.distributed import rank_world

    kind = check_hardware(ps, load, info["compute"]) if load is not None else None
    tflops, source = throughput(ps, kind, info, shape)
    reserve = None if load is None else load.reserve
    rows = [{"step": s.label, "command": s.command, "forward_passes": s.forward, "backward_passes": s.backward,
             "tokens": s.tokens, "padded_tokens": s.padded_tokens, "logit_positions": s.logit_positions,
             "flops": s.flops, "seconds": s.flops / (tflops * 1e12) if tflops else None,
             "peak_bytes": s.peak(), "host_bytes": s.host_bytes, "streamed_bytes": s.streamed_bytes,
             "doc_flops": s.doc_flops, "notes": s.notes} for s in steps]
    peak: dict[str, int] = {}
    for r in rows:
        for dev, b in r["peak_bytes"].items():
            peak[dev] = max(peak.get(dev, 0), b)
    total = {k: sum(r[k] for r in rows) for k in ("forward_passes", "backward_passes", "tokens", "padded_tokens",
                                                  "logit_positions", "flops")}
    total.update(seconds=total["flops"] / (tflops * 1e12) if tflops else None, peak_bytes=peak,
                 host_bytes=max(r["host_bytes"] for r in rows), streamed_bytes=sum(r["streamed_bytes"] for r in rows))
    processes = ps.processes if ps.processes is not None else rank_world()[1]
    plan = {"model": info, "weights_bytes": shape.weights_on, "reserve": None if reserve is None else str(reserve),
            "throughput_tflops": tflops, "throughput_source": source, "flop_model": FLOP_MODEL, "steps": rows,
            "total": total, "processes": processes,
            "gpu": None if kind is None else {"kind": kind.name, "label": kind.label, "usable_gib": kind.usable_bytes / GIB,
                                               "peak_tflops": kind.peak_tflops}}
    schedule(plan, steps, shape, processes)
    return plan


def schedule(plan: dict[str, Any], steps: list[StepPlan], shape: Shape, processes: int) -> None:
    """The plan on `processes` torchrun processes, as the run assigns the work: each step's units by
    opt66b.runs.distributed.assign (the function the run calls, on the same costs), the steps one after
    another (a barrier between them). Adds per step `per_process_flops`, and total.makespan_seconds (the sum of
    each step's slowest process), total.imbalance (makespan / a perfect split) and per_process: {flops,
    seconds, host_bytes} (host memory beyond the weights and what the placement keeps on the host, per process;
    `node_host_bytes`: all of a node's processes together, against --max-memory's cpu entry, the node's)."""
    from opt66b.runs.distributed import assign

    tflops = plan["throughput_tflops"]
    loads, makespan, hosts = [0.0] * processes, 0.0, [0] * processes
    for row, step in zip(plan["steps"], steps):
        per = [0.0] * processes
        for flops, owner in zip(step.unit_flops, assign(step.unit_flops, processes)):
            per[owner] += flops
            hosts[owner] = max(hosts[owner], step.host_bytes)
        row["per_process_flops"] = per
        loads = [a + b for a, b in zip(loads, per)]
        makespan += max(per)
    seconds = (lambda f: f / (tflops * 1e12) if tflops else None)  # noqa: E731
    on_host = shape.weights_on.get("cpu", 0)
    plan["per_process"] = [{"flops": f, "seconds": seconds(f), "host_bytes": h + on_host} for f, h in zip(loads, hosts)]
    total = plan["total"]
    total.update(makespan_seconds=seconds(makespan), imbalance=makespan * processes / max(total["flops"], 1),
                 node_host_bytes=sum(p["host_bytes"] for p in plan["per_process"]))


def add_precision(plan: dict[str, Any], ps: PlanSettings, data: Path, tasks: Sequence[str], shots: Sequence[int],
                  limit: int | None, out: Path | None) -> None:
    """The precision of the accuracies and drops the planned evaluations give (study/precision.py)."""
    from tasks.registry import TASKS

    note_data(plan, data)

    from .precision import precision_plan

    out = Path(out) if out is not None and Path(out).is_dir() else None
    names = [t for t in tasks if t in TASKS]
    doc_flops: dict[str, float] = {}
    for row in plan["steps"]:
        for task, flops in row.get("doc_flops", {}).items():
            doc_flops[task] = doc_flops.get(task, 0.0) + flops
    plan["precision"] = precision_plan(Path(data), names, list(shots), limit, doc_flops, out=out,
                                       target=ps.target_halfwidth)


def note_data(plan: dict[str, Any], data: Path) -> None:
    """The data directory a plan prices, and whether it is the bundled samples (its first line says so)."""
    from tasks.cli_options import is_samples

    plan["data"] = str(data)
    plan["bundled_samples"] = is_samples(data)


SAMPLES_LINE = ("ON THE BUNDLED SAMPLES (tasks/samples: 16 to 40 documents per task, not the study's data): give --data DIR "
                "with the full data to price the real study (`run.py data fetch --out DIR` builds it; docs/data.md)")


def format_plan(plan: dict[str, Any]) -> str:
    m = plan["model"]
    lines = [SAMPLES_LINE] if plan.get("bundled_samples") else []
    lines += [f"plan for {m['model']}: {m['layers']} layers x {m['heads']} heads, {m['params'] / 1e9:.3g}B params, "
             f"{m['dtype']}, compute on {m['compute']} (nothing was run, no weights were read)",
             f"FLOPs: {plan['flop_model']}",
             f"throughput: {plan['throughput_tflops'] or 0:.4g} TFLOP/s, {plan['throughput_source']}", ""]
    head = f"{'step':<38}{'fwd':>8}{'bwd':>7}{'tokens':>9}{'padded':>9}{'FLOPs':>9}{'time':>9}  peak memory per device"
    lines += [head, "-" * len(head)]
    budgets = m["budget_gib"]

    def mem(peak: dict[str, int]) -> str:
        return ", ".join(f"{d} {b / GIB:.1f} GiB" + (f" of {budgets[d]:g}" + (" OVER BUDGET" if b > budgets[d] * GIB else "")
                                                      if d in budgets else "") for d, b in peak.items())
    for r in [*plan["steps"], {"step": "total", **plan["total"], "notes": []}]:
        if r["step"] == "total":
            lines.append("-" * len(head))
        lines.append(f"{r['step'][:37]:<38}{r['forward_passes']:>8}{r['backward_passes']:>7}{flops_text(r['tokens']):>9}"
                     f"{flops_text(r['padded_tokens']):>9}{flops_text(r['flops']):>9}{duration_text(r['seconds']):>9}  {mem(r['peak_bytes'])}")
        lines += [f"{'':<4}note: {n}" for n in r["notes"]]
    lines += _schedule_lines(plan)
    if plan["total"]["host_bytes"]:
        lines.append(f"host memory beyond the weights (largest step): {plan['total']['host_bytes'] / GIB:.1f} GiB")
    if plan["total"]["streamed_bytes"]:
        streamed = plan["total"]["streamed_bytes"]
        lines.append(f"weights streamed to {m['compute']} (--offload): {streamed / GIB:,.{0 if streamed >= 100 * GIB else 3}f} GiB in all, about "
                     f"{duration_text(streamed / (HOST_TO_DEVICE_GBS * 1e9))} at {HOST_TO_DEVICE_GBS} GB/s (PCIe 4.0 x16) "
                     "on top of the time above where compute does not hide it")
    lines.append("peak = weights placed on the device + the largest pass's activations (estimate, see study/plan.py); "
                 "time = FLOPs / throughput, transfers of streamed layers not included")
    if plan.get("precision"):
        from .precision import format_precision

        lines.append(format_precision(plan["precision"], plan))
    return "\n".join(lines)


def _schedule_lines(plan: dict[str, Any]) -> list[str]:
    """The schedule on several processes (schedule), when there are several."""
    n, total = plan.get("processes", 1), plan["total"]
    if n <= 1:
        return []
    per = plan["per_process"]
    budget = plan["model"].get("budget_gib", {}).get("cpu")
    node = f"; host memory of the node's {n} processes {total['node_host_bytes'] / GIB:.1f} GiB" + (
        f" of {budget * n:g} (--max-memory cpu=, the node's; each process places within {budget:g})" if budget else "")
    return [f"on {n} processes (torchrun; each step's work units assigned longest first, the steps one after another): "
            f"makespan {duration_text(total['makespan_seconds'])}, {total['imbalance']:.2f}x a perfect split{node}",
            "  per process: " + ", ".join(f"#{r} {flops_text(p['flops'])}FLOP {duration_text(p['seconds'])}" for r, p in enumerate(per))]
