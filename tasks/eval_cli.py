"""`run.py eval`: score tasks at several shot counts and write lm-eval-layout results, resumably.

Mirrors lm-evaluation-harness v0.3 `main.py` + `evaluator.simple_evaluate` output (the
harness's results.json layout). Layout under --out, per shot count K:

    shots-K/results.json           {"results": {task: {metric: value}}, "versions": {task: V}, "config": {...}}
    shots-K/tasks/<task>.json      one task's metrics + settings; written last, so it marks the task done
    shots-K/requests/<task>.jsonl  one line per request: doc_id, context, continuation, loglikelihood, is_greedy

The experiment is tasks.evaluate.run_evaluation; this module only declares the options. A rerun
skips tasks whose shots-K/tasks/<task>.json holds the same fingerprint (opt66b.runs.store: model, dtype,
masks, data by content, limit, seed, VERSION) and rebuilds results.json; a different fingerprint in
the same --out is an error (or, with --recompute, replaced) rather than a silent mix.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import EvalSettings


def register_eval(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_model_args, add_out_arg, add_plan_args, add_seed_arg, example

    from .cli_options import add_task_args

    p = sub.add_parser(
        "eval", help="evaluate tasks (lm-eval v0.3 prompts and scoring) at several shot counts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score each task's log-likelihood requests with the shared-context scorer and write, per "
                    "shot count K, OUT/shots-K/results.json (lm-eval layout) and OUT/shots-K/requests/<task>.jsonl. "
                    "Reruns skip tasks already complete.",
        epilog=example("python run.py eval --model ~/ckpt/opt-1.3b --data ~/data --tasks boolq hellaswag "
                       "--shots 0 1 5 --limit 200 --out runs/eval-1.3b",
                       "python run.py eval --model ~/ckpt/opt-1.3b --tasks copa --shots 1 "
                       "--head-mask masks/heads-30.safetensors --out runs/eval-pruned",
                       "python run.py eval --random-weights opt-66b --device cuda:0 --tasks copa --plan"))
    add_model_args(p)
    add_task_args(p)
    add_seed_arg(p, 42, "doc shuffle and few-shot demo sampling seed (lm-eval's)")
    p.add_argument("--head-mask", type=Path, default=None, help="safetensors file with 'head_mask' (layers, heads)")
    p.add_argument("--ffn-mask", type=Path, default=None, help="safetensors file with 'ffn_mask' (layers,)")
    p.add_argument("--soft-masks", action="store_true",
                   help="accept fractional mask values in (0, 1) (scaled heads/FFNs; recorded in the results)")
    p.add_argument("--max-length", type=int, default=None, help="model input positions (default: the model's, 2048)")
    add_out_arg(p)
    add_plan_args(p, "eval")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace, loaded=None) -> int:
    from .settings import EvalSettings

    return EvalSettings.handle(args, loaded)


def check_eval(s: "EvalSettings") -> None:
    """Bad values and missing files, each one clear error, before any model work."""
    from opt66b.runs.mask_files import read_masks

    s.check_tasks(s.limit)
    if s.batch_tokens < 1:
        raise ValueError(f"--batch-tokens must be >= 1, got {s.batch_tokens}")
    for flag, path in (("--head-mask", s.head_mask), ("--ffn-mask", s.ffn_mask)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: mask file not found")
        if path is not None:
            read_masks(path, soft=s.soft_masks)  # values checked before the model loads


def run_eval_step(s: "EvalSettings", loaded, cache=None) -> dict:
    """The evaluation step on a loaded (model, tokenizer, info): {"code": 0, "work": passes and tokens}."""
    from opt66b.layer_major import chunk_budget, streamed_compute
    from opt66b.placement import parse_max_memory

    from .evaluate import run_evaluation

    check_eval(s)
    model, tokenizer, info = loaded
    work = run_evaluation(model, tokenizer, info, s.data, list(s.tasks), list(s.shots), s.out, limit=s.limit,
                          seed=s.seed, head_mask=s.head_mask, ffn_mask=s.ffn_mask, batch_tokens=s.batch_tokens,
                          max_length=s.max_length, paper_quirks=s.paper_quirks, soft_masks=s.soft_masks,
                          recompute=s.recompute, cache=cache,
                          chunk_budget=chunk_budget(parse_max_memory(s.max_memory), streamed_compute(model)))["work"]
    return {"code": 0, "work": work}
