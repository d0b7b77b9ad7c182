"""Sub-commands of run.py for the task-agnostic study: `induction prefix`, `induction copying`, `induction
capacity` (docs/method.md, "Induction heads"). Only the grammar lives here (argparse, no torch); each command
names the settings class of its step (induction/experiments.py, induction/capacity.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

# every score variant (induction/prefix_matching.py, induction/copying.py), written here for a parser that
# loads no torch; experiments.selected_variants checks them, tests/test_induction.py keeps the two equal
VARIANT_CHOICES = ("paper", "corrected", "text", "index_fix", "attended_logits", "residual", "both", "all")



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
    k.set_defaults(step="induction.capacity:CapacitySettings")


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
    p.add_argument("--seed", dest="first_seed", type=int, default=0,
                   help="first seed: sequences of seeds SEED..SEED+N-1 (default: 0, as the paper)")
    p.add_argument("--variant", choices=VARIANT_CHOICES, default="all",
                   help="which score(s). prefix: paper (its released code: a sum with a spurious key), corrected "
                        "(the sum over true keys), text (Appendix A.8 as written: the average over the earlier "
                        "copies). copying: paper (its released code), index_fix (the code read at the attended "
                        "position), attended_logits (the attended token's OV row as logits, no b_O), text "
                        "(Appendix A.8 as written: the head's attention-weighted output with b_O, as logits), "
                        "residual (the real forward pass, an extension). both = paper + corrected (prefix) or "
                        "paper + text (copying); all (default)")
    add_out_arg(p)
    p.add_argument("--exclude-ratio", type=float, default=0.04,
                   help="fraction of most and of least frequent merges left out of the pool (default: 0.04)")
    p.add_argument("--start-length", type=int, default=25, help="base length of seed 0 (default: 25)")
    p.add_argument("--length-step", type=int, default=2, help="base length increase per seed (default: 2)")
    p.add_argument("--top", type=int, default=20, help="heads listed in the JSON summary (default: 20)")
    add_plan_args(p, f"induction {name}")
    step = "PrefixSettings" if name == "prefix" else "CopyingSettings"
    p.set_defaults(step=f"induction.experiments:{step}")
    return p
