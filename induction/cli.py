"""Sub-commands of run.py for the task-agnostic study: `induction prefix`, `induction copying`,
`induction capacity` (docs/method.md, "Induction heads"). Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse
from pathlib import Path

VARIANT_CHOICES = ("paper", "corrected", "index_fix", "both", "all")


def register(sub: argparse._SubParsersAction) -> None:
    from opt66b.cli_options import add_out_arg, example

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
    from opt66b.cli_options import add_model_args, add_out_arg, add_plan_args, example

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
                   help="which score(s): paper, corrected, index_fix (copying only: the paper's computation read "
                        "at the attended position), both (paper and corrected) or all (default: all)")
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
    """The score variants --variant asks for: "all" = every variant of the score, "both" = paper and
    corrected; index_fix exists for copying only (ValueError otherwise)."""
    from .copying import VARIANTS as COPYING_VARIANTS
    from .prefix_matching import VARIANTS as PREFIX_VARIANTS

    available = list(PREFIX_VARIANTS if kind == "prefix" else COPYING_VARIANTS)
    variants = {"all": available, "both": ["paper", "corrected"]}.get(variant, [variant])
    if any(v not in available for v in variants):
        raise ValueError(f"--variant {variant} does not exist for `induction {kind}`; "
                         f"choose from {', '.join(available)}, both or all")
    return variants


def _scores(args: argparse.Namespace) -> int:
    import torch

    from opt66b.io import sha256_file
    from opt66b.runtime import load_from_args

    from . import sequences as sq
    from .copying import copying_seed
    from .prefix_matching import prefix_matching_seed
    from .runner import run_seeds

    if args.seeds < 1 or args.first_seed < 0:
        raise ValueError(f"--seeds must be >= 1 and --seed >= 0, got {args.seeds} and {args.first_seed}")
    if args.start_length < 1 or args.length_step < 0:
        raise ValueError("--start-length must be >= 1 and --length-step >= 0")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    variants = selected_variants(args.kind, args.variant)
    model, tokenizer, info = load_from_args(args)
    cfg = model.config
    pool = sq.token_pool(tokenizer, args.exclude_ratio)
    if max(pool) >= cfg.vocab_size:
        raise ValueError(f"token pool reaches id {max(pool)} but the model has {cfg.vocab_size} embedding rows; "
                         "does the tokenizer belong to this model?")

    def length(seed: int) -> int:
        return sq.base_length(seed, args.start_length, args.length_step)

    longest = 4 * length(seeds[-1]) + 1
    if longest > cfg.max_positions:
        raise ValueError(f"seed {seeds[-1]} needs {longest} positions but the model has {cfg.max_positions}; "
                         "use fewer seeds or a smaller --start-length/--length-step")
    if args.kind == "prefix":
        kind = "prefix_matching"

        def make(seed: int) -> torch.Tensor:
            return sq.prefix_sequence(pool, seed, tokenizer.bos_id, length(seed))

        def score(tokens: torch.Tensor, vs: list[str]) -> dict[str, torch.Tensor]:
            return prefix_matching_seed(model, tokens, (tokens.numel() - 1) // 4, vs)
    else:
        kind = "copying"

        def make(seed: int) -> torch.Tensor:
            return sq.copying_sequence(pool, seed, tokenizer.bos_id, 4 * length(seed))

        def score(tokens: torch.Tensor, vs: list[str]) -> dict[str, torch.Tensor]:
            return copying_seed(model, tokens, vs, head_chunk=args.head_chunk)

    merges = tokenizer.merges_path
    settings = {**info, "exclude_ratio": args.exclude_ratio, "pool_size": len(pool),
                "merges_sha256": sha256_file(merges) if merges else None, "start_length": args.start_length,
                "length_step": args.length_step, "rng": "numpy.random.default_rng(seed)"}
    summary = run_seeds(kind, seeds, variants, args.out, make, score, settings, top=args.top)
    for v, res in summary.items():
        flat = int(torch.argmax(res["mean"]))
        print(f"{kind} {v}: top head layer {flat // cfg.num_heads} head {flat % cfg.num_heads} "
              f"score {float(res['mean'].flatten()[flat]):.4f} -> {args.out}/{kind}_{v}.json")
    return 0


def _capacity(args: argparse.Namespace) -> int:
    from .capacity import run_capacity

    run_capacity(args.scores, args.importance, args.out, random_seeds=args.random_seeds)
    print(f"capacity curves -> {args.out}/capacity.safetensors, {args.out}/capacity.json")
    return 0
