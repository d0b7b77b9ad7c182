"""`run.py all` (the whole study in order) and `run.py report` (report.md and figures from a run)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_model_args, add_out_arg, add_plan_args, example
    from tasks.cli_options import add_task_args

    p = sub.add_parser(
        "all", help="the whole study in one command (defaults: the embedded tiny OPT and the bundled samples)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluation, head importance, aggregate ranking, FFN oracle, head / FFN / grid pruning, "
                    "cross-task transfer, Spearman matrices, prefix matching, copying, capacity retained, the "
                    "synthetic copy task, then report.md. Every step is a run.py sub-command (listed in "
                    "OUT/commands.txt) and resumes on rerun.",
        epilog=example("python run.py all --out runs/tiny                # tiny OPT + bundled samples, < 5 min on 2 cores",
                       "python run.py all --model ~/ckpt/opt-1.3b --data ~/data --tasks copa rte wic --out runs/1.3b",
                       "python run.py all --random-weights opt-66b --device cuda:0 --data ~/data --plan   # cost first"))
    add_model_args(p)
    add_task_args(p, tasks_required=False, limit=False)
    p.add_argument("--limit", type=int, default=None,
                   help="eval docs per task after the seed-42 shuffle (default: 8 with the tiny defaults, else all)")
    p.add_argument("--n-docs", type=int, default=None,
                   help="importance docs per task (default: 16 with the tiny defaults, else 2500 as the paper)")
    p.add_argument("--seeds", type=int, default=None,
                   help="induction seeds (default: 8 with the tiny defaults, else 100 as the paper)")
    p.add_argument("--eval-seed", type=int, default=None, metavar="N",
                   help="seed of the eval docs' shuffle and few-shot demos in every evaluating step (eval, FFN oracle, "
                        "sweeps, transfer; default 42, lm-eval's)")
    p.add_argument("--importance-seed", type=int, default=None, metavar="N",
                   help="seed of head importance's few-shot demos (default 1234, the paper's code)")
    p.add_argument("--sequence-seed", type=int, default=None, metavar="N",
                   help="first seed of the random token sequences of prefix matching, copying and the copy task "
                        "(default 0, the paper's)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="all three seeds at once (--eval-seed, --importance-seed, --sequence-seed; a role-named "
                        "one given beside it wins)")
    p.add_argument("--batch-tokens", type=int, default=None, metavar="N",
                   help="token budget per scoring batch of every evaluating step (default: with --max-memory "
                        "budgets on accelerators, the largest batch whose activations fit beside the weights, "
                        "said on stderr; else 4096)")
    add_out_arg(p, "run directory")
    add_plan_args(p, "all")
    p.set_defaults(func=_all)

    r = sub.add_parser("report", help="write report.md and the figures of a finished (or partial) run",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=example("python run.py report --out runs/tiny"))
    add_out_arg(r, "run directory written by `run.py all`; report.md and figures/ are written there")
    r.add_argument("--run", dest="out", type=Path, help=argparse.SUPPRESS)  # the old spelling of --out
    r.set_defaults(func=_report)


def all_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill `all`'s size options: small with the tiny defaults (the embedded OPT on the bundled
    samples, a few dozen records per split), the paper's otherwise. Used by the run and by --plan."""
    from tasks.cli_options import SAMPLES_DIR

    tiny = args.model is None and Path(args.data).resolve() == SAMPLES_DIR and getattr(args, "random_weights", None) is None
    # The tiny defaults keep `all` under 5 minutes on 2 CPU cores (measured: 2 min 24 s to 3 min 19 s); ReCoRD's long
    # candidate continuations are half of every evaluation's cost there.
    defaults = {"limit": 8, "n_docs": 16, "seeds": 8} if tiny else {"limit": None, "n_docs": 2500, "seeds": 100}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("limit", "n_docs", "seeds", "batch_tokens"):
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    for key in ("seed", "eval_seed", "importance_seed", "sequence_seed"):  # checked before any step runs
        value = getattr(args, key, None)
        if value is not None and value < 0:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 0 (numpy's default_rng seeds the induction "
                             f"sequences), got {value}")
    fit_to_budgets(args)
    return args


def _budgets(args: argparse.Namespace) -> dict[str, int]:
    from opt66b.placement import parse_max_memory

    if not getattr(args, "max_memory", None):
        return {}
    return {d: b for d, b in parse_max_memory(args.max_memory).items() if not d.startswith("cpu")}


def fit_to_budgets(args: argparse.Namespace) -> None:
    """With --max-memory budgets on accelerators, what `all` chooses when not told (said on stderr):
    --batch-tokens, the largest scoring batch whose worst-case activations fit beside the weights the
    placement puts there (study/plan.py's rule, so `--plan` shows it fitting); None (each step's
    default, 4096) without budgets. --backward layerwise, when a full-length example's ordinary backward
    would not fit beside the weights, or when layers stream (then it is what runs; said explicitly, the
    placement the plan's reserve settles on cannot flip it)."""
    import sys
    from dataclasses import replace

    from opt66b.placement import GIB

    from .plan import fit_batch_tokens, full_backward_fits
    from .plan_cli import model_shape

    budgets = _budgets(args)
    if not budgets:
        return
    shape, _, info = model_shape(args)
    fitting = shape
    if shape.streamed:
        # Layers stream anyway: every pass copies the streamed layers to the GPU, so the transfers, not
        # the FLOPs, set the time, and they fall with the number of passes. The batch is fitted beside
        # the head group and the two stream buffers alone; the plan's reserve (plan_cli.fit_reserve)
        # then streams as many more layers as its activations need.
        from opt66b.placement import head_params

        compute = info["compute"]
        lean = {d: b for d, b in shape.weights_on.items() if d != compute}
        lean[compute] = 2 * max(shape.streamed.values()) + (head_params(shape.cfg) * shape.dtype_bytes
                                                            if shape.head == compute else 0)
        fitting = replace(shape, weights_on=lean)
    fitted = fit_batch_tokens(fitting, budgets) if getattr(args, "batch_tokens", None) is None else None
    if fitted is not None:
        args.batch_tokens, fits = fitted
        room = ", ".join(f"{d} {(budgets[d] - fitting.weights_on.get(d, 0)) / GIB:.1f} GiB" for d in budgets)
        print(f"[all] --batch-tokens {args.batch_tokens}: " + ("the largest scoring batch whose activations fit beside the "
              "weights" if fits else "the smallest batch, and even it does not fit beside the weights: give the "
              "device map more room (a lower --max-memory for the GPU streams more layers)")
              + (" and the stream buffers (layers stream: fewer, larger passes copy fewer weights)"
                 if shape.streamed else "") + f" ({room} left; give --batch-tokens to choose)", file=sys.stderr)
    # head importance: an example may be as long as the model's positions; if its ordinary backward would
    # not fit, every importance step takes the bounded layer-wise one (recorded in each file's metadata)
    if getattr(args, "backward", None) is None and (shape.streamed or
                                                    not full_backward_fits(shape, budgets, shape.cfg.max_positions)):
        args.backward = "layerwise"
        why = ("layers stream" if shape.streamed else
               f"a {shape.cfg.max_positions}-token example's full backward would not fit beside the weights")
        print(f"[all] head importance takes the layer-wise backward: {why} (one layer's graph at a time instead)",
              file=sys.stderr)


def _all(args: argparse.Namespace) -> int:
    from .pipeline import run_all

    return run_all(all_defaults(args))


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.out))
    return 0
