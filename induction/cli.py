"""Sub-commands of run.py for the task-agnostic study: `induction prefix`, `induction copying`,
`induction capacity` (docs/method.md, "Induction heads"). Heavy imports happen inside the handlers, which only
parse, load and call induction/experiments.py and induction/capacity.py."""

from __future__ import annotations

import argparse
from pathlib import Path

VARIANT_CHOICES = ("paper", "corrected", "index_fix", "text", "residual", "both", "all")


def register(sub: argparse._SubParsersAction) -> None:
    from opt66b.runs.options import add_out_arg, example

    p = sub.add_parser("induction", help="task-agnostic head scores: prefix matching, copying, capacity retained",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Prefix-matching and copying scores per head on random token sequences, "
                                   "and the share of them kept under head pruning.",
                       epilog=example("python run.py induction prefix --seeds 8 --out runs/tiny/induction"))
    inner = p.add_subparsers(dest="induction_command", metavar="STEP", required=True)
    _register_scores(inner, "prefix", "prefix-matching score per head (BOS + 4 repeats of 25+2s distinct tokens)",
                     "python run.py induction prefix --model ~/ckpt/opt-1.3b --seeds 100 --out runs/opt-1.3b/induction",
                     "python run.py induction prefix --random-weights opt-66b --device cuda:0 --plan --throughput 400")
    c = _register_scores(inner, "copying", "copying score per head (BOS + 4(25+2s) distinct tokens)",
                         "python run.py induction copying --model ~/ckpt/opt-1.3b --seeds 100 --out runs/opt-1.3b/induction")
    c.add_argument("--head-chunk", type=int, default=8, help="heads scored at once (bounds memory; default 8)")
    k = inner.add_parser(
        "capacity", help="percent of total prefix/copying score kept as heads are pruned least-important-first",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For every SCORES/{prefix_matching,copying}_{variant}.safetensors and every "
                    "IMPORTANCE/shots-K/{task,aggregate}.safetensors, write the retained-score curve at every "
                    "head count to OUT/capacity.safetensors (keys 'score|shots-K/name', plus 'x', the expected "
                    "random line 'score|random_expected' and seeded random orders) and a 10%-step table to "
                    "OUT/capacity.json.",
        epilog=example("python run.py induction capacity --scores runs/tiny/induction "
                       "--importance runs/tiny/importance --out runs/tiny/capacity"))
    k.add_argument("--scores", type=Path, required=True, help="directory written by `induction prefix`/`copying`")
    k.add_argument("--importance", type=Path, required=True, help="directory with shots-K/*.safetensors")
    add_out_arg(k)
    k.add_argument("--random-seeds", type=int, nargs="*", default=[0],
                   help="seeds of random pruning orders to add (default: 0)")
    k.set_defaults(func=_capacity)


def _register_scores(inner: argparse._SubParsersAction, name: str, help_text: str, *examples: str):
    from opt66b.runs.options import add_model_args, add_out_arg, add_plan_args, example

    p = inner.add_parser(
        name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"{help_text}. Seeds 0..N-1, one sequence per seed drawn by numpy default_rng(seed) "
                    "from merge ranks [4%%, 96%%); writes OUT/seeds/* per seed (resumable), "
                    f"OUT/{'prefix_matching' if name == 'prefix' else 'copying'}_{{variant}}.safetensors "
                    "(mean, var, scores, tokens, lengths, seeds) and a JSON summary with the top heads.",
        epilog=example(*examples))
    add_model_args(p)
    p.add_argument("--seeds", type=int, default=100, help="number of seeds (default: 100, as the paper)")
    p.add_argument("--seed", "--first-seed", dest="first_seed", type=int, default=0,
                   help="first seed: sequences of seeds SEED..SEED+N-1 (default: 0, as the paper; "
                        "--first-seed is the old spelling)")
    p.add_argument("--variant", choices=VARIANT_CHOICES, default="all",
                   help="which score(s). prefix: paper, corrected. copying: paper (its code), index_fix (the code "
                        "read at the attended position), text (its Appendix A.8 text: direct path, the attended "
                        "token's OV, logits), residual (the real forward pass, an extension; 'corrected' is its "
                        "old name). both = paper + corrected (prefix) or paper + text (copying); all (default)")
    add_out_arg(p)
    p.add_argument("--exclude-ratio", type=float, default=0.04,
                   help="fraction of most and of least frequent merges left out of the pool (default: 0.04)")
    p.add_argument("--start-length", type=int, default=25, help="base length of seed 0 (default: 25)")
    p.add_argument("--length-step", type=int, default=2, help="base length increase per seed (default: 2)")
    p.add_argument("--top", type=int, default=20, help="heads listed in the JSON summary (default: 20)")
    add_plan_args(p, f"induction {name}")
    p.set_defaults(func=_scores, kind=name)
    return p


