"""`run.py CMD --plan`: resolve the model's shape and placement from the options (no weights), plan the
step (or every step of `run.py all`) with study/plan.py, estimate time, print a table or --plan-json PATH.

    plan = make_plan(args)        # {"model": ..., "steps": [...], "total": {...}}, JSON-able
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .plan import FLOP_MODEL, Shape, StepPlan
from .planners import PLANNERS, reset

GIB = 1 << 30
MIB = 1 << 20
HOST_TO_DEVICE_GBS = 25  # a PCIe 4.0 x16 link's practical rate, for the streamed layers' transfer time


def model_shape(args: argparse.Namespace) -> tuple[Shape, Any, dict[str, Any]]:
    """(Shape, tokenizer, description) as load_from_args would place the model, from config.json or
    an official size name only: the same device map, streaming and dtype rules, no tensors."""
    from opt66b.config import config_for_size, config_from_hf
    from opt66b.placement import dtype_bytes, head_params, layer_bytes, layer_params, parse_max_memory
    from opt66b.runs.loading import TINY_MODEL_DIR, placement, resolve_device, resolve_dtype
    from opt66b.tokenizer import load_tokenizer

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    size = args.random_weights
    model_dir = None if size else (Path(args.model) if args.model else TINY_MODEL_DIR)
    cfg = config_for_size(size) if size else config_from_hf(model_dir)
    per = dtype_bytes(dtype)
    per_layer, head_bytes = layer_bytes(cfg, dtype), head_params(cfg) * per
    dm, streamed = None, {}
    if args.offload == "mmap":  # every layer streamed from the files through two buffers
        head = str(device)
        weights, layers_on = {head: head_bytes + 2 * max(per_layer)}, {head: cfg.num_layers}
        streamed = dict(enumerate(per_layer))
    else:
        reserve = parse_max_memory(getattr(args, "reserve", None), "--reserve") or None
        dm = placement(cfg, dtype, device, args.device_map, parse_max_memory(args.max_memory), reserve)  # as load
        if dm is None:
            head = str(device)
            weights, layers_on = {head: head_bytes + sum(per_layer)}, {head: cfg.num_layers}
        else:
            head, weights, layers_on = dm.head, dict(dm.bytes_per_device), {}
            streamed = {i: per_layer[i] for i in dm.streamed_layers()} if args.offload != "none" else {}
            for i, dev in enumerate(dm.layers):
                runs_on = dm.compute if i in streamed else dev
                layers_on[runs_on] = layers_on.get(runs_on, 0) + 1
            if streamed:  # two layer buffers on the compute device (double buffering)
                weights[dm.compute] = weights.get(dm.compute, 0) + 2 * max(per_layer)
    tokenizer = load_tokenizer(Path(args.tokenizer) if args.tokenizer else (model_dir or TINY_MODEL_DIR))
    params = head_params(cfg) + sum(layer_params(cfg, i) for i in range(cfg.num_layers))
    info = {"model": f"random:{size}" if size else str(model_dir), "layers": cfg.num_layers, "heads": cfg.num_heads,
            "hidden": cfg.hidden_size, "ffn": cfg.ffn_dim, "params": params, "dtype": str(dtype).removeprefix("torch."),
            "device": str(device), "compute": dm.compute if dm else str(device),
            "device_map": dm.to_json() if dm else None, "budget_gib": dm.to_json()["budget_gib"] if dm else {}}
    return Shape(cfg, per, layers_on, weights, head, streamed, dm.compute if dm else head), tokenizer, info


def calibrate_tflops(device: str, dtype_name: str, cfg: Any, seconds: float = 0.3) -> tuple[float | None, str]:
    """Sustained TFLOP/s of a layer-shaped matmul (tokens x D) @ (D x F) on `device`, timed for about
    `seconds` after a warm-up; shapes are capped so the CPU check stays short. (None, why) when the
    device is not on this machine."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return None, f"{device} is not on this machine: no time estimate (give --throughput TFLOPS)"
    dtype = getattr(torch, dtype_name)
    on_gpu = dev.type == "cuda"
    d = min(cfg.hidden_size, 8192 if on_gpu else 1024)
    f = min(cfg.ffn_dim, 4 * d)
    m = 4096 if on_gpu else 512
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(m, d, device=dev, generator=gen).to(dtype)  # (tokens, D)
    w = torch.randn(d, f, device=dev, generator=gen).to(dtype)  # (D, F)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    a @ w  # warm-up (kernel selection, caches)
    sync()
    reps, start = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - start < seconds:
        a @ w
        reps += 1
        if on_gpu and reps % 8:
            continue
        sync()
    sync()
    elapsed = time.perf_counter() - start
    return 2 * m * d * f * reps / elapsed / 1e12, f"measured: {reps} matmuls ({m} x {d}) @ ({d} x {f}) {dtype_name} on {device}"


