"""Task sub-commands of run.py: `data check` (tasks/data_check.py), `data fetch` (tasks/fetch.py) and `eval`
(tasks/evaluate.py). Only the grammar lives here (argparse, no torch: `run.py --help` stays instant); each command
names the settings class of its step, which checks and runs it."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    register_data(sub)
    register_eval(sub)


def register_data(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_json_arg, example

    from .cli_options import add_data_arg

    p = sub.add_parser(
        "data", help="check a data directory, or fetch the datasets from the Hugging Face hub",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Data utilities. `check` reads every task's files under --data and reports, per task and split, "
                    "the file used, record counts against the published counts, fallbacks and what each missing "
                    "split blocks. `fetch` builds a data directory from the hub (needs `pip install -e \".[data]\"`; "
                    "the only command that downloads).",
        epilog=example("python run.py data check --data ~/data",
                       "python run.py data fetch --out ~/data && python run.py data check --data ~/data"))
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser("check", help="per task and split: file, count, sha256, stand-ins, what is missing",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Reads every task's files under --data and reports, per task and split, the "
                                       "file used, its records against the published count (\"sample\" on the "
                                       "bundled samples), its sha256 (checked against DIR/SHA256SUMS when present), "
                                       "stand-ins and fallbacks, and what a missing split blocks.",
                           epilog=example("python run.py data check --data ~/data --tasks piqa mathqa --json report.json"))
    add_data_arg(c)
    c.add_argument("--tasks", nargs="+", default=None, help="task names (default: all 16)")
    add_json_arg(c, "the report")
    c.set_defaults(step="tasks.data_check:DataCheckSettings")
    f = actions.add_parser(
        "fetch", help="download the 16 datasets from the Hugging Face hub into --out, in the layout --data reads",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Each task's splits from the hub ids lm-evaluation-harness reads (tasks/fetch.py SOURCES), one "
                    "row per line with the hub's field names, as DIR/<task dir>/validation.jsonl (train.jsonl, "
                    "test.jsonl). A split the hub cannot give is named with where to get it by hand; files already "
                    "there are kept (--overwrite replaces them). Needs the optional `datasets` package: "
                    "pip install -e \".[data]\". The only command that downloads.",
        epilog=example("python run.py data fetch --out ~/data",
                       "python run.py data fetch --out ~/data --tasks copa rte --overwrite"))
    f.add_argument("--out", type=Path, default=None, metavar="DIR", help="the data directory to build (required)")
    f.add_argument("--tasks", nargs="+", default=None, help="task names (default: all 16)")
    f.add_argument("--overwrite", action="store_true", help="replace files already there")
    add_json_arg(f, "what was written")
    f.set_defaults(step="tasks.fetch:DataFetchSettings")


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
    p.set_defaults(step="tasks.evaluate:EvalSettings")
