"""Pruning-study sub-commands of run.py: `importance heads|ffn` and `prune heads|ffn|grid` (defined here);
`correlate` lives in correlate_cli.py. The handlers only parse, load and call prune/experiments.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from .correlate_cli import register_correlate
from .export_cli import register_export


def register(sub: argparse._SubParsersAction) -> None:
    register_importance(sub)
    register_prune(sub)
    register_correlate(sub)
    register_export(sub)


# -- shared options ---------------------------------------------------------------------------------
def _study_args(p: argparse.ArgumentParser, evaluates: bool) -> None:
    """Model, task, output and plan options of an importance or prune step (the shared grammar)."""
    from opt66b.cli_options import add_model_args, add_out_arg

    from tasks.cli_options import add_task_args

    add_model_args(p)
    add_task_args(p, limit=evaluates)
    add_out_arg(p, "output directory (finished units are skipped on rerun)")


def _eval_seed_arg(p: argparse.ArgumentParser) -> None:
    from opt66b.cli_options import add_seed_arg

    add_seed_arg(p, 42, "eval doc shuffle and few-shot demo sampling seed (lm-eval's, as `run.py eval`)")


def _validate(args: argparse.Namespace) -> None:
    from tasks.registry import check_task_args

    check_task_args(args.tasks, args.shots, getattr(args, "limit", None))
    if not args.data.is_dir():
        raise FileNotFoundError(f"{args.data}: data directory not found")


def _recompute(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "recompute", False))


# -- importance ---------------------------------------------------------------------------------------
def register_importance(sub: argparse._SubParsersAction) -> None:
    from opt66b.cli_options import add_plan_args, add_seed_arg, example

    p = sub.add_parser("importance", help="head importance (gradients) or oracle FFN importance (knockouts)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Importance scores for the pruning study (docs/method.md).",
                       epilog=example("python run.py importance heads --tasks copa --shots 0 --n-docs 50 "
                                      "--out runs/tiny/importance",
                                      "python run.py importance ffn --tasks copa --shots 0 --out runs/tiny/ffn"))
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    h = kinds.add_parser(
        "heads", help="gradient-based head importance per task and shot",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One forward+backward per training example on [prompt; gold continuation], loss = mean "
                    "NLL of the continuation; IS[l,h] = sum over positions of |a . dL/da| / sum(N_e - 1) "
                    "(the paper's code: last layer / sum(Y_e)). Writes OUT/shots-K/{task}.safetensors with tensors "
                    "'importance_paper_denominator' (L, H), 'importance_uniform' (every layer over sum(N_e - 1)) "
                    "and 'importance', the ranking later steps read (uniform; the paper's with --protocol paper), "
                    "and OUT/shots-K/aggregate.safetensors: the mean over the seen tasks whose files exist (the "
                    "paper's 14 by default; mathqa and lambada are unseen), recording its members. Resumable "
                    "per (task, shot).",
        epilog=example("python run.py importance heads --model ~/ckpt/opt-1.3b --data ~/data "
                       "--tasks copa rte --shots 0 1 5 --n-docs 2500 --out runs/1.3b/importance",
                       "python run.py importance heads --random-weights opt-66b --device cuda:0 --data ~/data "
                       "--tasks copa --n-docs 2500 --plan --throughput 400"))
    _study_args(h, evaluates=False)
    h.add_argument("--n-docs", type=int, default=2500, help="first N docs of the importance split (default: 2500)")
    add_seed_arg(h, 1234, "few-shot demo sampler seed (the paper's)")
    h.add_argument("--max-length", type=int, default=None,
                   help="left-truncate examples to this many model inputs (default: the model's max positions)")
    h.add_argument("--normalize-per-layer", action="store_true",
                   help="divide each layer's scores by their L2 norm (Michel et al.; the paper does not)")
    h.add_argument("--seen-tasks", nargs="+", default=None,
                   help="tasks the aggregate averages, when their files exist (default: the paper's 14; "
                        "mathqa and lambada are unseen)")
    h.add_argument("--update-aggregate", action="store_true",
                   help="replace an existing aggregate whose member tasks or files changed (default: refuse)")
    h.add_argument("--backward", choices=["auto", "full", "layerwise"], default="auto",
                   help="full: one autograd backward keeping every layer's activations; layerwise: one layer's "
                        "graph at a time from saved layer inputs (bounded memory, one extra forward; `all` picks "
                        "it when the full backward would not fit); auto (default): layerwise with streamed layers")
    add_plan_args(h, "importance heads")
    h.set_defaults(func=_importance_heads)

    f = kinds.add_parser(
        "ffn", help="oracle FFN importance: metric drop with each FFN knocked out alone",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For every layer l, task and shot: base metric - metric with FFN l alone removed, on the "
                    "evaluation split (points of the primary metric). Layers before l are not recomputed "
                    "(their recorded outputs are reused). Units OUT/shots-K/{task}/layer-XXX.json; merged "
                    "OUT/shots-K/{task}.json with 'drop', 'base' and 'ranking' (ascending, stable); "
                    "OUT/shots-K/aggregate.json ranks the mean drop over tasks.",
        epilog=example("python run.py importance ffn --model ~/ckpt/opt-1.3b --data ~/data "
                       "--tasks copa rte --shots 0 1 5 --out runs/1.3b/ffn"))
    _study_args(f, evaluates=True)
    _eval_seed_arg(f)
    f.add_argument("--naive", action="store_true", help="re-run every layer for every knockout (reference; slower)")
    f.add_argument("--oracle-memory", type=float, default=None, metavar="GIB",
                   help="host memory the recorded layer inputs may take at once; the base run and the knock-outs "
                        "then go through the task that many scoring batches at a time, with identical results "
                        "(default: a quarter of --max-memory's cpu entry, else 2 GiB)")
    add_plan_args(f, "importance ffn")
    f.set_defaults(func=_importance_ffn)


def oracle_budget(args: argparse.Namespace) -> int:
    """Bytes of recorded layer inputs the FFN oracle may hold (--oracle-memory, else from --max-memory)."""
    from opt66b.placement import GIB, parse_max_memory

    if getattr(args, "oracle_memory", None) is not None:
        if args.oracle_memory <= 0:
            raise ValueError(f"--oracle-memory must be > 0 GiB, got {args.oracle_memory}")
        return int(args.oracle_memory * GIB)
    cpu = parse_max_memory(getattr(args, "max_memory", None)).get("cpu")
    return cpu // 4 if cpu else 2 * GIB


def _importance_heads(args: argparse.Namespace, loaded=None) -> int:
    from opt66b.runtime import load_from_args
    from tasks.registry import check_task_args

    from .experiments import run_head_importance
    from .masks import DENOMINATOR_BY_PROTOCOL

    _validate(args)
    if args.seen_tasks:
        check_task_args(args.seen_tasks, args.shots)
    if args.n_docs < 1:
        raise ValueError(f"--n-docs must be >= 1, got {args.n_docs}")
    model, tokenizer, info = loaded or load_from_args(args)
    args.work = run_head_importance(model, tokenizer, info, args.data, args.tasks, args.shots, args.out, n_docs=args.n_docs,
                        seed=args.seed, max_length=args.max_length, normalize_per_layer=args.normalize_per_layer,
                        paper_quirks=args.paper_quirks, denominator=DENOMINATOR_BY_PROTOCOL[args.protocol],
                        seen_tasks=args.seen_tasks, layerwise_backward=args.backward == "layerwise",
                        update_aggregate=args.update_aggregate, recompute=_recompute(args))["work"]
    return 0


def _importance_ffn(args: argparse.Namespace, loaded=None) -> int:
    from opt66b.runtime import load_from_args

    from .experiments import run_ffn_oracle

    _validate(args)
    budget = oracle_budget(args)
    model, tokenizer, info = loaded or load_from_args(args)
    args.work = run_ffn_oracle(model, tokenizer, info, args.data, args.tasks, args.shots, args.out, limit=args.limit,
                   seed=args.seed, batch_tokens=args.batch_tokens, cached=not args.naive, paper_quirks=args.paper_quirks,
                   record_budget=budget, recompute=_recompute(args))["work"]
    return 0


# -- prune --------------------------------------------------------------------------------------------
def register_prune(sub: argparse._SubParsersAction) -> None:
    from opt66b.cli_options import add_plan_args, example

    p = sub.add_parser(
        "prune", help="pruning sweeps: heads, FFNs or the combined grid, from any ranking",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate every task and shot with the lowest-ranked p% of heads (global ranking, "
                    "floor(p*L*H/100)) and/or FFNs (floor(p*L/100)) masked. heads/ffn: 0..90% in 10% steps; "
                    "grid: heads 0..70% x FFNs 0..50%, each mask from its own ranking. --ranking own uses "
                    "each task's ranking, 'aggregate' the mean over tasks, a task name that task's "
                    "(cross-task transfer, e.g. to mathqa or lambada). One unit file per evaluation under "
                    "OUT/{sweep}-{ranking}/, skipped on rerun; table OUT/{sweep}-{ranking}.json.",
        epilog=example("python run.py prune heads --ranking own --importance runs/1.3b/importance "
                       "--model ~/ckpt/opt-1.3b --data ~/data --tasks copa rte --shots 0 1 5 --out runs/1.3b/prune"))
    p.add_argument("sweep", choices=["heads", "ffn", "grid", "transfer"],
                   help="what to prune; transfer: the paper's cross-task protocol (chosen tasks pruned with the "
                        "rankings of their highest- and lowest-correlated seen tasks, docs/protocol.md)")
    _study_args(p, evaluates=True)
    _eval_seed_arg(p)
    p.add_argument("--ranking", default="own", help="own | aggregate | TASK (default: own)")
    p.add_argument("--importance", type=Path, default=None, help="output dir of `run.py importance heads`")
    p.add_argument("--ffn-importance", type=Path, default=None, help="output dir of `run.py importance ffn`")
    p.add_argument("--head-percents", type=float, nargs="+", default=None,
                   help="head percentages (default: 0..90 step 10; grid 0..70)")
    p.add_argument("--ffn-percents", type=float, nargs="+", default=None,
                   help="FFN percentages (default: 0..90 step 10; grid 0..50)")
    p.add_argument("--correlations", type=Path, default=None,
                   help="transfer: correlations.json of `run.py correlate` (the partners are read from it)")
    p.add_argument("--transfer-tasks", nargs="+", default=["copa", "winogrande", "record"],
                   help="transfer: the tasks pruned with their partners' rankings (default: the paper's copa "
                        "winogrande record; a task without importance is replaced as docs/protocol.md says)")
    p.add_argument("--partners", nargs="+", choices=["paper", "argsort", "spearman"], default=None,
                   help="transfer: how partners are chosen: paper = the paper's published pairs, argsort = its SRCC "
                        "(Pearson of argsort vectors), spearman = the true Spearman rho (default: paper argsort "
                        "with --protocol paper, spearman argsort otherwise)")
    add_plan_args(p, "prune")
    p.set_defaults(func=_prune)


def _prune(args: argparse.Namespace, loaded=None) -> int:
    from opt66b.runtime import load_from_args
    from tasks.registry import ALL_TASKS

    from .experiments import run_prune_sweep

    _validate(args)
    if args.ranking not in ("own", "aggregate") and args.ranking not in ALL_TASKS:
        raise KeyError(f"--ranking must be own, aggregate or a task name ({', '.join(ALL_TASKS)}); "
                       f"got {args.ranking!r}")
    for name, vals in (("--head-percents", args.head_percents), ("--ffn-percents", args.ffn_percents)):
        if vals is not None and any(not 0 <= v <= 100 for v in vals):
            raise ValueError(f"{name} must be in [0, 100], got {vals}")
    if args.sweep == "transfer":
        return _transfer(args, loaded)
    if args.sweep in ("heads", "grid") and args.importance is None:
        raise ValueError(f"prune {args.sweep} needs --importance DIR (from `run.py importance heads`)")
    if args.sweep in ("ffn", "grid") and args.ffn_importance is None:
        raise ValueError(f"prune {args.sweep} needs --ffn-importance DIR (from `run.py importance ffn`)")
    model, tokenizer, info = loaded or load_from_args(args)
    res = run_prune_sweep(model, tokenizer, info, args.data, args.tasks, args.shots, args.out, sweep=args.sweep,
                          ranking=args.ranking, importance=args.importance, ffn_importance=args.ffn_importance,
                          head_percents=args.head_percents, ffn_percents=args.ffn_percents, limit=args.limit,
                          seed=args.seed, batch_tokens=args.batch_tokens, paper_quirks=args.paper_quirks, recompute=_recompute(args),
                          cache=getattr(args, "evaluation_cache", None))
    args.work = res["work"]
    print(res["table"])
    return 0


def _transfer(args: argparse.Namespace, loaded=None) -> int:
    from opt66b.io import read_json
    from opt66b.runtime import load_from_args

    from .experiments import run_transfer_study

    if args.correlations is None or args.importance is None:
        raise ValueError("prune transfer needs --correlations FILE (from `run.py correlate`) and --importance DIR")
    if not args.correlations.is_file():
        raise FileNotFoundError(f"{args.correlations}: not found; run `run.py correlate` first")
    corr = read_json(args.correlations)
    model, tokenizer, info = loaded or load_from_args(args)
    res = run_transfer_study(model, tokenizer, info, args.data, args.tasks, args.shots, args.out, correlations=corr,
                             importance=args.importance, transfer_tasks=args.transfer_tasks,
                             head_percents=args.head_percents, limit=args.limit, seed=args.seed,
                             batch_tokens=args.batch_tokens, paper_quirks=args.paper_quirks, partners=args.partners,
                             recompute=_recompute(args), cache=getattr(args, "evaluation_cache", None))
    args.work = res["work"]
    if res["table"] is not None:  # torchrun: rank 0 writes the table
        print(res["table"])
    return 0
