"""`--protocol corrected|paper`: every choice where the paper's released code departs from the paper's
text or from lm-eval v0.3, as one frozen value (docs/protocol.md has the errata table).

    CORRECTED = Protocol("corrected", ...)   # the default: lm-eval's targets, all WSC rows, one denominator
    PAPER = Protocol("paper", ...)           # the paper's released code, choice by choice
    s.protocol.paper_quirks, s.protocol.denominator, s.protocol.partners, s.protocol.other

A step's settings hold one (`TaskStep.protocol`); it renders as its name, so a commands.txt line parses
back into the same value. Nothing else in the code compares protocol names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    """What one protocol decides (module docstring)."""

    name: str
    # Task prompts under the paper's lm-eval fork: importance targets without lm-eval's leading space
    # (ARC, OpenBookQA, HellaSwag, PIQA, MathQA), WSC importance from the positive rows only, MathQA
    # demonstrations without the space (tasks.base.Task(paper_quirks=...)).
    paper_quirks: bool
    # Which head-importance variant the `importance` tensor (the ranking later steps read) holds:
    # "paper" = the last layer over target tokens, the others over positions (the released code);
    # "uniform" = every layer over positions (prune/importance.py).
    denominator: str
    # How cross-task transfer partners are chosen by default (prune/transfer.py PARTNER_CHOICES).
    partners: tuple[str, ...]

    def __str__(self) -> str:
        return self.name

    @property
    def other(self) -> "Protocol":
        """The protocol `run.py all` ranks the affected tasks under as well, to show what the choice moves."""
        return PAPER if self.name == CORRECTED.name else CORRECTED

    @classmethod
    def named(cls, name: "str | Protocol") -> "Protocol":
        if isinstance(name, Protocol):
            return name
        if name not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
        return PROTOCOLS[name]


CORRECTED = Protocol("corrected", paper_quirks=False, denominator="uniform", partners=("spearman", "argsort"))
PAPER = Protocol("paper", paper_quirks=True, denominator="paper", partners=("paper", "argsort"))
PROTOCOLS = {p.name: p for p in (CORRECTED, PAPER)}