def plan_steps_of(args: argparse.Namespace, shape: Shape, tokenizer: Any, keep: bool = False) -> list[StepPlan]:
    """The step itself, or for `all` every step of its commands.txt, each planned by its own planner.
    keep: reuse the previous plan's tokenised evaluations (same data and batch budget)."""
    reset(keep)
    if args.plan_step != "all":
        step = StepPlan(args.plan_step, shape)
        PLANNERS[args.plan_step](step, args, tokenizer)
        return [step]
    from opt66b.runs.loading import LOAD_OPTIONS

    from .pipeline import DEFAULT_TASKS, available_tasks, command_line, plan_steps
    from .run_cli import all_defaults

    all_defaults(args)
    tasks, skipped = available_tasks(Path(args.data), args.tasks or DEFAULT_TASKS, args.shots, explicit=bool(args.tasks))
    args.planned_tasks = tasks
    if not tasks:
        raise ValueError(f"{args.data}: none of the requested tasks has its data; see `python run.py data check`")
    args.out = args.out or Path("OUT")
    model_options = {name: getattr(args, name, None) for name in LOAD_OPTIONS}
    steps = []
    for label, settings in plan_steps(args, tasks):  # the settings `all` runs, planned as they are
        step = StepPlan(label, shape, command=command_line(args, settings))
        if settings.plan_step():
            PLANNERS[settings.plan_step()](step, settings.namespace(**model_options), tokenizer)
        else:
            step.notes.append("reads earlier results only: no model passes")
        steps.append(step)
    if skipped:
        steps[0].notes += [f"skipped: {line}" for line in skipped]
    return steps


