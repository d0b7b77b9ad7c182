"""Pruning-study sub-commands of run.py: `importance heads|ffn` and `prune heads|ffn|grid` (defined here);
`correlate` lives in correlate_cli.py. The handlers only parse, load and call prune/experiments.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .correlate_cli import register_correlate
from .export_cli import register_export

if TYPE_CHECKING:
    from .settings import FFNOracleSettings, HeadImportanceSettings, PruneSettings


def register(sub: argparse._SubParsersAction) -> None:
    register_importance(sub)
    register_prune(sub)
    register_correlate(sub)
    register_export(sub)


# -- shared options ---------------------------------------------------------------------------------
def _study_args(p: argparse.ArgumentParser, evaluates: bool) -> None:
    """Model, task, output and plan options of an importance or prune step (the shared grammar)."""
    from opt66b.runs.options import add_model_args, add_out_arg

    from tasks.cli_options import add_task_args

    add_model_args(p)
    add_task_args(p, limit=evaluates)
    add_out_arg(p, "output directory (finished units are skipped on rerun)")


def _eval_seed_arg(p: argparse.ArgumentParser) -> None:
    from opt66b.runs.options import add_seed_arg

    add_seed_arg(p, 42, "eval doc shuffle and few-shot demo sampling seed (lm-eval's, as `run.py eval`)")


# -- importance ---------------------------------------------------------------------------------------
def register_importance(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_plan_args, add_seed_arg, example

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
                   help="memory the oracle's chunk may take at once: the recorded layer inputs on the host, or with "
                        "streamed layers the layer-order states on the compute device; the base run and the knock-outs "
                        "then go through the task that many scoring batches at a time, with identical results "
                        "(default: a quarter of --max-memory's entry for that device, else 2 GiB)")
    add_plan_args(f, "importance ffn")
    f.set_defaults(func=_importance_ffn)


def oracle_budget(args: Any, streams_to: str | None = None) -> int:
    """Bytes the FFN oracle's chunk (and, with streamed layers, a sweep's) may hold: --oracle-memory,
    else a quarter of --max-memory's entry for where the chunk lives (the host in batch order, the
    compute device `streams_to` in layer order), else 2 GiB (opt66b.layer_major.chunk_budget)."""
    from opt66b.layer_major import chunk_budget
    from opt66b.placement import GIB, parse_max_memory

    given = getattr(args, "oracle_memory", None)
    if given is not None:
        if given <= 0:
            raise ValueError(f"--oracle-memory must be > 0 GiB, got {given}")
        return int(given * GIB)
    return chunk_budget(parse_max_memory(getattr(args, "max_memory", None)), streams_to)


def _importance_heads(args: argparse.Namespace, loaded=None) -> int:
    from .settings import HeadImportanceSettings

    return HeadImportanceSettings.handle(args, loaded)


def _importance_ffn(args: argparse.Namespace, loaded=None) -> int:
    from .settings import FFNOracleSettings

    return FFNOracleSettings.handle(args, loaded)


def check_head_importance(s: "HeadImportanceSettings") -> None:
    from tasks.registry import check_task_args

    s.check_tasks()
    if s.seen_tasks:
        check_task_args(list(s.seen_tasks), list(s.shots))
    if s.n_docs < 1:
        raise ValueError(f"--n-docs must be >= 1, got {s.n_docs}")


def run_head_importance_step(s: "HeadImportanceSettings", loaded) -> dict[str, Any]:
    from opt66b.layer_major import streamed_compute

    from .experiments import run_head_importance
    from .masks import DENOMINATOR_BY_PROTOCOL

    check_head_importance(s)
    model, tokenizer, info = loaded
    work = run_head_importance(model, tokenizer, info, s.data, list(s.tasks), list(s.shots), s.out, n_docs=s.n_docs,
                               seed=s.seed, max_length=s.max_length, normalize_per_layer=s.normalize_per_layer,
                               paper_quirks=s.paper_quirks, denominator=DENOMINATOR_BY_PROTOCOL[s.protocol],
                               seen_tasks=list(s.seen_tasks) if s.seen_tasks else None,
                               layerwise_backward=s.backward == "layerwise", update_aggregate=s.update_aggregate,
                               recompute=s.recompute, chunk_budget=oracle_budget(s, streamed_compute(model)))["work"]
    return {"code": 0, "work": work}


def check_ffn_oracle(s: "FFNOracleSettings") -> None:
    s.check_tasks(s.limit)
    oracle_budget(s)


def run_ffn_oracle_step(s: "FFNOracleSettings", loaded) -> dict[str, Any]:
    from opt66b.layer_major import streamed_compute

    from .experiments import run_ffn_oracle

    check_ffn_oracle(s)
    model, tokenizer, info = loaded
    work = run_ffn_oracle(model, tokenizer, info, s.data, list(s.tasks), list(s.shots), s.out, limit=s.limit,
                          seed=s.seed, batch_tokens=s.batch_tokens, cached=not s.naive, paper_quirks=s.paper_quirks,
                          record_budget=oracle_budget(s, streamed_compute(model)), recompute=s.recompute)["work"]
    return {"code": 0, "work": work}


# -- prune --------------------------------------------------------------------------------------------
def register_prune(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_plan_args, example

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
    from .settings import PruneSettings

    return PruneSettings.handle(args, loaded)


def check_prune(s: "PruneSettings") -> None:
    from tasks.registry import ALL_TASKS

    s.check_tasks(s.limit)
    if s.ranking not in ("own", "aggregate") and s.ranking not in ALL_TASKS:
        raise KeyError(f"--ranking must be own, aggregate or a task name ({', '.join(ALL_TASKS)}); "
                       f"got {s.ranking!r}")
    for name, vals in (("--head-percents", s.head_percents), ("--ffn-percents", s.ffn_percents)):
        if vals is not None and any(not 0 <= v <= 100 for v in vals):
            raise ValueError(f"{name} must be in [0, 100], got {list(vals)}")
    if s.sweep == "transfer":
        if s.correlations is None or s.importance is None:
            raise ValueError("prune transfer needs --correlations FILE (from `run.py correlate`) and --importance DIR")
        if not Path(s.correlations).is_file():
            raise FileNotFoundError(f"{s.correlations}: not found; run `run.py correlate` first")
        return
    if s.sweep in ("heads", "grid") and s.importance is None:
        raise ValueError(f"prune {s.sweep} needs --importance DIR (from `run.py importance heads`)")
    if s.sweep in ("ffn", "grid") and s.ffn_importance is None:
        raise ValueError(f"prune {s.sweep} needs --ffn-importance DIR (from `run.py importance ffn`)")


def run_prune_step(s: "PruneSettings", loaded, cache=None) -> dict[str, Any]:
    """A sweep (or the transfer) on a loaded model; `cache`: evaluations earlier steps ran (run.py all)."""
    from opt66b.fileio import read_json
    from opt66b.layer_major import streamed_compute

    from .experiments import run_prune_sweep, run_transfer_study

    check_prune(s)
    model, tokenizer, info = loaded
    percents = None if s.head_percents is None else list(s.head_percents)
    common = dict(limit=s.limit, seed=s.seed, batch_tokens=s.batch_tokens, paper_quirks=s.paper_quirks,
                  recompute=s.recompute, cache=cache, chunk_budget=oracle_budget(s, streamed_compute(model)))
    if s.sweep == "transfer":
        res = run_transfer_study(model, tokenizer, info, s.data, list(s.tasks), list(s.shots), s.out,
                                 correlations=read_json(s.correlations), importance=s.importance,
                                 transfer_tasks=list(s.transfer_tasks), head_percents=percents,
                                 partners=list(s.partners) if s.partners else None, **common)
    else:
        res = run_prune_sweep(model, tokenizer, info, s.data, list(s.tasks), list(s.shots), s.out, sweep=s.sweep,
                              ranking=s.ranking, importance=s.importance, ffn_importance=s.ffn_importance,
                              head_percents=percents,
                              ffn_percents=None if s.ffn_percents is None else list(s.ffn_percents), **common)
    if res["table"] is not None:  # torchrun: rank 0 writes the table
        print(res["table"])
    return {"code": 0, "work": res["work"]}

