"""The paper's own published choices, written down once so the report can set this run beside them.

Bansal et al. 2023 read their pruning curves by eye and picked some rankings by hand; these constants
are those readings and picks, from the paper's text (§5) and its released plotting scripts. Nothing
here is computed: the run's own readings come from prune/inflection.py.

PAPER_HEADLINE[shots]: where the paper reads the mean-over-seen-tasks curves of OPT-66B.
    heads  "does not change much up until ~70%" of heads removed (§5.1), at every shot count;
    ffn    the FFN curve's knee: ~20% at 0 shots, 10% at 1 and 5 shots (§5.2);
    both   the combined point of the grid and the mean accuracy it costs, in points (§5.3):
           70% heads / 20% FFNs at 0 shots (5 points), 70% / 10% at 1 shot (6), 60% / 20% at 5 shots (4).
    The paper gives no drop for heads or FFNs alone (None).
PAPER_TRANSFER_PARTNERS[shots][task]: the high / low SRCC partners the paper's cross-task transfer
    figure plots (its released plotting script hard-codes them; they agree with its argsort SRCC, Fig. 8).
PAPER_CORRELATIONS: the numbers §6 quotes about the rankings (the report sets this run's beside them):
    ReCoRD has the lowest SRCC with COPA and with Winogrande, "(0.13)"; the top-30% important heads of
    ReCoRD overlap those of COPA and Winogrande by "71% and 76%"; the same task's rankings across shot
    counts correlate at "0.41", "0.39" and "0.37" (the three pairs of 0, 1 and 5 shots, in the paper's
    order), "variance (0.001)", "p-value < 0.01". The SRCC values are the statistic of the paper's
    released code (Pearson of argsort vectors: prune/stats.py), whose range they fall in.
PAPER_P_LEVEL: the paper's significance level, p < 0.01.
"""

from __future__ import annotations

PAPER_HEADLINE: dict[int, dict[str, dict[str, float | None]]] = {
    0: {"heads": {"head_percent": 70, "drop_points": None}, "ffn": {"ffn_percent": 20, "drop_points": None},
        "both": {"head_percent": 70, "ffn_percent": 20, "drop_points": 5}},
    1: {"heads": {"head_percent": 70, "drop_points": None}, "ffn": {"ffn_percent": 10, "drop_points": None},
        "both": {"head_percent": 70, "ffn_percent": 10, "drop_points": 6}},
    5: {"heads": {"head_percent": 70, "drop_points": None}, "ffn": {"ffn_percent": 10, "drop_points": None},
        "both": {"head_percent": 60, "ffn_percent": 20, "drop_points": 4}},
}

PAPER_TRANSFER_TASKS = ("copa", "winogrande", "record")

PAPER_TRANSFER_PARTNERS: dict[int, dict[str, dict[str, str]]] = {
    0: {"copa": {"high": "winogrande", "low": "record"}, "winogrande": {"high": "copa", "low": "record"},
        "record": {"high": "rte", "low": "openbookqa"}},
    1: {"copa": {"high": "wsc", "low": "record"}, "winogrande": {"high": "copa", "low": "record"},
        "record": {"high": "hellaswag", "low": "wic"}},
    5: {"copa": {"high": "wsc", "low": "record"}, "winogrande": {"high": "boolq", "low": "record"},
        "record": {"high": "hellaswag", "low": "wic"}},
}

PAPER_P_LEVEL = 0.01

PAPER_CORRELATIONS = {
    "record_srcc": {"tasks": ("copa", "winogrande"), "value": 0.13, "statistic": "paper_argsort_pearson",
                    "quote": "ReCoRD has the lowest SRCC with COPA and Winogrande (0.13)", "figure": 8},
    "record_top_overlap": {"values": {"copa": 0.71, "winogrande": 0.76}, "fraction": 0.3,
                           "quote": "the top-30% important heads overlap 71% and 76% (ReCoRD with COPA, Winogrande)"},
    "cross_shot": {"values": (0.41, 0.39, 0.37), "pairs": ("0v1", "0v5", "1v5"), "variance": 0.001,
                   "statistic": "paper_argsort_pearson", "p_below": PAPER_P_LEVEL,
                   "quote": "0.41, 0.39 and 0.37 across shot counts, variance (0.001), p-value < 0.01"},
}