def fit_reserve(args: argparse.Namespace, steps: list[StepPlan]) -> tuple[Shape, dict[str, Any]] | None:
    """`all` placing the model itself (--device-map auto, budgets on accelerators, no --reserve): keep
    free on each accelerator what the plan's largest pass needs there, by the plan's own rule
    (StepPlan.activations), instead of the map's default reserve. A new map moves layers, which moves
    the activations (a KV cache is per layer), so map and reserve are re-made until map and activations
    agree (a map that streams layers may need less than the one before it: the reserve follows; if two
    maps alternate, each device keeps the larger): then no step of the plan exceeds a budget under the
    map the run will build. Sets args.reserve (so commands.txt and every step carry it); returns the new
    (shape, description)."""
    from opt66b.placement import parse_max_memory

    if args.plan_step != "all" or args.device_map != "auto" or getattr(args, "reserve", None) \
            or args.offload == "mmap":
        return None
    accelerators = [d for d in parse_max_memory(args.max_memory) if not d.startswith("cpu")]
    if not accelerators:
        return None
    reserve: dict[str, int] = {}
    seen: list[dict[str, int]] = []
    fitted = None
    for _ in range(8 * len(accelerators) + 8):
        need = {d: -(-max(s.activations.get(d, 0) for s in steps) // MIB) * MIB for d in accelerators}
        if need == reserve:  # the map keeps free exactly what its own activations take
            break
        if need in seen:  # two maps alternate: keep the larger reserve of each device, which ends it
            need = {d: max(need[d], reserve[d]) for d in accelerators}
        seen.append(reserve := need)
        args.reserve = ",".join(f"{d}={b // MIB}MiB" for d, b in reserve.items())
        try:
            fitted = model_shape(args)
        except ValueError as err:
            raise ValueError(f"the plan's activations ({args.reserve}) and the weights do not fit the budgets "
                             f"together: {err}") from None
        for s in steps:
            s.shape = fitted[0]
    if fitted is not None:
        from .pipeline import command_line, plan_steps

        for s, (_, settings) in zip(steps, plan_steps(args, args.planned_tasks)):
            s.command = command_line(args, settings)
    return (fitted[0], fitted[2]) if fitted else None


def make_plan(args: argparse.Namespace, keep: bool = False) -> dict[str, Any]:
    shape, tokenizer, info = model_shape(args)
    steps = plan_steps_of(args, shape, tokenizer, keep)
    refit = fit_reserve(args, steps)
    if refit is not None:
        shape, info = refit
        print(f"[all] --reserve {args.reserve}: the plan's largest activations on each GPU, kept free by the "
              "device map (give --reserve to choose)", file=sys.stderr)
    if args.throughput is not None:
        if args.throughput <= 0:
            raise ValueError(f"--throughput must be > 0 TFLOP/s, got {args.throughput}")
        tflops, source = args.throughput, "given (--throughput)"
    else:
        tflops, source = calibrate_tflops(info["compute"], info["dtype"], shape.cfg)
    rows = []
    for s in steps:
        rows.append({"step": s.label, "command": s.command, "forward_passes": s.forward, "backward_passes": s.backward,
                     "tokens": s.tokens, "padded_tokens": s.padded_tokens, "logit_positions": s.logit_positions,
                     "flops": s.flops, "seconds": s.flops / (tflops * 1e12) if tflops else None,
                     "peak_bytes": s.peak(), "host_bytes": s.host_bytes, "streamed_bytes": s.streamed_bytes,
                     "notes": s.notes})
    peak: dict[str, int] = {}
    for r in rows:
        for dev, b in r["peak_bytes"].items():
            peak[dev] = max(peak.get(dev, 0), b)
    total = {k: sum(r[k] for r in rows) for k in ("forward_passes", "backward_passes", "tokens", "padded_tokens",
                                                  "logit_positions", "flops")}
    total.update(seconds=total["flops"] / (tflops * 1e12) if tflops else None, peak_bytes=peak,
                 host_bytes=max(r["host_bytes"] for r in rows), streamed_bytes=sum(r["streamed_bytes"] for r in rows))
    processes = getattr(args, "processes", None)
    if processes is None:
        from opt66b.runs.distributed import rank_world

        processes = rank_world()[1]
    if processes < 1:
        raise ValueError(f"--processes must be >= 1, got {processes}")
    # Under torchrun every model step splits its units over the processes (each with its own copy of the
    # placement), so its time divides by their number, as far as the units split evenly; steps that only
    # read files run once.
    total["seconds_on_processes"] = None if total["seconds"] is None else sum(
        r["seconds"] / (processes if r["forward_passes"] else 1) for r in rows)
    plan = {"model": info, "weights_bytes": shape.weights_on, "reserve": getattr(args, "reserve", None),
            "throughput_tflops": tflops,
            "throughput_source": source, "flop_model": FLOP_MODEL, "steps": rows, "total": total,
            "processes": processes}
    if (getattr(args, "planned_tasks", None) or getattr(args, "tasks", None)) and getattr(args, "data", None) \
            and args.plan_step in ("all", "eval", "prune"):
        from tasks.registry import TASKS

        from .precision import precision_plan

        target = getattr(args, "target_halfwidth", None)
        if target is not None and target <= 0:
            raise ValueError(f"--target-halfwidth must be > 0 points, got {target}")
        out = Path(args.out) if getattr(args, "out", None) and Path(args.out).is_dir() else None
        names = [t for t in (getattr(args, "planned_tasks", None) or args.tasks) if t in TASKS]
        plan["precision"] = precision_plan(Path(args.data), names, args.shots, getattr(args, "limit", None), tokenizer,
                                           out=out, target=target)
    return plan


def _num(x: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.2g}s"
    h, rest = divmod(round(seconds), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def format_plan(plan: dict[str, Any]) -> str:
    m = plan["model"]
    lines = [f"plan for {m['model']}: {m['layers']} layers x {m['heads']} heads, {m['params'] / 1e9:.3g}B params, "
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
        lines.append(f"{r['step'][:37]:<38}{r['forward_passes']:>8}{r['backward_passes']:>7}{_num(r['tokens']):>9}"
                     f"{_num(r['padded_tokens']):>9}{_num(r['flops']):>9}{_duration(r['seconds']):>9}  {mem(r['peak_bytes'])}")
        lines += [f"{'':<4}note: {n}" for n in r["notes"]]
    if plan.get("processes", 1) > 1:
        lines.append(f"on {plan['processes']} processes (torchrun, units split evenly, each process its own copy of "
                     f"the placement above): about {_duration(plan['total']['seconds_on_processes'])}")
    if plan["total"]["host_bytes"]:
        lines.append(f"host memory beyond the weights (largest step): {plan['total']['host_bytes'] / GIB:.1f} GiB")
    if plan["total"]["streamed_bytes"]:
        streamed = plan["total"]["streamed_bytes"]
        lines.append(f"weights streamed to {m['compute']} (--offload): {streamed / GIB:,.{0 if streamed >= 100 * GIB else 3}f} GiB in all, about "
                     f"{_duration(streamed / (HOST_TO_DEVICE_GBS * 1e9))} at {HOST_TO_DEVICE_GBS} GB/s (PCIe 4.0 x16) "
                     "on top of the time above where compute does not hide it")
    lines.append("peak = weights placed on the device + the largest pass's activations (estimate, see study/plan.py); "
                 "time = FLOPs / throughput, transfers of streamed layers not included")
    if plan.get("precision"):
        from .precision import format_precision

        lines.append(format_precision(plan["precision"]))
    return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> int:
    from opt66b.runs.options import emit_json

    plan = make_plan(args)
    if args.json is None or str(args.json) != "-":
        print(format_plan(plan))
    emit_json(args.json, plan)
    if args.json is not None and str(args.json) != "-":
        print(f"plan written to {args.json}", file=sys.stderr)
    return 0
