"""`run.py all` resolved once: its options, the tasks that have data, the batch and backward fitted to the
memory budgets, every step's typed settings, the device map's reserve fitted to the plan, and the plan.

    study = resolve(args)          # one frozen Study; the plan (`all --plan`) and the run consume it
    study.steps                    # ((label, settings), ...) in order; settings.execute(loaded) runs one
    study.plan                     # the cost plan of exactly these steps (study/costs.py)

Nothing here runs a model: `resolve` reads the data files and the config, prices the steps, and says on stderr
what it chose (the scoring batch, the layer-wise backward, the reserve). The study then runs in
study/pipeline.py; OUT/commands.txt holds each step's command line (`command_line`), which parses back
into the same settings.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from opt66b.runs.loading import LoadSettings
from opt66b.runs.layout import RunLayout
from opt66b.runs.settings import Options, option
from tasks.cli_options import DEFAULT_SHOTS, SAMPLES_DIR, is_samples
from tasks.protocol import CORRECTED, Protocol
from tasks.registry import ALL_TASKS, PAPER_SEEN_TASKS, PAPER_UNSEEN_TASKS, seen_in

from .costs import PlanSettings, add_precision, check_hardware, make_plan, price

PAPER_TASKS = [*PAPER_SEEN_TASKS, *PAPER_UNSEEN_TASKS]
# The default run adds the synthetic copy task (not the paper's; never in its aggregate or task means).
DEFAULT_TASKS = PAPER_TASKS + ["synthetic_copy"]
# The tiny defaults keep `all` under 5 minutes on 2 CPU cores (measured: 2 min 24 s to 3 min 19 s); ReCoRD's long
# candidate continuations are half of every evaluation's cost there. Otherwise the paper's sizes.
TINY_SIZES = {"limit": 8, "n_docs": 16, "seeds": 8}
PAPER_SIZES = {"limit": None, "n_docs": 2500, "seeds": 100}


@dataclass(frozen=True, kw_only=True)
class StudySettings(Options):
    """`all`'s own options (the model options are a LoadSettings, the plan's a PlanSettings)."""

    data: Path = option(SAMPLES_DIR)
    tasks: tuple[str, ...] | None = option(None)
    shots: tuple[int, ...] = option(tuple(DEFAULT_SHOTS))
    protocol: Protocol = option(CORRECTED, parse=Protocol.named)
    limit: int | None = option(None)
    n_docs: int | None = option(None)
    seeds: int | None = option(None)
    eval_seed: int | None = option(None)
    importance_seed: int | None = option(None)
    sequence_seed: int | None = option(None)
    seed: int | None = option(None)
    batch_tokens: int | None = option(None)
    out: Path | None = option(None)
    recompute: bool = option(False)
    threads: int | None = option(None)

    def check(self) -> None:
        for key in ("limit", "n_docs", "seeds", "batch_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
        for key in ("seed", "eval_seed", "importance_seed", "sequence_seed"):  # checked before any step runs
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"--{key.replace('_', '-')} must be >= 0 (numpy's default_rng seeds the induction "
                                 f"sequences), got {value}")

    def sized(self, load: LoadSettings) -> "StudySettings":
        """The sizes not given: small for the tiny defaults (the embedded OPT on the bundled samples), the paper's
        otherwise."""
        tiny = load.model is None and load.random_weights is None and is_samples(self.data)
        sizes = TINY_SIZES if tiny else PAPER_SIZES
        return replace(self, **{k: v for k, v in sizes.items() if getattr(self, k) is None})

    def seed_for(self, role: str) -> int | None:
        """A role's own seed (eval_seed, importance_seed, sequence_seed), else --seed, else None (the step's)."""
        own = getattr(self, role)
        return own if own is not None else self.seed


@dataclass(frozen=True)
class Study:
    """Everything `all` runs, decided once (module docstring)."""

    settings: StudySettings
    load: LoadSettings
    tasks: tuple[str, ...]
    skipped: tuple[str, ...]
    steps: tuple[tuple[str, Any], ...]
    plan: dict[str, Any] | None = None  # None when no plan could be made (the run then has no overall ETA)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(Path(self.settings.out or "OUT"))

    def commands(self) -> list[str]:
        return [command_line(self.load, settings) for _, settings in self.steps]


def command_line(load: LoadSettings, settings: Any) -> str:
    """The OUT/commands.txt line of a step: `python run.py` with its argv (model options included)."""
    return "python run.py " + shlex.join(settings.argv(load.options()))


def available_tasks(data_dir: Path, wanted: list[str], shots: tuple[int, ...],
                    explicit: bool = False) -> tuple[list[str], list[str]]:
    """Split `wanted` into tasks whose eval split (and few-shot pool, when shots > 0) can be read from
    data_dir, and the rest with the reason, so a partial data directory still runs the default study.
    Tasks the user named (`explicit`) must all be readable: one that is not is an error."""
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


def resolve(args: argparse.Namespace, for_plan: bool = False) -> Study:
    """The study `all` runs with these options (module docstring). for_plan: the plan is what the user
    asked for, so a plan that cannot be made is an error; for a run it only costs the overall ETA."""
    from tasks.registry import check_task_args

    load = LoadSettings.from_args(args)
    s = StudySettings.from_args(args)
    s.check()
    s = s.sized(load)
    check_task_args(list(s.tasks or ()), list(s.shots), s.limit)
    tasks, skipped = available_tasks(Path(s.data), list(s.tasks or DEFAULT_TASKS), s.shots, explicit=bool(s.tasks))
    if not tasks:
        raise ValueError(f"{s.data}: none of the requested tasks has its data; see `python run.py data check --data "
                         f"{s.data}`")
    ps = PlanSettings.from_args(args)
    check_hardware(ps, load, load.device or "cuda")  # a budget or a rate the card cannot give, refused at once
    batch_tokens, backward = fit_to_budgets(s, load, ps.processes)
    steps = study_steps(s, load, tasks, batch_tokens, backward)
    study = Study(s, load, tuple(tasks), tuple(skipped), steps)
    try:
        return plan_study(study, ps)
    except Exception as err:  # noqa: BLE001 - for a run, the plan is a convenience (the ETA, a fitted reserve)
        if for_plan:
            raise
        print(f"[all] no overall ETA ({type(err).__name__}: {err})", file=sys.stderr)
        return study


def plan_study(study: Study, ps: PlanSettings) -> Study:
    """The study with its plan, and with the reserve of an auto device map fitted to it (fit_reserve)."""
    from .machine import model_shape

    shape, tokenizer, info = model_shape(study.load, ps.processes)
    rows = [(label, st, command_line(study.load, st)) for label, st in study.steps]
    priced = price(rows, shape, tokenizer)
    load = fit_reserve(study.load, priced, ps.processes)
    if load is not study.load:
        print(f"[all] --reserve {load.reserve}: the plan's largest activations on each GPU, kept free by the "
              "device map (give --reserve to choose)", file=sys.stderr)
        study = replace(study, load=load)
        shape, _, info = model_shape(load, ps.processes)  # fit_reserve priced every step under it already
        for step, (_, st) in zip(priced, study.steps):
            step.command = command_line(load, st)
    plan = make_plan(priced, shape, info, ps, load)
    s = study.settings
    add_precision(plan, ps, s.data, study.tasks, s.shots, s.limit, s.out)
    return replace(study, plan=plan)


def study_steps(s: StudySettings, load: LoadSettings, tasks: list[str], batch_tokens: int | None,
                backward: str | None) -> tuple[tuple[str, Any], ...]:
    """The study as (label, settings) pairs, in order: each step's typed settings built from `all`'s options
    (unset ones keep the step's default). `all` runs them with `settings.execute`."""
    from induction.capacity import CapacitySettings
    from induction.experiments import CopyingSettings, PrefixSettings
    from prune.correlate import CorrelateSettings
    from prune.importance import HeadImportanceSettings
    from prune.oracle import FFNOracleSettings
    from prune.sweeps import PruneSettings
    from prune.transfer import TransferSettings
    from tasks.data_check import DataCheckSettings
    from tasks.evaluate import EvalSettings

    from .copy_task import CopyTaskSettings

    out = RunLayout(Path(s.out or "OUT"))
    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731 - unset: the step's default
    run = {"recompute": s.recompute, "threads": s.threads}
    data = {"data": Path(s.data), "tasks": tuple(tasks), "shots": s.shots, "protocol": s.protocol,
            "max_memory": load.max_memory}
    evaluates = {**run, **data, **given(seed=s.seed_for("eval_seed"), batch_tokens=batch_tokens), "limit": s.limit}
    importance = {**run, **data, **given(seed=s.seed_for("importance_seed"), backward=backward), "n_docs": s.n_docs}
    sweep = {**evaluates, "out": out.prune}
    other, differ = s.protocol.other, targets_differ(tasks)
    steps: list[tuple[str, Any]] = [
        ("data check", DataCheckSettings(data=Path(s.data), tasks=tuple(tasks), json=out.data_check)),
        ("evaluation", EvalSettings(**evaluates, out=out.eval)),
        ("head importance", HeadImportanceSettings(**importance, out=out.importance)),
    ]
    if differ:  # the tasks whose importance examples the protocol changes, under the other one's targets
        steps.append((f"head importance under the {other} protocol's targets ({', '.join(differ)})",
                      HeadImportanceSettings(**{**importance, "tasks": tuple(differ), "protocol": other},
                                             out=out.importance_under(other.name))))
    steps += [
        ("FFN oracle", FFNOracleSettings(**evaluates, out=out.ffn)),
        ("head pruning (own ranking)", PruneSettings(**sweep, sweep="heads", importance=out.importance)),
        ("head pruning (aggregate ranking)", PruneSettings(**sweep, sweep="heads", ranking="aggregate",
                                                           importance=out.importance)),
        ("FFN pruning", PruneSettings(**sweep, sweep="ffn", ffn_importance=out.ffn)),
        ("combined grid", PruneSettings(**sweep, sweep="grid", importance=out.importance, ffn_importance=out.ffn)),
        ("Spearman correlations", CorrelateSettings(importance=out.importance, out=out.correlate,
                                                    compare_importance=out.importance_under(other.name) if differ else None)),
    ]
    if len(seen_in(tasks)) > 1:  # partners need at least two seen tasks with importance
        steps.append(("cross-task transfer (highest / lowest correlated partners)",
                      TransferSettings(**sweep, correlations=out.correlations, importance=out.importance)))
    sequences = given(first_seed=s.seed_for("sequence_seed"))
    steps += [
        ("prefix matching", PrefixSettings(**run, seeds=s.seeds, **sequences, out=out.induction)),
        ("copying", CopyingSettings(**run, seeds=s.seeds, **sequences, out=out.induction)),
        ("capacity retained", CapacitySettings(scores=out.induction, importance=out.importance, out=out.capacity)),
        ("synthetic copy task", CopyTaskSettings(**run, seeds=min(s.seeds, 16), **given(seed=s.seed_for("sequence_seed")),
                                                 out=out.copytask)),
    ]
    return tuple(steps)


def targets_differ(tasks: list[str]) -> list[str]:
    """The tasks whose importance examples differ between the protocols (Task.PAPER_TARGETS_DIFFER)."""
    return [t for t in tasks if ALL_TASKS[t].PAPER_TARGETS_DIFFER]


def fit_to_budgets(s: StudySettings, load: LoadSettings, processes: int | None = None) -> tuple[int | None, str | None]:
    """(batch tokens, backward) that `all` chooses when not told, with --max-memory budgets on accelerators
    (said on stderr): the largest scoring batch whose worst-case activations fit beside the weights the
    placement puts there (study/plan.py's rule, so the plan shows it fitting), and the layer-wise backward
    when a full-length example's ordinary backward would not fit beside the weights, or when layers stream
    (then it is what runs). (s.batch_tokens, None) without budgets on accelerators: each step's default."""
    from opt66b.placement import GIB, head_params

    from .machine import model_shape
    from .plan import fit_batch_tokens, full_backward_fits

    budgets = load.max_memory.accelerators()
    if not budgets:
        return s.batch_tokens, None
    shape, _, info = model_shape(load, processes)
    fitting = shape
    if shape.streamed:
        # Layers stream anyway: every pass copies the streamed layers to the GPU, so the transfers, not the
        # FLOPs, set the time, and they fall with the number of passes. The batch is fitted beside the head
        # group and the two stream buffers alone; the plan's reserve (fit_reserve) then streams as many more
        # layers as its activations need.
        compute = info["compute"]
        lean = {d: b for d, b in shape.weights_on.items() if d != compute}
        lean[compute] = 2 * max(shape.streamed.values()) + (head_params(shape.cfg) * shape.dtype_bytes
                                                            if shape.head == compute else 0)
        fitting = replace(shape, weights_on=lean)
    batch_tokens = s.batch_tokens
    if batch_tokens is None:
        batch_tokens, fits = fit_batch_tokens(fitting, budgets)
        room = ", ".join(f"{d} {(budgets[d] - fitting.weights_on.get(d, 0)) / GIB:.1f} GiB" for d in budgets)
        print(f"[all] --batch-tokens {batch_tokens}: " + ("the largest scoring batch whose activations fit beside the "
              "weights" if fits else "the smallest batch, and even it does not fit beside the weights: give the "
              "device map more room (a lower --max-memory for the GPU streams more layers)")
              + (" and the stream buffers (layers stream: fewer, larger passes copy fewer weights)"
                 if shape.streamed else "") + f" ({room} left; give --batch-tokens to choose)", file=sys.stderr)
    backward = None
    if shape.streamed or not full_backward_fits(shape, budgets, shape.cfg.max_positions):
        backward = "layerwise"
        why = ("layers stream" if shape.streamed else
               f"a {shape.cfg.max_positions}-token example's full backward would not fit beside the weights")
        print(f"[all] head importance takes the layer-wise backward: {why} (one layer's graph at a time instead)",
              file=sys.stderr)
    return batch_tokens, backward


def fit_reserve(load: LoadSettings, steps: list[Any], processes: int | None = None) -> LoadSettings:
    """`all` placing the model itself (--device-map auto, budgets on accelerators, no --reserve): keep free on
    each accelerator what the plan's largest pass needs there, by the plan's own rule (StepPlan.activations),
    instead of the map's default reserve. A new map moves layers, which moves the activations (a KV cache is
    per layer), so map and reserve are re-made until map and activations agree (a map that streams layers may
    need less than the one before it: the reserve follows; if two maps alternate, each device keeps the
    larger): then no step of the plan exceeds a budget under the map the run will build. Returns the load
    with that reserve (so commands.txt and every step carry it), or `load` itself when it does not apply."""
    from opt66b.placement import Budgets

    from .machine import model_shape

    accelerators = list(load.max_memory.accelerators())
    if load.device_map != "auto" or load.reserve or load.offload == "mmap" or not accelerators:
        return load
    mib = 1 << 20
    reserve: dict[str, int] = {}
    seen: list[dict[str, int]] = []
    fitted = load
    for _ in range(8 * len(accelerators) + 8):
        need = {d: -(-max(s.activations.get(d, 0) for s in steps) // mib) * mib for d in accelerators}
        if need == reserve:  # the map keeps free exactly what its own activations take
            break
        if need in seen:  # two maps alternate: keep the larger reserve of each device, which ends it
            need = {d: max(need[d], reserve[d]) for d in accelerators}
        seen.append(reserve := need)
        text = ",".join(f"{d}={b // mib}MiB" for d, b in reserve.items())
        fitted = replace(load, reserve=Budgets.parse(text, "--reserve"))
        try:
            shape = model_shape(fitted, processes)[0]
        except ValueError as err:
            raise ValueError(f"the plan's activations ({text}) and the weights do not fit the budgets together: "
                             f"{err}") from None
        for s in steps:
            s.shape = shape
    return fitted
