"""The synthetic copy task as a seventeenth task: NOT one of the paper's, never in its aggregate.

Each doc is a list of L distinct words written twice, "w1 ... wL w1 ... wL"; the model sees all but
the last word and must predict " wL" (greedy accuracy and perplexity, exactly as LAMBADA scores its
last word). Nothing in the first repeat says what comes after w(L-1) except its earlier occurrence,
so a model copies through induction heads or fails: on the tiny OPT the curve of accuracy against
heads pruned has a real knee where the induction heads go (docs/tiny-opt.md), which the paper's
tasks, near chance on a 2-layer model, cannot show.

The words are single tokens " word" of the OPT vocabulary (study/make_samples.py writes
tasks/samples/synthetic_copy/copy.jsonl from the bundled tokenizer, seeded), so text and tokens
round-trip. Demos come from the same docs minus the evaluated one, as LAMBADA's.
"""

from __future__ import annotations

from .data import SplitFile
from .lambada import LAMBADA

NAME = "synthetic_copy"


class SyntheticCopy(LAMBADA):
    NAME, VERSION, DATA_DIR = NAME, 0, "synthetic_copy"
    FILES = {"validation": [SplitFile("copy.jsonl")]}
    PUBLISHED: dict[str, int] = {}