def selected_variants(kind: str, variant: str) -> list[str]:
    """The score variants --variant asks for: "all" = every variant of the score, "both" = the paper's
    code and its correction (prefix: corrected; copying: text); index_fix, text and residual exist for
    copying only (ValueError otherwise). Copying's old "corrected" means "residual" (with a notice)."""
    import sys

    from .copying import RENAMED
    from .copying import VARIANTS as COPYING_VARIANTS
    from .prefix_matching import VARIANTS as PREFIX_VARIANTS

    if kind != "prefix" and variant in RENAMED:
        print(f"note: copying variant '{variant}' is now called '{RENAMED[variant]}'", file=sys.stderr)
        variant = RENAMED[variant]
    available = list(PREFIX_VARIANTS if kind == "prefix" else COPYING_VARIANTS)
    both = ["paper", "corrected"] if kind == "prefix" else ["paper", "text"]
    variants = {"all": available, "both": both}.get(variant, [variant])
    if any(v not in available for v in variants):
        raise ValueError(f"--variant {variant} does not exist for `induction {kind}`; "
                         f"choose from {', '.join(available)}, both or all")
    return variants


def _scores(args: argparse.Namespace, loaded=None) -> int:
    from .settings import CopyingSettings, PrefixSettings

    return (PrefixSettings if args.kind == "prefix" else CopyingSettings).handle(args, loaded)


def check_scores(s) -> list[str]:
    """The variants ScoreSettings `s` asks for, after checking its values."""
    if s.seeds < 1 or s.first_seed < 0:
        raise ValueError(f"--seeds must be >= 1 and --seed >= 0, got {s.seeds} and {s.first_seed}")
    return selected_variants(s.kind, s.variant)


def run_scores_step(s, loaded) -> dict:
    """Prefix matching or copying scores of ScoreSettings `s` on a loaded model; prints the top heads."""
    import torch

    from .experiments import run_copying, run_prefix_matching

    variants = check_scores(s)
    model, tokenizer, info = loaded
    common = dict(seeds=s.seeds, first_seed=s.first_seed, variants=variants, exclude_ratio=s.exclude_ratio,
                  start_length=s.start_length, length_step=s.length_step, top=s.top, recompute=s.recompute)
    if s.kind == "prefix":
        kind, res = "prefix_matching", run_prefix_matching(model, tokenizer, info, s.out, **common)
    else:
        kind, res = "copying", run_copying(model, tokenizer, info, s.out, head_chunk=s.head_chunk, **common)
    heads = model.config.num_heads
    for v, scores in res["summary"].items():
        flat = int(torch.argmax(scores["mean"]))
        print(f"{kind} {v}: top head layer {flat // heads} head {flat % heads} "
              f"score {float(scores['mean'].flatten()[flat]):.4f} -> {s.out}/{kind}_{v}.json")
    return {"code": 0, "work": res["work"]}


def _capacity(args: argparse.Namespace) -> int:
    from .settings import CapacitySettings

    return CapacitySettings.handle(args)


def run_capacity_step(s) -> dict:
    from .capacity import run_capacity

    run_capacity(s.scores, s.importance, s.out, random_seeds=list(s.random_seeds))
    print(f"capacity curves -> {s.out}/capacity.safetensors, {s.out}/capacity.json")
    return {"code": 0, "work": None}
