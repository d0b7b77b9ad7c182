"""The `eval` step: every task at every shot count, lm-eval v0.3's results layout, resumable per (task, shot).

    s = EvalSettings(data="data", tasks=("copa", "rte"), shots=(0, 1), limit=200, out="runs/eval")
    run_evaluation(model, tok, info, s)          # what `run.py eval ...` computes

Layout under s.out, per shot count K (opt66b/runs/layout.py):

    shots-K/results.json           {"results": {task: {metric: value}}, "versions": {task: V}, "config": {...}}
    shots-K/tasks/<task>.json      one task's metrics + settings + fingerprint; written last, so it marks it done
    shots-K/requests/<task>.jsonl  one line per request: doc_id, context, continuation, loglikelihood, is_greedy

A rerun skips tasks whose unit holds the same fingerprint (opt66b.runs.store: model, dtype, masks, data by
content, limit, seed, VERSION) and rebuilds results.json; a different fingerprint in the same --out is an
error (or, with --recompute, replaced) rather than a silent mix. Scoring itself: tasks/evaluation.py and
tasks/scoring.py.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opt66b.runs.layout import eval_requests, eval_results, eval_unit, shots_dir
from opt66b.runs.settings import option

from .settings import EvaluatingStep


@dataclass(frozen=True, kw_only=True)
class EvalSettings(EvaluatingStep):
    """`run.py eval`: every task at every shot count, optionally under head / FFN mask files."""

    COMMAND = ("eval",)
    head_mask: Path | None = option(None)
    ffn_mask: Path | None = option(None)
    soft_masks: bool = option(False)
    max_length: int | None = option(None)

    def check(self) -> None:
        """Bad values and missing files, each one clear error, before any model work."""
        from opt66b.runs.mask_files import read_masks

        self.check_tasks(self.limit)
        if self.batch_tokens < 1:
            raise ValueError(f"--batch-tokens must be >= 1, got {self.batch_tokens}")
        for flag, path in (("--head-mask", self.head_mask), ("--ffn-mask", self.ffn_mask)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{flag} {path}: mask file not found")
            if path is not None:
                read_masks(path, soft=self.soft_masks)  # values checked before the model loads

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, int]:
        return run_evaluation(*loaded, self, cache)["work"]

    def units(self, shape: Any, tokenizer: Any, done: Any = None) -> list[Any]:
        """The work units (opt66b.cost) the run splits and the plan prices: one (task, shot) evaluation each,
        in the run's order; with streamed layers it runs in layer-order chunks (states held on the compute
        device, one layer sweep per chunk)."""
        from opt66b.cost import Run, WorkUnit
        from opt66b.layer_major import chunk_cost

        units = []
        for k in self.shots:
            for name, task in self.task_objects().items():
                passes = self.passes(task, k, shape.cfg, tokenizer)
                unit = WorkUnit(("eval", name, k), [Run(passes, layer_order=shape.streams_to is not None)],
                                provides=((self.evaluation_key(task, k, shape.cfg), None, None),)
                                if self.head_mask is None and self.ffn_mask is None else ())
                if shape.streams_to is not None:
                    _, unit.held, unit.sweeps = chunk_cost(passes.unit_tokens, self.chunk_budget(shape), 1,
                                                          shape.cfg.hidden_size, shape.dtype_bytes)
                units.append(unit)
        return units


def _span(ci: Any) -> str:
    return "no interval" if not ci else f"{ci[0]:.4f}, {ci[1]:.4f}"


def _evaluate_unit(ev: Any, head: Any, ffn: Any, shot_dir: Path, recorded: dict[str, Any], info: dict[str, Any],
                   cache: Any) -> dict[str, Any]:
    """One (task, shot) unit of run_evaluation: score it under the masks, keep the run in `cache`, write the
    per-request log-likelihoods; returns the unit's content (metrics, per-doc scores, config)."""
    from opt66b.fileio import atomic_write_text
    from opt66b.runs.results import file_hashes, run_metadata

    from .metrics import public_metrics
    from .uncertainty import PER_DOC_KEY

    task, k, stats = ev.task, ev.shots, ev.scorer.stats
    print(f"[eval] {task.NAME} {k}-shot: {len(ev.instances)} docs, {len(ev.requests)} requests, "
          f"{stats['forward_passes']} forward passes", file=sys.stderr, flush=True)
    metrics = ev.run(head_mask=head, ffn_mask=ffn, intervals=True)
    if cache is not None:  # as a masked run computes them (no intervals), so a reused result is the same
        cache.put(ev, {m: v for m, v in metrics.items() if not m.endswith("_ci95")}, head, ffn)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ev.records())
    atomic_write_text(eval_requests(shot_dir, task.NAME), lines)
    settings = {"task": task.NAME, "version": task.VERSION, "shots": k, **recorded,
                "data_files": file_hashes(task.data_files())}
    config = run_metadata(**settings, model=info, batch_tokens=ev.scorer.batch_tokens, scoring=stats)
    print(f"[eval] {task.NAME} {k}-shot: " + ", ".join(
        f"{m}={v:.4f} [{_span(metrics.get(m + '_ci95'))}]" for m, v in metrics.items()
        if m in task.METRICS), file=sys.stderr, flush=True)
    return {"results": public_metrics(metrics), PER_DOC_KEY: {task.PRIMARY_METRIC: metrics[PER_DOC_KEY]},
            "version": task.VERSION, "config": config}


