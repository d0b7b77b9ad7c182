"""How the scorer batches requests, on lengths alone: the run (tasks/scoring.py) builds its tensors from this
layout and the plan prices the same layout, so a batch is made in one place.

    order = Order.of(unique_token_requests)      # longest first; tokens only break ties, then are dropped
    batches = layout(order, batch_tokens)        # what Scorer runs: plain and shared-context batches
    passes = order.passes(batches)               # opt66b.cost.Passes: what each pass costs

An Order holds no tokens, only lengths and request indices, so it is JSON-able and is what the tokenisation
cache keeps of an evaluation (tasks.evaluation.cached): a new --batch-tokens re-batches the cached order in
well under a second instead of tokenising the data again (the expensive part: minutes on the full data).

Rules (lm-eval's numbers, the least work): requests with an identical prefix share one context pass whose
keys and values the continuations then read (a shared unit); a request alone is a plain batch row. Rows are
sorted longest first, so the first batch is the largest (an out-of-memory error comes at once) and each batch
pads to its first row; `_fill` closes a batch at the token budget, or when a row is much shorter than the
first (PAD_SLACK). A shared unit's continuations run in batches whose cached keys (the expanded context) stay
within KV_BUDGET_FACTOR x the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from opt66b.cost import Passes

KV_BUDGET_FACTOR = 4  # continuation batches may touch up to 4x batch_tokens key positions (expanded cache copies)
PAD_SLACK = 32  # a row joins a batch only if it is at most max(32, first/8) tokens shorter than its first row


@dataclass(frozen=True)
class Batch:
    """One scoring unit: `rows` index Order.plain (a plain batch) or Order.shared (a shared-context batch);
    a shared one's continuation batches list (row in this batch, request index) pairs."""

    rows: tuple[int, ...]
    shared: bool = False
    conts: tuple[tuple[tuple[int, int], ...], ...] = ()


@dataclass(frozen=True)
class Order:
    """Unique requests longest first (module docstring). plain: (input length, continuation length, request
    index) per lone request; shared: (prefix length, ((request index, continuation length), ...)) per group of
    requests with one prefix."""

    plain: tuple[tuple[int, int, int], ...]
    shared: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]

    @classmethod
    def of(cls, unique: Sequence[Any]) -> "Order":
        """From tasks.scoring.TokenRequest's (unique, in request order); ties are broken by the tokens."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for u, t in enumerate(unique):
            groups.setdefault(t.prefix, []).append(u)
        plain = [us[0] for us in groups.values() if len(us) == 1]
        shared = [us for us in groups.values() if len(us) > 1]
        plain.sort(key=lambda u: (-len(unique[u].input_ids), unique[u].input_ids))
        shared.sort(key=lambda us: (-len(unique[us[0]].prefix), unique[us[0]].prefix))
        return cls(tuple((len(unique[u].input_ids), len(unique[u].continuation), u) for u in plain),
                   tuple((len(unique[us[0]].prefix), tuple((u, len(unique[u].continuation)) for u in us))
                         for us in shared))

    def to_json(self) -> dict[str, Any]:
        return {"plain": self.plain, "shared": self.shared}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Order":
        return cls(tuple(tuple(p) for p in obj["plain"]),
                   tuple((g[0], tuple(tuple(m) for m in g[1])) for g in obj["shared"]))

    def passes(self, batches: Sequence[Batch]) -> Passes:
        """The cost shapes of every pass of `batches` (opt66b.cost.Passes)."""
        units = []
        for b in batches:
            if not b.shared:
                rows = [self.plain[i] for i in b.rows]
                new = rows[0][0]  # sorted longest first: the batch pads to its first row
                units.append(((len(rows), new, new, sum(r[0] for r in rows), sum(r[1] for r in rows), 0),))
                continue
            groups = [self.shared[i] for i in b.rows]
            past = groups[0][0]
            context_kv = len(groups) * past if b.conts else 0
            passes = [(len(groups), past, past, sum(g[0] for g in groups), sum(len(g[1]) for g in groups), context_kv)]
            lengths = {u: c for g in groups for u, c in g[1]}
            for cb in b.conts:
                fed = [lengths[u] - 1 for _, u in cb]
                keys = past + max(fed)
                passes.append((len(cb), max(fed), keys, sum(fed), sum(fed), context_kv + len(cb) * keys))
            units.append(tuple(passes))
        return Passes(tuple(units))


def layout(order: Order, batch_tokens: int) -> list[Batch]:
    """The scoring units of `order` under a token budget per batch (module docstring): plain batches first,
    then the shared-context batches."""
    plain = _fill(list(range(len(order.plain))), lambda i: order.plain[i][0], batch_tokens)
    batches = [Batch(tuple(b)) for b in plain]
    for group_batch in _fill(list(range(len(order.shared))), lambda i: order.shared[i][0], batch_tokens):
        past = order.shared[group_batch[0]][0]
        conts = [(r, u, c) for r, i in enumerate(group_batch) for u, c in order.shared[i][1] if c > 1]
        conts.sort(key=lambda ruc: (-ruc[2], ruc[1]))
        cont_batches = _fill(conts, lambda ruc: ruc[2] - 1, batch_tokens, past=past,
                             past_budget=KV_BUDGET_FACTOR * batch_tokens)
        batches.append(Batch(tuple(group_batch), True, tuple(tuple((r, u) for r, u, _ in cb) for cb in cont_batches)))
    return batches


def _fill(items: list, length: Callable[[Any], int], budget: int, past: int = 0,
          past_budget: int | None = None) -> list[list]:
    """Greedy batches over items sorted longest first: rows * first_length <= budget (and
    rows * (past + first_length) <= past_budget); a batch always takes at least one item. Padding
    is computed like real tokens, so a much shorter row starts a new batch instead (PAD_SLACK)."""
    batches: list[list] = []
    for item in items:
        if batches:
            rows, first = len(batches[-1]) + 1, length(batches[-1][0])
            short_enough = first - length(item) <= max(PAD_SLACK, first // 8)
            if short_enough and rows * first <= budget and (past_budget is None or rows * (past + first) <= past_budget):
                batches[-1].append(item)
                continue
        batches.append([item])
    return batches
