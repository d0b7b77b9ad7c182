"""The synthetic in-context copying task, prefix matching, and the induction-head pruning experiment.

Sequences follow Bansal et al. (ACL 2023) Algorithm 1 (docs/method.md, "Prefix matching") and are
those of the induction study (induction/sequences.py: distinct random tokens from OPT's
merge-rank pool, the 4% most and 4% least frequent merges excluded, after a BOS (`</s>`, id 2),
drawn by numpy default_rng(seed)). The copying task asks the model to continue a repeat:

    index:   0    1 .. L        L+1 .. 2L
    tokens:  BOS  s0 .. s(L-1)  s0  .. s(L-1)
    logits at index L+j predict s(j), for j = 1 .. L-1 (the second repeat, minus s0: the token
    before it, s(L-1), has no earlier occurrence, so nothing in context says s0 comes next)

accuracy = mean over those L-1 targets of [argmax logits == target]. A model that copies through an
induction head gets near 1; a model without one gets near 0 (1 in 46,000 by chance).

Prefix matching is induction/prefix_matching.py's "corrected" variant (the paper's Algorithm 1
without its off-by-one spurious key) and the control heads' importance is prune/importance.py's
gradient score, so this check tests the code the study runs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from induction.prefix_matching import prefix_matching_seed
from induction.sequences import EXCLUDE_RATIO, prefix_sequence, token_pool
from opt66b import OPT, OPTTokenizer
from opt66b.runs.settings import ModelStep, option
from opt66b.runs.store import UnitStore, Work, in_memory_info, model_fingerprint
from prune.importance import head_importance_tokens
from tasks.scoring import TokenRequest


def prefix_matching(model: OPT, pool: Sequence[int], seeds: int = 4, length: int = 25, repeats: int = 4,
                    bos_id: int = 2, first_seed: int = 0) -> torch.Tensor:
    """(L, H) mean prefix-matching score in [0, 1] over the sequences of seeds first_seed ..
    first_seed + seeds - 1 (seed s has length + 2s tokens, as the paper's 25 + 2s):
    induction.prefix_matching's "corrected" variant on
    induction.sequences' draws. 1: every query attends only to tokens that followed its own token
    earlier (an induction head); ~0: it looks elsewhere (BOS, the previous token, ...)."""
    scores = []
    for s in range(first_seed, first_seed + seeds):
        n = length + 2 * s
        ids = prefix_sequence(pool, s, bos_id, n, repeats)  # (1 + repeats * n,)
        scores.append(prefix_matching_seed(model, ids, n, ["corrected"])["corrected"])
    return torch.stack(scores).mean(0)  # (S, L, H) -> (L, H)


def heads_above(scores: torch.Tensor, threshold: float = 0.5) -> list[tuple[int, int]]:
    """(layer, head) pairs whose score is >= threshold, highest score first."""
    order = torch.argsort(scores.flatten(), descending=True, stable=True)
    heads = scores.shape[1]
    return [(int(i) // heads, int(i) % heads) for i in order if scores.flatten()[i] >= threshold]


def mask_without(num_layers: int, num_heads: int, pruned: list[tuple[int, int]]) -> torch.Tensor:
    """(L, H) head mask of ones with the `pruned` (layer, head) entries zeroed."""
    mask = torch.ones(num_layers, num_heads)
    for layer, head in pruned:
        mask[layer, head] = 0.0
    return mask


def copy_batch(pool: Sequence[int], seeds: int, length: int, bos_id: int = 2, first_seed: int = 0) -> torch.Tensor:
    """(seeds, 1 + 2*length) ids: row i is BOS + seq + seq, seq drawn for seed first_seed + i
    (induction.sequences)."""
    return torch.stack([prefix_sequence(pool, s, bos_id, length, repeats=2)
                        for s in range(first_seed, first_seed + seeds)])


def copy_accuracy(model: OPT, ids: torch.Tensor, head_mask: torch.Tensor | None = None) -> float:
    """Accuracy of predicting tokens 1..L-1 of the second repeat of (B, 1 + 2L) `ids` (see module
    docstring for the alignment), under an optional (L, H) head mask."""
    length = (ids.shape[1] - 1) // 2
    device = model.decoder.embed_tokens.weight.device
    with torch.no_grad():
        out = model(ids.to(device), head_mask=head_mask, logits="none")
        hidden = out.hidden[:, length + 1:2 * length]  # (B, L-1, W): indices L+1 .. 2L-1 predict s1 .. s(L-1)
        pred = model.logits(hidden).argmax(dim=-1).cpu()  # (B, L-1)
    target = ids[:, length + 2:]  # (B, L-1): s1 .. s(L-1) of the second repeat
    return float((pred == target).float().mean())


def copy_importance(model: OPT, ids: torch.Tensor) -> torch.Tensor:
    """(L, H) gradient head importance on the copying task: prune.importance's score (|a . dL/da|
    per position, one forward + backward per row) with each row of (B, 1 + 2L) `ids` an example
    whose continuation is the predictable second repeat s1 .. s(L-1). Small = the task barely
    depends on the head."""
    length = (ids.shape[1] - 1) // 2
    rows = [row.tolist() for row in ids]
    examples = [TokenRequest(prefix=tuple(r[:length + 2]), continuation=tuple(r[length + 2:])) for r in rows]
    return head_importance_tokens(model, examples)[0]


def pruning_experiment(model: OPT, pool: Sequence[int], seeds: int = 16, length: int = 25,
                       threshold: float = 0.5, bos_id: int = 2, first_seed: int = 0) -> dict:
    """The organism check: copy accuracy with all heads, with the induction heads (prefix matching
    >= threshold) pruned, and with as many control heads pruned. Two controls: the least important
    heads by copying-task gradient importance (`copy_importance`, the primary control) and the heads
    with the lowest prefix-matching scores. Prefix matching and accuracy use the sequences of seeds
    first_seed .. first_seed + seeds - 1.
    pool: token ids to draw from (induction.sequences.token_pool)."""
    cfg = model.config
    pm = prefix_matching(model, pool, seeds=seeds, length=length, bos_id=bos_id, first_seed=first_seed)
    ids = copy_batch(pool, seeds, length, bos_id, first_seed)
    importance = copy_importance(model, ids)
    induction = heads_above(pm, threshold)
    k = len(induction)
    others = lambda scores: [h for h in heads_above(-scores, -float("inf")) if h not in induction]
    control = others(importance)[:k]  # heads_above(-x) lists the smallest x first
    control_pm = others(pm)[:k]
    acc = lambda pruned: copy_accuracy(model, ids, mask_without(cfg.num_layers, cfg.num_heads, pruned))
    return {
        "seeds": seeds, "first_seed": first_seed, "length": length, "threshold": threshold,
        "prefix_matching": pm.tolist(), "copy_importance": importance.tolist(),
        "induction_heads": [list(h) for h in induction],
        "control_heads": [list(h) for h in control],
        "control_heads_prefix_matching": [list(h) for h in control_pm],
        "accuracy_full": acc([]),
        "accuracy_induction_pruned": acc(induction),
        "accuracy_control_pruned": acc(control),
        "accuracy_control_prefix_matching_pruned": acc(control_pm),
    }


@dataclass(frozen=True, kw_only=True)
class CopyTaskSettings(ModelStep):
    """`run.py copytask`: copying accuracy with the induction heads, or as many control heads, pruned."""

    COMMAND = ("copytask",)
    seeds: int = option(16)
    seed: int = option(0)
    length: int = option(25)
    threshold: float = option(0.5)
    out: Path = option(None)

    def check(self) -> None:
        if self.seeds < 1 or self.length < 2 or self.seed < 0:
            raise ValueError(f"--seeds must be >= 1, --length >= 2 and --seed >= 0, got {self.seeds}, {self.length} "
                             f"and {self.seed}")
        if not 0 < self.threshold <= 1:  # prefix-matching scores lie in [0, 1]: another threshold selects all or none
            raise ValueError(f"--threshold must be in (0, 1] (prefix-matching scores lie in [0, 1]), got {self.threshold}")

    def units(self, shape: Any, tokenizer: Any = None, done: Any = None) -> list[Any]:
        """The one work unit (opt66b.cost) of pruning_experiment: prefix matching per seed (a captured forward of
        1 + 4(L + 2s) tokens), prune.importance's forward and backward per row (2L tokens fed, the second
        repeat's L - 1 targets), then four accuracy passes on the (seeds, 1 + 2L) batch (full, induction heads
        pruned, two controls)."""
        from opt66b.cost import Passes, Run, WorkUnit

        n, rows, t = self.length, self.seeds, 1 + 2 * self.length
        sequences = [1 + 4 * (n + 2 * s) for s in range(self.seed, self.seed + self.seeds)]
        runs = [Run(Passes((((1, T, T, T, 0, 0),),)), scores=True) for T in sequences]
        runs.append(Run(Passes((((1, 2 * n, 2 * n, 2 * n, n - 1, 0),),)), backward="full", scores=True, times=rows))
        runs.append(Run(Passes((((rows, t, t, rows * t, rows * (n - 1), 0),),)), scores=True, times=4))
        return [WorkUnit(("copytask",), runs)]

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, int]:
        out = run_copy_task(*loaded, self)
        res = out["result"]
        print(f"copy accuracy: full {res['accuracy_full']:.3f}, induction heads {res['induction_heads']} "
              f"pruned {res['accuracy_induction_pruned']:.3f}, control {res['control_heads']} pruned "
              f"{res['accuracy_control_pruned']:.3f}; wrote {self.out / 'copytask.json'}", file=sys.stderr)
        return out["work"]


def run_copy_task(model: OPT, tokenizer: OPTTokenizer, info: dict[str, Any] | None, s: CopyTaskSettings,
                  exclude_ratio: float = EXCLUDE_RATIO) -> dict[str, Any]:
    """The organism check as one unit: s.out/copytask.json with the accuracies, the induction and control
    heads and their scores (see pruning_experiment), reused on rerun when its fingerprint matches.
    Returns {"result": ..., "work": forward/backward passes and tokens computed}."""
    from opt66b.cost import ModelShape
    from opt66b.fileio import read_json
    from opt66b.runs.distributed import barrier, is_main
    from opt66b.runs.results import run_metadata

    s.check()
    seeds, length, threshold, first_seed, out = s.seeds, s.length, s.threshold, s.seed, s.out
    info = info or in_memory_info(model)
    path = Path(out) / "copytask.json"
    store = UnitStore(model_fingerprint(info), recompute=s.recompute)
    fields = {"seeds": seeds, "first_seed": first_seed, "length": length, "threshold": threshold,
              "exclude_ratio": exclude_ratio}
    work = Work()
    if not is_main() or store.done(path, **fields):  # one unit: rank 0 runs it, the others read its result
        barrier()
        return {"result": read_json(path), "work": work.as_dict()}
    result = pruning_experiment(model, token_pool(tokenizer, exclude_ratio), seeds=seeds, length=length,
                                threshold=threshold, bos_id=tokenizer.bos_id, first_seed=first_seed)
    shape = ModelShape.of(model)
    work.add_unit(s.units(shape)[0], shape.rule)
    record = {**run_metadata(model=info, seeds=seeds, first_seed=first_seed, length=length, threshold=threshold,
                             exclude_ratio=exclude_ratio), **result}
    store.write_json(path, record, **fields)
    barrier()
    return {"result": record, "work": work.as_dict()}