def run_evaluation(model: Any, tokenizer: Any, info: dict[str, Any] | None, s: EvalSettings,
                   cache: Any = None) -> dict[str, Any]:
    """Evaluate s.tasks at every shot count and write lm-eval-layout results under s.out (module docstring).

    A unit already on disk with the same fingerprint is reused; one with another fingerprint is a
    ValueError (s.recompute replaces it). s.head_mask / s.ffn_mask: safetensors files with 'head_mask'
    (L, H) / 'ffn_mask' (L,). info: the loader's info dict (opt66b.load); None identifies the model by its
    weights. cache: a tasks.evaluation.EvaluationCache every run made here is kept in (later sweeps reuse
    the unpruned evaluation); never read here, since the per-request log-likelihoods are written too. With
    streamed layers each evaluation runs in layer-order chunks of s.chunk_budget(...) bytes of states.
    Returns {"results": {K: {task: metrics}}, "work": forward passes and tokens computed by this call}.
    """
    from opt66b.cost import ModelShape
    from opt66b.runs.distributed import barrier, is_main, my_units
    from opt66b.runs.results import sha256_file
    from opt66b.runs.store import Work, in_memory_info

    from .evaluation import load_eval_masks, task_fingerprint

    s.check()
    info = info or in_memory_info(model)
    cfg = model.config
    head, ffn = load_eval_masks(s.head_mask, s.ffn_mask, cfg.num_layers, cfg.num_heads, s.soft_masks)
    mask_ids = {key: None if path is None else {"path": str(path), "sha256": sha256_file(path), "soft_masks": s.soft_masks}
                for key, path in (("head_mask", s.head_mask), ("ffn_mask", s.ffn_mask))}
    max_length = cfg.max_positions if s.max_length is None else s.max_length
    model_id = info["model"] + (f"#seed{info['random_weights_seed']}" if "random_weights_seed" in info else "")
    store = s.unit_store(info, max_length=max_length, soft_masks=s.soft_masks,
                         head_mask_sha256=(mask_ids["head_mask"] or {}).get("sha256"),
                         ffn_mask_sha256=(mask_ids["ffn_mask"] or {}).get("sha256"))
    work = Work()
    objects = s.task_objects()
    # what every unit records beside its task, shot and data (its config; the fingerprint is the store's)
    recorded = {"limit": s.limit, "seed": s.seed, "max_length": max_length, "paper_quirks": s.protocol.paper_quirks,
                "model_id": model_id, "model_config_sha256": info.get("config_sha256"), "dtype": info["dtype"],
                **mask_ids}
    shape = ModelShape.of(model)
    budget = s.chunk_budget(shape)
    units = {u.key[1:]: u for u in s.units(shape, tokenizer)}
    pending = []
    for name, k in units:
        path = eval_unit(shots_dir(s.out, k), name)
        if store.done(path, **task_fingerprint(objects[name]), shots=k):
            print(f"[eval] {name} {k}-shot: done earlier ({path}), skipped", file=sys.stderr)
        else:
            pending.append((name, k))
    barrier()  # every process has read the unit files before any process writes one (the same split everywhere)
    for name, k in my_units(pending, [units[key].flops(shape.rule) for key in pending]):  # this process's share
        task = objects[name]
        ev = s.evaluation(model, tokenizer, task, k, max_length=max_length, progress_label=f"eval {name} {k}-shot",
                          chunk_budget=budget)
        done = _evaluate_unit(ev, head, ffn, shots_dir(s.out, k), recorded, info, cache)
        store.write_json(eval_unit(shots_dir(s.out, k), name), done, **task_fingerprint(task), shots=k)
        work.add_unit(units[(name, k)], shape.rule)
    barrier()  # every unit is on disk: rank 0 writes the results of each shot count
    all_results = {k: _results(s, objects, k, mask_ids, max_length, info) for k in s.shots} if is_main() else {}
    return {"results": all_results, "work": work.as_dict()}


def _results(s: EvalSettings, objects: dict[str, Any], k: int, mask_ids: dict[str, Any], max_length: int,
             info: dict[str, Any]) -> dict[str, Any]:
    """Write s.out/shots-K/results.json (lm-eval's layout) from the shot's unit files; returns its results."""
    from opt66b.fileio import read_json
    from opt66b.runs.results import run_metadata, write_json

    from .uncertainty import BOOTSTRAP_ITERS, BOOTSTRAP_SEED, INTERVAL_ITERS, INTERVAL_RULES, STDERR_RULES

    shot_dir = shots_dir(s.out, k)
    units = {name: read_json(eval_unit(shot_dir, name)) for name in objects}
    config = run_metadata(seed=s.seed, shots=k, limit=s.limit, max_length=max_length,
                          paper_quirks=s.protocol.paper_quirks, model=info, **mask_ids, batch_tokens=s.batch_tokens,
                          data_files={n: u["config"]["data_files"] for n, u in units.items()},
                          stderr={"rules": STDERR_RULES, "bootstrap_iters": BOOTSTRAP_ITERS,
                                  "bootstrap_seed": BOOTSTRAP_SEED},
                          ci95={"rules": INTERVAL_RULES, "bootstrap_iters": INTERVAL_ITERS, "bootstrap_seed": BOOTSTRAP_SEED})
    results = {n: u["results"] for n, u in units.items()}
    write_json(eval_results(shot_dir), {"results": results, "versions": {n: u["version"] for n, u in units.items()},
                                        "config": config})
    print(f"[eval] wrote {eval_results(shot_dir)}", file=sys.stderr)
    return results
