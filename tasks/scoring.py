"""Log-likelihood scoring of (context, continuation) requests: plan once, run under many masks.

Mirrors lm-evaluation-harness v0.3 `BaseLM._loglikelihood_tokens` (lm_eval/base.py);
docs/method.md, "Evaluation". The numbers are lm-eval's, the work is not:
  - context and continuation are encoded separately without BOS and concatenated, then
    left-truncated exactly as lm-eval does: `inp = (ctx + cont)[-(max_length+1):][:-1]`;
  - log-softmax over the tokenizer's real vocabulary (the first `config.tokenizer_vocab_size` =
    50265 rows for OPT, as the paper's fork does); is_greedy = argmax over the same slice equals the
    continuation token at every position;
  - identical (prefix, continuation) token pairs are scored once;
  - requests whose (truncated) prefix tokens are identical share one context pass through the KV
    cache; the continuations then run batched on the expanded cache. Where left truncation makes
    the prefixes differ they are simply different groups, and a group of one takes the plain path;
  - the output head is applied only at the positions that predict a continuation token.

Alignment (prefix p0..p3 kept after truncation, continuation c0..c2):

    tokens      p0  p1  p2  p3 | c0  c1  c2
    fed         p0  p1  p2  p3 | c0  c1          (the last continuation token is never fed)
    predicts    p1  p2  p3  c0 | c1  c2
    scored                  ^^   ^^  ^^          logits at positions len(prefix)-1 .. len(prefix)+len(cont)-2
    shared path: context pass feeds p0..p3 (scores c0 from p3); continuation pass feeds c0 c1 on the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from opt66b import Capture, position_ids_from_mask
from opt66b.fileio import Progress
from opt66b.layer_major import (DEFAULT_CHUNK_BUDGET, ChunkPass, MaskedRun, check_resumable, chunk_units, full_masks,
                                run_layer_major, streams_layers)

from .base import Request, Result
from .batching import Batch, Order, layout



@dataclass(frozen=True)
class TokenRequest:
    """One request as token ids after lm-eval's left truncation."""

    prefix: tuple[int, ...]  # context tokens kept (>= 1)
    continuation: tuple[int, ...]  # all continuation tokens (>= 1)

    @property
    def input_ids(self) -> list[int]:
        """What the model reads: prefix + continuation[:-1] (<= max_length tokens)."""
        return list(self.prefix + self.continuation[:-1])

    @property
    def tokens(self) -> list[int]:
        """[context; continuation] window, <= max_length + 1 tokens (input_ids plus the last target)."""
        return list(self.prefix + self.continuation)


def token_requests(tokenizer: Any, requests: Sequence[Request], max_length: int) -> list[TokenRequest]:
    """Tokenize as lm-eval does: each unique context / continuation string encoded once, separately,
    without BOS; an empty context becomes [eos]; left truncation to max_length model inputs."""
    ctx_texts = list(dict.fromkeys(r.context for r in requests))
    cont_texts = list(dict.fromkeys(r.continuation for r in requests))
    ctx_ids = dict(zip(ctx_texts, _encode_all(tokenizer, ctx_texts)))
    cont_ids = dict(zip(cont_texts, _encode_all(tokenizer, cont_texts)))
    out = []
    for i, r in enumerate(requests):
        ctx = ctx_ids[r.context] or [tokenizer.eos_id]
        cont = cont_ids[r.continuation]
        if not cont:
            raise ValueError(f"request {i}: continuation {r.continuation!r} encodes to no tokens; "
                             "every request must score at least one token")
        if len(cont) > max_length:
            raise ValueError(f"request {i}: continuation has {len(cont)} tokens, more than max_length={max_length}")
        window = (ctx + cont)[-(max_length + 1):]
        out.append(TokenRequest(tuple(window[:len(window) - len(cont)]), tuple(cont)))
    return out


