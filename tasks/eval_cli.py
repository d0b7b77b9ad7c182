"""`run.py eval`: score tasks at several shot counts and write lm-eval-layout results, resumably.

Mirrors lm-evaluation-harness v0.3 `main.py` + `evaluator.simple_evaluate` output (the
harness's results.json layout). Layout under --out, per shot count K:

    shots-K/results.json           {"results": {task: {metric: value}}, "versions": {task: V}, "config": {...}}
    shots-K/tasks/<task>.json      one task's metrics + settings; written last, so it marks the task done
    shots-K/requests/<task>.jsonl  one line per request: doc_id, context, continuation, loglikelihood, is_greedy

A rerun with the same arguments skips tasks whose shots-K/tasks/<task>.json exists with the same
settings (model, dtype, masks, data hashes, limit, seed, VERSION) and rebuilds results.json; different
settings in the same --out are an error rather than a silent mix.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Settings that change the numbers; a per-task file is reused only if all of them match.
RESUME_KEYS = ("task", "version", "shots", "limit", "seed", "max_length", "paper_quirks", "model_id",
               "model_config_sha256", "dtype", "head_mask", "ffn_mask", "data_files")


def register_eval(sub: argparse._SubParsersAction) -> None:
    from opt66b.cli_options import add_model_args, add_out_arg, add_plan_args, add_seed_arg, example

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
    p.add_argument("--max-length", type=int, default=None, help="model input positions (default: the model's, 2048)")
    add_out_arg(p)
    add_plan_args(p, "eval")
    p.set_defaults(func=_eval)


def _validate(args: argparse.Namespace) -> None:
    from .registry import check_task_args

    check_task_args(args.tasks, args.shots, args.limit)
    if args.batch_tokens < 1:
        raise ValueError(f"--batch-tokens must be >= 1, got {args.batch_tokens}")
    if args.data is None or not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data}: data directory not found")
    for flag, path in (("--head-mask", args.head_mask), ("--ffn-mask", args.ffn_mask)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: mask file not found")


def load_eval_masks(head_path: Path | None, ffn_path: Path | None, num_layers: int, num_heads: int):
    """(head_mask (L, H) or None, ffn_mask (L,) or None) from the given files; a file lacking the
    tensor asked of it, or of the wrong shape for this model, is an error naming the file."""
    from opt66b.mask_files import read_masks

    head = ffn = None
    if head_path is not None:
        head, _ = read_masks(head_path, num_layers, num_heads)
        if head is None:
            raise KeyError(f"{head_path}: no 'head_mask' tensor (layers, heads) = ({num_layers}, {num_heads}) in it")
    if ffn_path is not None:
        _, ffn = read_masks(ffn_path, num_layers, num_heads)
        if ffn is None:
            raise KeyError(f"{ffn_path}: no 'ffn_mask' tensor (layers,) = ({num_layers},) in it")
    return head, ffn


def _eval(args: argparse.Namespace) -> int:
    _validate(args)
    from opt66b.io import file_hashes, read_json, run_metadata, sha256_file, write_json, atomic_write_text
    from opt66b.runtime import load_from_args

    from .evaluate import TaskEvaluation
    from .registry import get_task

    model, tokenizer, model_info = load_from_args(args)
    cfg = model.config
    head, ffn = load_eval_masks(args.head_mask, args.ffn_mask, cfg.num_layers, cfg.num_heads)
    masks = {"head_mask": _mask_id(args.head_mask, sha256_file), "ffn_mask": _mask_id(args.ffn_mask, sha256_file)}
    max_length = args.max_length or cfg.max_positions
    model_id = model_info["model"] + (f"#seed{model_info['random_weights_seed']}" if "random_weights_seed" in model_info else "")
    tasks = {name: get_task(name, args.data, paper_quirks=args.paper_quirks) for name in args.tasks}
    for shots in args.shots:
        shot_dir = args.out / f"shots-{shots}"
        results, versions, configs = {}, {}, {}
        for name, task in tasks.items():
            settings = {"task": name, "version": task.VERSION, "shots": shots, "limit": args.limit, "seed": args.seed,
                        "max_length": max_length, "paper_quirks": args.paper_quirks,
                        "model_id": model_id, "model_config_sha256": model_info["config_sha256"], "dtype": model_info["dtype"], **masks,
                        "data_files": file_hashes(task.data_files())}
            task_file = shot_dir / "tasks" / f"{name}.json"
            if task_file.is_file():
                done = read_json(task_file)
                old = {k: done.get("config", {}).get(k) for k in RESUME_KEYS}
                if old != settings:
                    diff = sorted(k for k in RESUME_KEYS if old[k] != settings[k])
                    raise ValueError(f"{task_file}: made with different settings ({', '.join(diff)}); "
                                     "use another --out or delete the file to recompute")
                print(f"[eval] {name} {shots}-shot: done earlier ({task_file}), skipped", file=sys.stderr)
            else:
                ev = TaskEvaluation(model, tokenizer, task, shots, limit=args.limit, seed=args.seed,
                                    batch_tokens=args.batch_tokens, max_length=max_length,
                                    progress_label=f"eval {name} {shots}-shot")
                print(f"[eval] {name} {shots}-shot: {len(ev.instances)} docs, {len(ev.requests)} requests, "
                      f"{ev.scorer.stats['forward_passes']} forward passes", file=sys.stderr, flush=True)
                metrics = ev.run(head_mask=head, ffn_mask=ffn)
                lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ev.records())
                atomic_write_text(shot_dir / "requests" / f"{name}.jsonl", lines)
                config = run_metadata(**settings, model=model_info, batch_tokens=args.batch_tokens,
                                      scoring=ev.scorer.stats)
                done = {"results": metrics, "version": task.VERSION, "config": config}
                write_json(task_file, done)
                print(f"[eval] {name} {shots}-shot: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                      file=sys.stderr, flush=True)
            results[name], versions[name], configs[name] = done["results"], done["version"], done["config"]
        config = run_metadata(seed=args.seed, shots=shots, limit=args.limit, max_length=max_length,
                              paper_quirks=args.paper_quirks, model=model_info, **masks, batch_tokens=args.batch_tokens,
                              data_files={n: c["data_files"] for n, c in configs.items()})
        write_json(shot_dir / "results.json", {"results": results, "versions": versions, "config": config})
        print(f"[eval] wrote {shot_dir / 'results.json'}", file=sys.stderr)
    return 0


def _mask_id(path: Path | None, sha256_file) -> dict[str, Any] | None:
    return None if path is None else {"path": str(path), "sha256": sha256_file(path)}
