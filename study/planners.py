"""Pricing a step: its own work units (each step's `units`, the ones its run splits across processes and
executes), folded into a StepPlan on the placement being priced. Nothing here repeats a step's loop.

The evaluations' passes come from the tokenisation cache (tasks.batching.cached: the data tokenised once,
kept in OPT66B_CACHE_DIR/plans/ under everything that fixes the tokens, re-batched for any --batch-tokens),
so a second plan of the same data, or the plan `run.py all` makes before it runs, takes seconds. Steps share
evaluations the way the run does (the evaluation cache): an evaluation an earlier step planned is not
planned again by a later one (`planned`).
"""

from __future__ import annotations

from typing import Any

from opt66b.cost import ModelShape

from .plan import Shape, StepPlan

_PLANNED: set[tuple] = set()  # evaluations (identity, head mask id, FFN mask id) planned by earlier steps


def reset() -> None:
    """Start a plan: no evaluation planned yet."""
    _PLANNED.clear()


def model_shape_of(shape: Shape) -> ModelShape:
    """What a step's units depend on, from the placement priced: layers stream to the compute device or not."""
    return ModelShape(shape.cfg, shape.dtype_bytes, shape.compute if shape.streamed else None, shape.processes)


def price_step(step: StepPlan, settings: Any, tokenizer: Any) -> None:
    """Fold every work unit of `settings` (a step of the study) into `step`; a step without units (it only
    reads files) has no model passes."""
    if not hasattr(settings, "units"):
        step.notes.append("reads earlier results only: no model passes")
        return
    if hasattr(settings, "check_tasks"):
        settings.check_tasks(getattr(settings, "limit", None))
    shape = model_shape_of(step.shape)
    for unit in settings.units(shape, tokenizer, _PLANNED.__contains__):
        step.add_unit(unit)
        _PLANNED.update(unit.provides)
    step.notes += notes(settings, shape, step)


def notes(settings: Any, shape: ModelShape, step: StepPlan) -> list[str]:
    """What the table says under a step: how its memory is bounded."""
    name, out = type(settings).__name__, []
    gib = lambda b: f"{b / (1 << 30):.3g} GiB"  # noqa: E731
    if shape.streams_to and hasattr(settings, "chunk_budget"):
        out.append(f"layers stream: the work runs in layer-order chunks whose states stay within "
                   f"{gib(settings.chunk_budget(shape))} on {shape.streams_to}; the streamed weights cross "
                   "once per chunk (twice for head importance: a forward and a reverse sweep)")
    elif name == "FFNOracleSettings" and not settings.naive:
        out.append(f"the knock-outs run in chunks whose recorded layer inputs stay within "
                   f"{gib(settings.chunk_budget(shape, on_host=True))} of host memory (--oracle-memory)")
    elif name == "HeadImportanceSettings":
        out.append("layer-wise backward (--backward layerwise): every layer's input kept, one layer's graph"
                   if settings.backward == "layerwise" else
                   "the backward keeps every layer's activations; with --offload (streamed layers) it is layer-wise")
    if name == "TransferSettings":
        out.append("transfer: at most 4 partner rankings per chosen task; correlations.json says how many")
    if name == "CopyingSettings" and "paper" in settings.check():
        out.append("the paper's copying variant runs layer pieces, not passes: counted in FLOPs only")
    if step.unit_flops:
        out.append(f"{len(step.unit_flops)} work units, the largest {max(step.unit_flops) / max(step.flops, 1):.1%} "
                   "of the step")
    return out