def _encode_all(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if hasattr(tokenizer, "encode_batch"):
        return [list(ids) for ids in tokenizer.encode_batch(texts)]
    return [list(tokenizer.encode(t)) for t in texts]


@dataclass
class _Pass:
    """One forward: ids (B, T) right-padded, mask (B, past + T), and where to read logits."""

    ids: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor  # (N,) batch row of each scored position
    pos: torch.Tensor  # (N,) position in the pass
    targets: torch.Tensor  # (N,) token each position must predict
    owner: torch.Tensor  # (N,) unique-request index the position belongs to
    ctx_rows: torch.Tensor | None = None  # (B,) continuation pass: context-pass row of each row


@dataclass
class _Unit:
    """A plain batch (`main` only) or a shared-context batch (`main` = context pass + `conts`)."""

    main: _Pass
    conts: list[_Pass] = field(default_factory=list)


class Scorer:
    """Tokenize and plan once; `run(head_mask, ffn_mask)` as often as needed.

    results = Scorer(model, tokenizer, requests).run()  # [(summed log-prob in nats, is_greedy)]
    """

    def __init__(self, model: Any, tokenizer: Any, requests: Sequence[Request], batch_tokens: int = 4096,
                 max_length: int | None = None, progress_label: str | None = None,
                 chunk_budget: int | None = DEFAULT_CHUNK_BUDGET):
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
        self.model, self.batch_tokens, self.progress_label = model, batch_tokens, progress_label
        self.chunk_budget = chunk_budget  # layer order (streamed layers): bytes of a chunk's states in `run`
        self.max_length = model.config.max_positions if max_length is None else max_length
        if not 0 < self.max_length <= model.config.max_positions:
            raise ValueError(f"--max-length must be in [1, {model.config.max_positions}] (the model's positions), "
                             f"got {self.max_length}")
        self.vocab = model.config.tokenizer_vocab_size
        self.requests = list(requests)
        self.tokenized = token_requests(tokenizer, self.requests, self.max_length)
        index: dict[TokenRequest, int] = {}
        self.request_to_unique = [index.setdefault(t, len(index)) for t in self.tokenized]
        self.unique = list(index)
        self.units = self._batches()
        self._records: list[dict[str, Any]] | None = None
        self._record_masks: tuple[torch.Tensor, torch.Tensor] | None = None
        self.stats = self._stats()

    # -- batching (tasks/batching.py decides it on lengths; here it becomes tensors) ------------------
    def _batches(self) -> list[_Unit]:
        self.order = Order.of(self.unique)
        self.layout = layout(self.order, self.batch_tokens)
        return [self._shared_unit(b) if b.shared else self._plain_pass([self.order.plain[i][2] for i in b.rows])
                for b in self.layout]

    def passes(self) -> Any:
        """The cost shapes of every pass (opt66b.cost.Passes), the ones `--plan` prices."""
        return self.order.passes(self.layout)

    def _plain_pass(self, batch: list[int]) -> _Unit:
        seqs = [self.unique[u].input_ids for u in batch]
        ids, mask = _pad(seqs)
        rows, pos, targets, owner = [], [], [], []
        for r, u in enumerate(batch):
            t = self.unique[u]
            start = len(t.prefix) - 1
            for j, tok in enumerate(t.continuation):
                rows.append(r), pos.append(start + j), targets.append(tok), owner.append(u)
        return _Unit(_Pass(ids, mask, *map(_long, (rows, pos, targets, owner))))

    def _shared_unit(self, batch: Batch) -> _Unit:
        groups = [[u for u, _ in self.order.shared[i][1]] for i in batch.rows]
        prefixes = [list(self.unique[us[0]].prefix) for us in groups]
        ids, mask = _pad(prefixes)
        rows, pos, targets, owner = [], [], [], []
        for r, us in enumerate(groups):
            for u in us:
                rows.append(r), pos.append(len(prefixes[r]) - 1)
                targets.append(self.unique[u].continuation[0]), owner.append(u)
        unit = _Unit(_Pass(ids, mask, *map(_long, (rows, pos, targets, owner))))
        for cb in batch.conts:
            c_ids, c_mask = _pad([list(self.unique[u].continuation[:-1]) for _, u in cb])
            ctx_rows = _long([r for r, _ in cb])
            full_mask = torch.cat([mask[ctx_rows], c_mask], dim=1)  # (R, past + T)
            rows, pos, targets, owner = [], [], [], []
            for i, (_, u) in enumerate(cb):
                for j, tok in enumerate(self.unique[u].continuation[1:]):
                    rows.append(i), pos.append(j), targets.append(tok), owner.append(u)
            unit.conts.append(_Pass(c_ids, full_mask, *map(_long, (rows, pos, targets, owner)), ctx_rows=ctx_rows))
        return unit

    def _stats(self) -> dict[str, int]:
        passes = [p for unit in self.units for p in (unit.main, *unit.conts)]
        return {"requests": len(self.requests), "unique_requests": len(self.unique),
                "forward_passes": len(passes),
                "tokens_fed": sum(int(p.ids.shape[0] * p.ids.shape[1] - (p.mask[:, -p.ids.shape[1]:] == 0).sum())
                                  for p in passes),
                "tokens_padded": sum(int(p.ids.numel()) for p in passes),
                "logit_positions": sum(int(p.targets.numel()) for p in passes)}

    # -- running -------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, head_mask: torch.Tensor | None = None, ffn_mask: torch.Tensor | None = None,
            start_layer: int = 0, record_layer_inputs: bool = False) -> list[Result]:
        """[(log-likelihood in nats summed over the continuation, is_greedy)] in request order.

        record_layer_inputs: keep the residual stream entering every layer of every pass (on CPU),
            so later runs can pass start_layer. start_layer=l: recompute only layers >= l from the
            recorded inputs; the masks must equal the recorded run's in layers < l.
        Streamed layers: a plain run goes in layer order (opt66b/layer_major.py), chunks of
        `chunk_budget` bytes of states, each streamed layer fetched once per chunk; the same bits."""
        if start_layer and record_layer_inputs:
            raise ValueError("record_layer_inputs needs a full run (start_layer=0): layers < start_layer are not run")
        if start_layer:
            self._check_resume(start_layer, head_mask, ffn_mask)
        records: list[dict[str, Any]] = []
        lls = torch.zeros(len(self.unique), dtype=torch.float64)
        misses = torch.zeros(len(self.unique), dtype=torch.long)
        progress = Progress(len(self.units), self.progress_label) if self.progress_label else None
        if streams_layers(self.model) and not start_layer and not record_layer_inputs:
            size = self.chunk_units(self.chunk_budget, 1)
            for first in range(0, len(self.units), size):
                self._chunk_layer_major(self.units[first:first + size], [], [(lls, misses)], (head_mask, ffn_mask))
                if progress:
                    progress.update(len(self.units[first:first + size]))
            return self._results(lls, misses)
        for k, unit in enumerate(self.units):
            rec = self._records[k] if start_layer else None
            records.append(self._run_unit(unit, head_mask, ffn_mask, start_layer, rec, record_layer_inputs, lls, misses))
            if progress:
                progress.update()
        if record_layer_inputs:
            self._records = records
            self._record_masks = full_masks(self.model.config, head_mask, ffn_mask)
        return self._results(lls, misses)

    def _results(self, lls: torch.Tensor, misses: torch.Tensor) -> list[Result]:
        return [(float(lls[u]), bool(misses[u] == 0)) for u in self.request_to_unique]

    def _run_unit(self, unit: _Unit, head_mask, ffn_mask, start_layer: int, rec: dict[str, Any] | None,
                  record: bool, lls: torch.Tensor, misses: torch.Tensor) -> dict[str, Any]:
        """Score one batch (its context pass and continuation passes) into lls / misses; returns the
        layer inputs it recorded (record=True) for later start_layer runs."""
        cfg = self.model.config
        cap = Capture(layer_inputs=True, to_cpu=True) if record else None
        out = self._forward(unit.main, head_mask, ffn_mask, start_layer, rec and rec["main"], cap,
                            use_cache=bool(unit.conts))
        self._score(unit.main, out.hidden, lls, misses)
        unit_rec = {"main": cap.layer_inputs if cap else None, "conts": []}
        for j, cp in enumerate(unit.conts):
            past = []
            for i in range(cfg.num_layers):
                if i < start_layer:  # never read: layers < start_layer are not run; zero-stride stand-ins
                    k_, v_ = out.past_key_values[0]
                    stand_in = k_.new_zeros(()).expand(len(cp.ctx_rows), *k_.shape[1:])
                    past.append((stand_in, stand_in))
                else:
                    k_, v_ = out.past_key_values[i - start_layer]
                    sel = cp.ctx_rows.to(k_.device)
                    past.append((k_.index_select(0, sel), v_.index_select(0, sel)))  # (R, H, S, Dh)
            c_cap = Capture(layer_inputs=True, to_cpu=True) if record else None
            c_out = self._forward(cp, head_mask, ffn_mask, start_layer, rec and rec["conts"][j], c_cap, past=past)
            self._score(cp, c_out.hidden, lls, misses)
            unit_rec["conts"].append(c_cap.layer_inputs if c_cap else None)
        return unit_rec

    @torch.no_grad()
    def run_knockouts(self, runs: Sequence[tuple[Any, Any, Any, int]], chunk_units: int,
                      done: dict[int, dict[Any, tuple[torch.Tensor, torch.Tensor]]] | None = None,
                      on_chunk: Callable[[int, dict[Any, tuple[torch.Tensor, torch.Tensor]]], None] | None = None,
                      layer_major: bool | None = None, base: tuple[Any, Any] = (None, None),
                      only: set[int] | None = None) -> dict[Any, list[Result]]:
        """The unmasked base run and every (key, head_mask, ffn_mask, start_layer) run, `chunk_units`
        batches at a time: memory is set by the chunk, not by the task. Batch order (resident layers):
        each chunk's base records its layer inputs on the host and every run resumes from them batch by
        batch. Layer order (layer_major; default when layers stream; opt66b/layer_major.py): layer i
        takes the chunk for the base and every started run before layer i + 1 is fetched, live states
        on the compute device. Both give run()'s and run(start_layer=...)'s results bit for bit.
        done[first unit] / on_chunk(first unit, {key: (lls, misses)}) resume and save per chunk. base: the base
        run's (head_mask, ffn_mask) (unmasked by default). only: the chunks (first units) to compute; the others
        must be in `done` (another process computed them) or their requests stay at zero."""
        if chunk_units < 1:
            raise ValueError(f"chunk_units must be >= 1, got {chunk_units}")
        if layer_major is None:
            layer_major = streams_layers(self.model)
        keys = ["base", *(r[0] for r in runs)]
        total = {k: (torch.zeros(len(self.unique), dtype=torch.float64), torch.zeros(len(self.unique), dtype=torch.long))
                 for k in keys}
        for key, head_mask, ffn_mask, start in runs:
            check_resumable(self.model.config, MaskedRun(*base), MaskedRun(head_mask, ffn_mask, start), f"run {key!r}")
        for first in range(0, len(self.units), chunk_units):
            part = (done or {}).get(first)
            if part is None and only is not None and first not in only:
                continue
            if part is None:
                part = {k: (torch.zeros_like(total[k][0]), torch.zeros_like(total[k][1])) for k in keys}
                chunk = self.units[first:first + chunk_units]
                if layer_major:
                    self._chunk_layer_major(chunk, runs, [part[k] for k in keys], base)
                else:
                    recs = [self._run_unit(u, *base, 0, None, True, *part["base"]) for u in chunk]
                    for key, head_mask, ffn_mask, start in runs:
                        for u, rec in zip(chunk, recs):
                            self._run_unit(u, head_mask, ffn_mask, start, rec, False, *part[key])
                    del recs
                if on_chunk is not None:
                    on_chunk(first, part)
            for k in keys:
                total[k][0].add_(part[k][0])
                total[k][1].add_(part[k][1])
        return {k: self._results(*total[k]) for k in keys}

    def chunk_units(self, budget: int | None, copies: int) -> int:
        """Scoring batches per chunk when `copies` of each batch's residual stream must fit `budget` bytes."""
        tokens = [sum(int(p.ids.numel()) for p in (u.main, *u.conts)) for u in self.units]
        return chunk_units(tokens, budget, copies, self.model.config.hidden_size,
                           next(self.model.parameters()).element_size())

    def _chunk_layer_major(self, chunk: list[_Unit], runs: Sequence[tuple[Any, Any, Any, int]],
                           into: list[tuple[torch.Tensor, torch.Tensor]], base: tuple[Any, Any] = (None, None)) -> None:
        """One chunk in layer order: into[r] = (lls, misses) of the base run (r = 0; `base` = its head and
        FFN masks) and of runs[r - 1]."""
        passes = [[unit.main, *unit.conts] for unit in chunk]
        units = [[ChunkPass(p.ids, p.mask, position_ids_from_mask(p.mask, p.ids.shape[1]), p.ctx_rows if j else None)
                  for j, p in enumerate(ps)] for ps in passes]
        masked = [MaskedRun(*base), *(MaskedRun(h, f, start) for _, h, f, start in runs)]
        run_layer_major(self.model, units, masked,
                        lambda r, u, j, hidden: self._score(passes[u][j], hidden, *into[r]))

    def _forward(self, p: _Pass, head_mask, ffn_mask, start_layer: int, rec: dict[int, torch.Tensor] | None,
                 cap: Capture | None, use_cache: bool = False, past=None):
        device = self.model.decoder.embed_tokens.weight.device
        hidden_in = None
        if start_layer:
            hidden_in = rec[start_layer].to(device)
        # Explicit positions: a padded continuation pass can span more than max_positions columns
        # (longest prefix + longest continuation of different rows) although every row's real
        # tokens fit; pads take table row 1, so the positions stay valid.
        positions = position_ids_from_mask(p.mask, p.ids.shape[1])  # (B, T)
        return self.model(p.ids.to(device), attention_mask=p.mask.to(device), head_mask=head_mask,
                          ffn_mask=ffn_mask, past_key_values=past, use_cache=use_cache, capture=cap,
                          logits="none", start_layer=start_layer, hidden_in=hidden_in,
                          position_ids=positions.to(device))

    def _score(self, p: _Pass, hidden: torch.Tensor, lls: torch.Tensor, misses: torch.Tensor) -> None:
        if p.targets.numel() == 0:
            return
        h = hidden[p.rows.to(hidden.device), p.pos.to(hidden.device)]  # (N, W): only predicting positions
        # (N, V_tok): padded vocabulary rows are not tokens. Made contiguous at once, so the model's (N, V)
        # output is freed before log_softmax, which would otherwise copy the slice beside it: two fp32
        # (N, V) buffers at the peak, as study/plan.py counts, not three; the values are the same.
        logits = self.model.logits(h)[:, :self.vocab].float().contiguous()
        targets = p.targets.to(logits.device)
        logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]  # (N,)
        greedy = logits.argmax(dim=-1) == targets  # (N,)
        lls.index_add_(0, p.owner, logp.double().cpu())
        misses.index_add_(0, p.owner, (~greedy).long().cpu())

    # -- resuming from recorded layer inputs ------------------------------------------------------
    def _check_resume(self, start_layer: int, head_mask, ffn_mask) -> None:
        cfg = self.model.config
        if not 0 <= start_layer < cfg.num_layers:
            raise ValueError(f"start_layer must be in [0, {cfg.num_layers}), got {start_layer}")
        if self._records is None:
            raise ValueError("start_layer needs recorded layer inputs: call run(record_layer_inputs=True) first")
        h, f = full_masks(self.model.config, head_mask, ffn_mask)
        rh, rf = self._record_masks
        if h.shape != rh.shape or f.shape != rf.shape or not (torch.equal(h[:start_layer], rh[:start_layer])
                                                              and torch.equal(f[:start_layer], rf[:start_layer])):
            raise ValueError(f"start_layer={start_layer}: the masks differ from the recorded run in layers "
                             f"< {start_layer}, so the recorded inputs of layer {start_layer} do not apply")


def _pad(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: (B, T) ids and the (B, T) 0/1 attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s)] = 1
    return ids, mask


def _long(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)
