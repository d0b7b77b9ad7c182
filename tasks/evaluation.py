"""One task at one shot count, evaluated: prompts -> Scorer -> per-doc metrics -> aggregated metrics, and
the cache and store every step that evaluates tasks shares (the `eval` step itself: tasks/evaluate.py).

Mirrors lm-evaluation-harness v0.3 `evaluator.evaluate` for a single task (docs/method.md,
"Evaluation"): the seeded doc order and demos come from
`Task.instances`, scoring from tasks/scoring.py, aggregation from the task (tasks/metrics.py).

`TaskEvaluation` builds the prompts and the scoring plan once, so a pruning sweep can evaluate the
same task under many masks:

    ev = TaskEvaluation(model, tok, get_task("copa", data), shots=1, limit=100)
    base = ev.run(record_layer_inputs=True)               # {"acc": ...}
    knocked = ev.run(ffn_mask=mask, start_layer=layer)    # only layers >= layer recomputed
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from opt66b.runs.results import NonFiniteError
from opt66b.runs.store import json_intact, sealed_json
from opt66b.layer_major import DEFAULT_CHUNK_BUDGET

from .base import Result, Task
from .metrics import task_metrics_with_errors
from .scoring import Scorer


class TaskEvaluation:
    """Instances and Scorer of (task, shots, limit, seed), built once; `run` under any masks."""

    def __init__(self, model: Any, tokenizer: Any, task: Task, shots: int, limit: int | None = None,
                 seed: int = 42, batch_tokens: int = 4096, max_length: int | None = None,
                 progress_label: str | None = None, chunk_budget: int | None = DEFAULT_CHUNK_BUDGET):
        if shots < 0:
            raise ValueError(f"shots must be >= 0, got {shots}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for all docs), got {limit}")
        self.task, self.shots, self.limit, self.seed = task, shots, limit, seed
        self.instances = task.instances(shots, limit=limit, seed=seed)
        self.requests = [r for inst in self.instances for r in inst.requests]
        self.scorer = Scorer(model, tokenizer, self.requests, batch_tokens=batch_tokens, max_length=max_length,
                             progress_label=progress_label, chunk_budget=chunk_budget)
        self.results: list[Result] | None = None  # of the latest run, in request order

    def identity(self) -> str:
        """What fixes this evaluation's numbers on a given model (EvaluationCache's key): the task's
        identity and prompt variant, shots, limit, seed and the batching."""
        return evaluation_identity(self.task, self.shots, self.limit, self.seed, self.scorer.batch_tokens,
                                   self.scorer.max_length)

    def run(self, head_mask: torch.Tensor | None = None, ffn_mask: torch.Tensor | None = None,
            start_layer: int = 0, record_layer_inputs: bool = False, intervals: bool = False) -> dict[str, float]:
        """Aggregated metrics ({metric: value}, fractions not points) under the given masks (with
        `intervals`, each metric's `_ci95` too: tasks/metrics.task_metrics_with_errors)."""
        self.results = self.scorer.run(head_mask=head_mask, ffn_mask=ffn_mask, start_layer=start_layer,
                                       record_layer_inputs=record_layer_inputs)
        self._check_finite()
        return task_metrics_with_errors(self.task, self.instances, self.results, intervals=intervals)

    def run_knockouts(self, runs: Sequence[tuple[Any, Any, Any, int]], chunk_units: int, done=None,
                      on_chunk=None, layer_major: bool | None = None, base: tuple[Any, Any] = (None, None),
                      only: set[int] | None = None) -> dict[Any, dict[str, float]] | None:
        """{"base": metrics, key: metrics} of the base run (unmasked, or under `base`'s masks) and each (key,
        head_mask, ffn_mask, start_layer) run, computed chunk by chunk (Scorer.run_knockouts): memory bounded
        by the chunk. only: compute just these chunks (first units) and return None (another process has the
        rest; the merge reads every chunk back through `done`)."""
        per_key = self.scorer.run_knockouts(runs, chunk_units, done=done, on_chunk=on_chunk, layer_major=layer_major,
                                            base=base, only=only)
        if only is not None:
            return None
        out = {}
        for key, results in per_key.items():
            self.results = results
            self._check_finite()
            out[key] = task_metrics_with_errors(self.task, self.instances, results)
        return out

    def _check_finite(self) -> None:
        """A NaN/inf log-likelihood would turn into a plausible-looking accuracy (NaN compares
        false): an error naming the task, doc and request instead."""
        k = 0
        for inst in self.instances:
            for j, req in enumerate(inst.requests):
                ll = self.results[k][0]
                k += 1
                if not math.isfinite(ll):
                    raise NonFiniteError(
                        f"{self.task.NAME} {self.shots}-shot: doc {inst.doc_id} request {j} (continuation "
                        f"{req.continuation!r:.40}) has log-likelihood {ll}; the model produced non-finite "
                        "logits: corrupt or NaN weights, or float16 overflow (try --dtype float32 or bfloat16)")

    def records(self) -> list[dict[str, Any]]:
        """One JSON-able record per request of the latest run: doc_id, context, continuation,
        loglikelihood (nats, summed over the continuation), is_greedy."""
        if self.results is None:
            raise ValueError("no results yet: call run() first")
        out, k = [], 0
        for inst in self.instances:
            for req in inst.requests:
                ll, greedy = self.results[k]
                out.append({"doc_id": inst.doc_id, "context": req.context, "continuation": req.continuation,
                            "loglikelihood": ll, "is_greedy": greedy})
                k += 1
        return out


def evaluate_task(model: Any, tokenizer: Any, task: Task, shots: int, head_mask: torch.Tensor | None = None,
                  ffn_mask: torch.Tensor | None = None, **options: Any) -> dict[str, Any]:
    """{"metrics": {metric: value}, "records": [per request: doc_id, context, continuation,
    loglikelihood, is_greedy]} for one task at `shots` demos (lm-eval order: Random(seed)); `options` are
    TaskEvaluation's (limit, seed, batch_tokens, max_length, progress_label)."""
    ev = TaskEvaluation(model, tokenizer, task, shots, **options)
    metrics = ev.run(head_mask=head_mask, ffn_mask=ffn_mask)
    return {"metrics": metrics, "records": ev.records()}


# -- shared between the steps that evaluate: the cache of full runs, the unit store --------------------
class EvaluationCache:
    """Metrics of the full evaluations already run on one loaded model, by what fixes them: the task's
    identity (name, VERSION, data by content, prompt variant), shots, limit, seed, batch budget, max length,
    and the exact mask values (`evaluation_identity` and the masks' bytes).

    `run.py all` shares one between its steps, so an evaluation that several sweeps contain is run once: every
    0% unit is the unpruned evaluation, the grid's FFN-0% column is the head sweep and its heads-0% row the FFN
    sweep, and one sweep evaluates two percentages that mask the same heads once. With a `directory` every
    evaluation is also kept on disk (one small JSON each, fingerprinted with the model): torchrun processes
    read what the others computed, and a resumed run what the killed one computed. Reuse is exact, not
    approximate: the same masks on the same batches run the same operations (a mask of ones counts as no mask:
    multiplying by 1.0 changes no bit). Only full runs are kept (start_layer 0); the FFN oracle's
    layer-skipping runs are not.
    """

    def __init__(self, model: Any, directory: str | Path | None = None, fingerprint: dict[str, Any] | None = None):
        self.model = model
        self.directory = None if directory is None else Path(directory)
        # as a JSON file gives it back (tuples become lists), so an entry another process wrote compares equal
        self.fingerprint = json.loads(json.dumps(fingerprint or {}, sort_keys=True, default=str))
        self._metrics: dict[tuple[str, bytes, bytes], dict[str, float]] = {}
        self._pinned: dict[str, Any] = {}

    def key(self, evaluation: Any, head_mask: Any, ffn_mask: Any) -> tuple[str, bytes, bytes]:
        """An evaluation without an identity() (a test's stand-in) is only equal to itself; it is
        kept alive here so its id is never reused by another object."""
        if hasattr(evaluation, "identity"):
            return self.key_of(evaluation.identity(), head_mask, ffn_mask)
        ident = f"object {id(evaluation)}"
        self._pinned[ident] = evaluation
        return self.key_of(ident, head_mask, ffn_mask)

    @staticmethod
    def key_of(identity: str, head_mask: Any, ffn_mask: Any) -> tuple[str, bytes, bytes]:
        """The key of an evaluation (its evaluation_identity) under these masks."""
        return identity, _mask_bytes(head_mask), _mask_bytes(ffn_mask)

    def get(self, key: tuple[str, bytes, bytes]) -> dict[str, float] | None:
        """The metrics kept under `key`, from memory or the directory; None when not there."""
        if key in self._metrics:
            return dict(self._metrics[key])
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if not json_intact(entry):
                raise ValueError("its numbers differ from the digest written with them")
            ok = entry["identity"] == key[0] and entry["fingerprint"] == self.fingerprint
            metrics = dict(entry["metrics"]) if ok else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            print(f"[evaluations] {path}: damaged ({type(err).__name__}: {err}), evaluated again", file=sys.stderr)
            path.unlink(missing_ok=True)  # said once; the evaluation's new entry replaces it
            return None
        if metrics is not None:
            self._metrics[key] = metrics
        return metrics

    def run(self, evaluation: Any, head_mask: Any = None, ffn_mask: Any = None,
            identity: str | None = None) -> tuple[dict[str, float], bool]:
        """(metrics, computed): the kept metrics of this evaluation under these masks, or a new full run of it
        (computed=True) that is then kept. identity: its evaluation_identity when the caller knows it (a
        stand-in evaluation has none of its own; every process keys it the same way then)."""
        scorer = getattr(evaluation, "scorer", None)
        if scorer is not None and scorer.model is not self.model:
            raise ValueError("EvaluationCache: this evaluation scores another model than the cache's")
        key = self.key_of(identity, head_mask, ffn_mask) if identity else self.key(evaluation, head_mask, ffn_mask)
        metrics = self.get(key)
        if metrics is not None:
            return metrics, False
        metrics = evaluation.run(head_mask=head_mask, ffn_mask=ffn_mask)
        self._put(key, metrics)
        return metrics, True

    def __contains__(self, key: tuple[str, bytes, bytes]) -> bool:
        return self.get(key) is not None

    def put(self, evaluation: "TaskEvaluation", metrics: dict[str, float], head_mask: Any = None,
            ffn_mask: Any = None, identity: str | None = None) -> None:
        """Keep the metrics of a full run made elsewhere (the evaluation step's own run; layer-order runs)."""
        key = self.key_of(identity, head_mask, ffn_mask) if identity else self.key(evaluation, head_mask, ffn_mask)
        self._put(key, metrics)

    def _put(self, key: tuple[str, bytes, bytes], metrics: dict[str, float]) -> None:
        self._metrics[key] = dict(metrics)
        path = self._path(key)
        if path is not None:
            from opt66b.runs.results import write_json

            write_json(path, sealed_json({"identity": key[0], "metrics": metrics}, self.fingerprint))

    def _path(self, key: tuple[str, bytes, bytes]) -> Path | None:
        if self.directory is None or key[0].startswith("object "):
            return None
        digest = hashlib.sha256(key[0].encode() + b"|" + key[1] + b"|" + key[2]).hexdigest()
        return self.directory / f"{digest[:40]}.json"


def evaluation_identity(task: Task, shots: int, limit: int | None, seed: int, batch_tokens: int,
                        max_length: int) -> str:
    """What fixes an evaluation's numbers on a given model besides its masks (EvaluationCache's key): the task's
    identity and prompt variant, shots, limit, seed and the batching."""
    return json.dumps([task_fingerprint(task), getattr(task, "paper_quirks", False), shots, limit, seed, batch_tokens,
                       max_length], sort_keys=True)


def _mask_bytes(mask: Any) -> bytes:
    """A mask's exact values; no mask and a mask of ones are the same key: the model multiplies by the
    mask (x * 1.0 == x exactly in IEEE arithmetic, any dtype), so their runs agree bit for bit."""
    if mask is None:
        return b""
    values = torch.as_tensor(mask).detach().float().cpu()
    return b"" if bool((values == 1.0).all()) else values.numpy().tobytes()


def task_fingerprint(task: Task) -> dict[str, Any]:
    """What fixes a task's numbers besides the model and settings: name, VERSION, data files by content."""
    from opt66b.runs.store import files_fingerprint

    return {"task": task.NAME, "version": task.VERSION, "data_sha256": files_fingerprint(task.data_files())}


def load_eval_masks(head_path: Path | None, ffn_path: Path | None, num_layers: int, num_heads: int,
                    soft: bool = False):
    """(head_mask (L, H) or None, ffn_mask (L,) or None) from the given files; a file lacking the
    tensor asked of it, or of the wrong shape for this model, is an error naming the file."""
    from opt66b.runs.mask_files import read_masks

    head = ffn = None
    if head_path is not None:
        head, _ = read_masks(head_path, num_layers, num_heads, soft)
        if head is None:
            raise KeyError(f"{head_path}: no 'head_mask' tensor (layers, heads) = ({num_layers}, {num_heads}) in it")
    if ffn_path is not None:
        _, ffn = read_masks(ffn_path, num_layers, num_heads, soft)
        if ffn is None:
            raise KeyError(f"{ffn_path}: no 'ffn_mask' tensor (layers,) = ({num_layers},) in it")
    return head, ffn


def evaluation_store(info: dict[str, Any], *, limit: int | None, seed: int, paper_quirks: bool, recompute: bool,
                     **extra: Any) -> Any:
    """The unit store (opt66b.runs.store) of every step that evaluates tasks (eval, the FFN oracle, the sweeps,
    the transfer): the model, which docs (limit, seed) and which prompts (paper_quirks) fix an
    evaluation's numbers; `extra`, what else a step's units depend on (eval: max_length, masks). Not
    batch_tokens: a batch shape moves only the last float bits and a resumed run may have another memory
    budget, so it is recorded in each unit instead of refusing it."""
    from opt66b.runs.store import UnitStore, model_fingerprint

    return UnitStore({**model_fingerprint(info), "limit": limit, "seed": seed, "paper_quirks": paper_quirks, **extra},
                     recompute=recompute)


# -- an evaluation's passes without its tensors (what the run splits by and the plan prices) ---------------
_PASSES: dict[tuple, Any] = {}  # within a process: (task, data, variant, shots, limit, seed, length, budget, tokenizer)


def evaluation_order(task: Task, shots: int, limit: int | None, seed: int, max_length: int, tokenizer: Any) -> Any:
    """The length-level order of the evaluation's unique requests (tasks.batching.Order), from the
    tokenisation cache when it has it (tasks.batching.cached): tokenising the full data takes minutes."""
    from .batching import Order
    from .scoring import token_requests

    def compute() -> dict[str, Any]:
        requests = [r for inst in task.instances(shots, limit=limit, seed=seed) for r in inst.requests]
        return Order.of(list(dict.fromkeys(token_requests(tokenizer, requests, max_length)))).to_json()

    return Order.from_json(cached(f"{shots}-shot-order", [shots, limit, seed, max_length], tokenizer, task, compute))


def evaluation_passes(task: Task, shots: int, limit: int | None, seed: int, max_length: int, batch_tokens: int,
                      tokenizer: Any) -> Any:
    """opt66b.cost.Passes of the evaluation: its order, batched under `batch_tokens` as the Scorer batches it
    (tasks.batching.layout); equal to Scorer.passes() of the same evaluation (tests/test_scoring.py)."""
    from .batching import layout

    key = (task.NAME, str(task.data_dir), task.paper_quirks, shots, limit, seed, max_length, batch_tokens,
           id(tokenizer))
    if key not in _PASSES:
        order = evaluation_order(task, shots, limit, seed, max_length, tokenizer)
        _PASSES[key] = order.passes(layout(order, batch_tokens))
    return _PASSES[key]


# -- the tokenisation cache -------------------------------------------------------------------------------
CACHE_FORMAT = 2  # bump when what `cached` keeps changes layout: entries of other formats are recomputed
_SOURCE: list[str] = []  # sha256 of the tasks package's source, computed once per process


def cached(what: str, identity: list[Any], tokenizer: Any, task: Any, compute: Callable[[], Any]) -> Any:
    """compute(), a JSON-able value, kept in OPT66B_CACHE_DIR/plans/ under everything that fixes it:
    `identity` (which docs, demos, lengths) plus the task's name, VERSION and data by content, its prompt
    variant, the tokenizer files by content and the source of the tasks package. No batch budget and no
    placement: any machine shape reads it back. A tokenizer built in memory (no files) is never cached; a
    damaged entry (unreadable, cut short, garbage, another schema or key) is
    said in one line and recomputed, never trusted; a cache that cannot be written costs time, nothing else."""
    from opt66b.fileio import atomic_write_text
    from opt66b.runs.identity import cache_dir, tokenizer_identity

    if getattr(tokenizer, "merges_path", None) is None:
        return compute()
    if not _SOURCE:
        package = Path(__file__).resolve().parent
        _SOURCE.append(hashlib.sha256(b"".join(p.read_bytes() for p in sorted(package.glob("*.py")))).hexdigest())
    full = [CACHE_FORMAT, what, *identity, task_fingerprint(task), task.paper_quirks,
            tokenizer_identity(Path(tokenizer.merges_path).parent), _SOURCE[0]]
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()
    path = cache_dir() / "plans" / f"{task.NAME}-{what}-{digest[:32]}.json"
    try:
        entry = json.loads(path.read_text())
        if isinstance(entry, dict) and entry.get("key") == digest and "value" in entry:
            return entry["value"]
        why = "another key or schema"
    except FileNotFoundError:
        why = None
    except (OSError, ValueError) as err:
        why = getattr(err, "strerror", None) or str(err).splitlines()[0]
    if why:
        print(f"[plan] {path}: damaged cache entry ({why}); ignored and rebuilt", file=sys.stderr, flush=True)
    print(f"[plan] {task.NAME} {' '.join(what.rsplit('-', 1))}: tokenising its requests (kept in {path.parent} "
          "for the next plan)", file=sys.stderr, flush=True)
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"key": digest, "value": value}, separators=(",", ":")))
    except (OSError, ValueError):
        pass
    return value
