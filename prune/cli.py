"""Pruning-study sub-commands of run.py: `importance heads|ffn`, `prune heads|ffn|grid|transfer`, `correlate`
(and `export-pruned`, prune/export_cli.py). Only the grammar lives here (argparse, no torch); each command
names the settings class of its step (prune/importance.py, oracle.py, sweeps.py, correlate.py), which checks
and runs it."""

from __future__ import annotations

import argparse
from pathlib import Path


from .export_cli import register_export


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
    from opt66b.runs.options import example

    p = sub.add_parser("importance", help="head importance (gradients) or oracle FFN importance (knockouts)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Importance scores for the pruning study (docs/method.md).",
                       epilog=example("python run.py importance heads --tasks copa --shots 0 --n-docs 50 "
                                      "--out runs/tiny/importance",
                                      "python run.py importance ffn --tasks copa --shots 0 --out runs/tiny/ffn"))
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    _register_heads(kinds)
    _register_ffn(kinds)


def _register_heads(kinds: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_plan_args, add_seed_arg, example

    h = kinds.add_parser(
        "heads", help="gradient-based head importance per task and shot",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One forward+backward per training example on [prompt; gold continuation], loss = mean "
                    "NLL of the continuation; IS[l,h] = sum over positions of |a . dL/da| / sum(N_e - 1) "
                    "(the paper's released code: last layer / sum(Y_e)). Writes OUT/shots-K/{task}.safetensors with tensors "
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
    h.set_defaults(step="prune.importance:HeadImportanceSettings")



def _register_ffn(kinds: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_plan_args, example

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
    f.set_defaults(step="prune.oracle:FFNOracleSettings")


# -- prune --------------------------------------------------------------------------------------------
def register_prune(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_plan_args, example

    p = sub.add_parser(
        "prune", help="pruning sweeps: heads, FFNs or the combined grid from any ranking; the transfer study",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate every task and shot with the lowest-ranked p% of heads (global ranking, "
                    "floor(p*L*H/100)) and/or FFNs (floor(p*L/100)) masked (heads, ffn, grid), or the paper's "
                    "cross-task transfer (transfer).",
        epilog=example("python run.py prune heads --ranking own --importance runs/1.3b/importance "
                       "--model ~/ckpt/opt-1.3b --data ~/data --tasks copa rte --shots 0 1 5 --out runs/1.3b/prune"))
    sweeps = p.add_subparsers(dest="sweep", metavar="SWEEP", required=True)
    for name, what in (("heads", "heads 0..90% in 10% steps"), ("ffn", "FFNs 0..90% in 10% steps"),
                       ("grid", "heads 0..80% x FFNs 0..50%, each mask from its own ranking (the paper's released code: heads to 70%; 80% lets 70% be a knee)")):
        q = sweeps.add_parser(
            name, help=what.replace("%", "%%"), formatter_class=argparse.RawDescriptionHelpFormatter,
            description=f"{what}. --ranking own uses each task's ranking, 'aggregate' the mean over the seen tasks, "
                        "a task name that task's (cross-task transfer, e.g. to mathqa or lambada). One unit file "
                        "per evaluation under OUT/{sweep}-{ranking}/, skipped on rerun; table OUT/{sweep}-{ranking}.json.",
            epilog=example(f"python run.py prune {name} --importance runs/tiny/importance --ffn-importance "
                           f"runs/tiny/ffn --tasks copa --out runs/tiny/prune"))
        _sweep_args(q)
        q.add_argument("--ranking", default="own", help="own | aggregate | TASK (default: own)")
        q.add_argument("--ffn-importance", type=Path, default=None, help="output dir of `run.py importance ffn`")
        q.add_argument("--ffn-percents", type=float, nargs="+", default=None,
                       help="FFN percentages (default: 0..90 step 10; grid 0..50)")
        add_plan_args(q, "prune")
        q.set_defaults(step="prune.sweeps:PruneSettings")
    t = sweeps.add_parser(
        "transfer", help="the paper's cross-task transfer: chosen tasks pruned with their partners' rankings",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The chosen tasks (the paper's COPA, Winogrande, ReCoRD) pruned with the head rankings of their "
                    "highest- and lowest-correlated seen tasks (docs/protocol.md); writes OUT/transfer.json.",
        epilog=example("python run.py prune transfer --correlations runs/tiny/correlate/correlations.json "
                       "--importance runs/tiny/importance --out runs/tiny/prune"))
    _sweep_args(t)
    t.add_argument("--correlations", type=Path, default=None,
                   help="correlations.json of `run.py correlate` (the partners are read from it)")
    t.add_argument("--transfer-tasks", nargs="+", default=["copa", "winogrande", "record"],
                   help="the tasks pruned with their partners' rankings (default: the paper's copa winogrande record; "
                        "a task without importance is replaced as docs/protocol.md says)")
    t.add_argument("--partners", nargs="+", choices=["paper", "argsort", "spearman"], default=None,
                   help="how partners are chosen: paper = the paper's published pairs, argsort = its SRCC (Pearson of "
                        "argsort vectors), spearman = the true Spearman rho (default: paper argsort with --protocol "
                        "paper, spearman argsort otherwise)")
    add_plan_args(t, "prune")
    t.set_defaults(step="prune.transfer:TransferSettings")


def _sweep_args(p: argparse.ArgumentParser) -> None:
    """What every sweep takes: the model, task and output options, the eval seed, the head ranking's files."""
    _study_args(p, evaluates=True)
    _eval_seed_arg(p)
    p.add_argument("--importance", type=Path, default=None, help="output dir of `run.py importance heads`")
    p.add_argument("--head-percents", type=float, nargs="+", default=None,
                   help="head percentages (default: 0..90 step 10; grid 0..80; transfer 0 10 30 50 70 90)")


def register_correlate(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_out_arg, example

    p = sub.add_parser(
        "correlate", help="Spearman correlations between head-importance rankings (tasks, aggregate, shots)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read IMPORTANCE/shots-K/{task,aggregate}.safetensors (from `run.py importance heads`) "
                    "and write OUT/correlations.json: per shot the task x task true Spearman rho and p "
                    "(average ranks for ties, t-test with n-2 df), the paper's argsort-Pearson variant "
                    "(labelled paper_argsort_pearson), the top-30% head overlap, every task against the "
                    "aggregate, and every task across shots (0v1, 0v5, 1v5) with mean and variance.",
        epilog=example("python run.py correlate --importance runs/tiny/importance --out runs/tiny/correlate"))
    p.add_argument("--importance", type=Path, required=True, help="directory with shots-K/*.safetensors")
    add_out_arg(p, "output directory (correlations.json is written there)")
    p.add_argument("--shots", type=int, nargs="+", default=None, help="shot counts to use (default: all found)")
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to use (default: all found)")
    p.add_argument("--top-fraction", type=float, default=0.3,
                   help="fraction of most important heads for the overlap (default: 0.3)")
    p.add_argument("--compare-importance", type=Path, default=None, metavar="DIR",
                   help="importance of some tasks under the other protocol's targets (`run.py all` writes "
                        "OUT/importance-paper or -corrected): adds how far each ranking and the aggregate move")
    p.set_defaults(step="prune.correlate:CorrelateSettings")
