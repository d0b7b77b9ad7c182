"""tasks/scoring.py against an independent lm-eval-style reference (one full forward per request)."""

from __future__ import annotations

import pytest
import torch

from conftest import FIXTURES, random_model
from opt66b import OPTConfig
from tasks.base import Request
from tasks.scoring import Scorer, token_requests

# fp32 sums of <= ~30 log-probs of magnitude ~5: float32 rounding of each term is ~1e-7 relative,
# and the batched/cached attention reduces in a different order; 1e-5 leaves 100x room.
ATOL = 1e-5


class CharTokenizer:
    """Deterministic stand-in: one token per character, ids 3..99 (below the 100-id real vocab)."""

    eos_id = 2

    def encode(self, text: str) -> list[int]:
        return [3 + ord(c) % 97 for c in text]


def cfg(**kw):
    base = dict(hidden_size=32, num_layers=3, num_heads=4, ffn_dim=64, vocab_size=128, max_positions=64,
                tokenizer_vocab_size=100)
    base.update(kw)
    return OPTConfig(**base)


def reference(model, tokenizer, requests, max_length):
    """lm-eval v0.3 `_loglikelihood_tokens`, batch 1, full logits, written independently of the Scorer."""
    out = []
    vocab = model.config.tokenizer_vocab_size
    for r in requests:
        ctx = tokenizer.encode(r.context) or [tokenizer.eos_id]
        cont = tokenizer.encode(r.continuation)
        inp = (ctx + cont)[-(max_length + 1):][:-1]
        logits = model(torch.tensor([inp])).logits[0, :, :vocab].float()  # (T, V_tok)
        logp = torch.log_softmax(logits, dim=-1)[len(inp) - len(cont):]  # (len(cont), V_tok)
        target = torch.tensor(cont)
        ll = logp.gather(1, target[:, None]).double().sum().item()  # float64 sum, as the Scorer
        greedy = bool((logp.argmax(-1) == target).all())
        out.append((ll, greedy))
    return out


def mixed_requests():
    long_ctx = "the quick brown fox jumps over the lazy dog " * 2  # 88 characters > max_length 40
    return [
        Request("Question: is it? Answer:", " yes"),
        Request("Question: is it? Answer:", " no"),
        Request("Question: is it? Answer:", " yes"),  # exact duplicate
        Request("Question: is it? Answer:", " maybe so, perhaps"),
        Request("A short one", " and a longer continuation here"),
        Request("", " empty context becomes eos"),
        Request(long_ctx, " a"),  # truncated: prefixes differ by continuation length
        Request(long_ctx, " abc"),
        Request(long_ctx, " abcdefgh"),
        Request(long_ctx, " b"),  # shares the truncated prefix of " a"
        Request("Winogrande one: Tom", " went home."),
        Request("Winogrande one: Ann", " went home."),
        Request("x", "y"),
    ]


@pytest.mark.parametrize("batch_tokens", [1, 37, 4096])
def test_scorer_equals_plain_reference(batch_tokens):
    model = random_model(cfg(), seed=3)
    tok, reqs, max_length = CharTokenizer(), mixed_requests(), 40
    want = reference(model, tok, reqs, max_length)
    got = Scorer(model, tok, reqs, batch_tokens=batch_tokens, max_length=max_length).run()
    assert len(got) == len(reqs)
    for i, ((ll, g), (ll_ref, g_ref)) in enumerate(zip(got, want)):
        assert abs(ll - ll_ref) <= ATOL, (i, reqs[i], ll, ll_ref)
        assert g == g_ref, i


def test_padded_pass_longer_than_max_positions():
    """max_length = the model's 64 positions; a 63-token truncated prefix and a short context with
    a long continuation share a context batch, so the continuation pass spans 63 + 30 columns."""
    model = random_model(cfg(), seed=4)
    long_ctx = "the quick brown fox jumps over the lazy dog " * 3
    reqs = [Request(long_ctx, " a"), Request(long_ctx, " b"),
            Request("Q: which one of them is it then?", " the first of the long answers"),
            Request("Q: which one of them is it then?", " the second of the long answers")]
    scorer = Scorer(model, CharTokenizer(), reqs)
    assert scorer.max_length == 64 and len(scorer.units) == 1  # both groups in one context batch
    past, new = scorer.units[0].main.ids.shape[1], scorer.units[0].conts[0].ids.shape[1]
    assert past + new > 64
    for (ll, g), (ll_ref, g_ref) in zip(scorer.run(), reference(model, CharTokenizer(), reqs, 64)):
        assert abs(ll - ll_ref) <= ATOL and g == g_ref


def test_plan_shares_contexts_and_truncation_falls_back():
    model = random_model(cfg(), seed=3)
    scorer = Scorer(model, CharTokenizer(), mixed_requests(), batch_tokens=4096, max_length=40)
    assert scorer.stats["unique_requests"] == 12  # the duplicate " yes" is scored once
    toks = token_requests(CharTokenizer(), mixed_requests(), 40)
    assert len(toks[8].input_ids) == 40 and toks[6].prefix != toks[7].prefix  # left truncation
    assert toks[6].prefix == toks[9].prefix  # same continuation length -> same prefix -> shared
    assert toks[5].prefix == (CharTokenizer.eos_id,)
    # Shared units: the question context (4 conts) and the truncated prefix shared by " a" / " b".
    shared = [u for u in scorer.units if u.main.ctx_rows is None and len(set(u.main.owner.tolist())) > u.main.ids.shape[0]]
    assert shared and sum(u.main.ids.shape[0] for u in shared) == 2
    # The 24-token question context is fed once for " yes" / " no" (" maybe so, perhaps" is 18
    # tokens: 24 + 18 > 41 truncates its prefix, so it falls back to the plain path), and the
    # truncated 39-token prefix of " a" / " b" once instead of twice.
    assert toks[3].prefix != toks[0].prefix and toks[0].prefix == toks[1].prefix
    question = len("Question: is it? Answer:")
    fed_plain = sum(len(t.input_ids) for t in scorer.unique)
    assert scorer.stats["tokens_fed"] == fed_plain - question - 39
    assert scorer.stats["logit_positions"] == sum(len(t.continuation) for t in scorer.unique)


def test_vocab_slice_and_greedy_flag():
    """Continuations built as the argmax over the first 100 ids are greedy even though the padded
    rows 100..127 (boosted here) win the full-vocabulary argmax; one changed token breaks it."""
    model = random_model(cfg(), seed=5)
    with torch.no_grad():
        model.decoder.embed_tokens.weight[100:] *= 8.0  # padded rows: huge logits, never tokens
    tok = CharTokenizer()
    ctx = tok.encode("Greedy check:")
    cont = []
    for _ in range(6):
        logits = model(torch.tensor([ctx + cont])).logits[0, -1]  # (V,)
        cont.append(int(logits[:100].argmax()))
    full = model(torch.tensor([ctx + cont[:-1]])).logits[0, len(ctx) - 1:]  # (6, V)
    assert (full.argmax(-1) >= 100).any(), "precondition: some padded row beats the real vocabulary"

    class Fixed(CharTokenizer):
        def encode(self, text):
            return {"C": ctx, "G": cont, "B": cont[:3] + [(cont[3] + 1) % 97 + 3] + cont[4:]}[text]

    (ll, greedy), (ll_b, greedy_b) = Scorer(model, Fixed(), [Request("C", "G"), Request("C", "B")]).run()
    assert greedy and not greedy_b
    logp = torch.log_softmax(full[:, :100], dim=-1).gather(1, torch.tensor(cont)[:, None]).sum().item()
    assert abs(ll - logp) <= ATOL  # normalised over the 100 real ids only
    logp_full = torch.log_softmax(full, dim=-1).gather(1, torch.tensor(cont)[:, None]).sum().item()
    assert abs(ll - logp_full) > 1.0


def test_start_layer_equals_full_recompute():
    model = random_model(cfg(num_layers=4), seed=7)
    reqs = mixed_requests()
    scorer = Scorer(model, CharTokenizer(), reqs, batch_tokens=37, max_length=40)
    head = torch.ones(4, 4)
    head[0, 1] = 0.0  # a fixed head mask in every run: recorded runs may be masked too
    base = scorer.run(head_mask=head, record_layer_inputs=True)
    assert base == scorer.run(head_mask=head)  # recording changes nothing
    for layer in range(4):
        ffn = torch.ones(4)
        ffn[layer] = 0.0
        full = scorer.run(head_mask=head, ffn_mask=ffn)
        resumed = scorer.run(head_mask=head, ffn_mask=ffn, start_layer=layer)
        # Identical inputs and kernels: the resumed layers see bitwise the same tensors, so only
        # reduction-order noise could differ (none expected); 1e-5 as elsewhere.
        for (a, ga), (b, gb) in zip(full, resumed):
            assert abs(a - b) <= ATOL and ga == gb
        assert any(abs(a - b) > 1e-4 for (a, _), (b, _) in zip(full, base))  # the knockout mattered
    with pytest.raises(ValueError, match="differ from the recorded run"):
        scorer.run(ffn_mask=torch.tensor([0.0, 1.0, 1.0, 1.0]), start_layer=2)


def test_errors():
    model = random_model(cfg(), seed=0)
    with pytest.raises(ValueError, match="start_layer needs recorded"):
        Scorer(model, CharTokenizer(), [Request("a", " b")]).run(start_layer=1)
    with pytest.raises(ValueError, match="request 1: continuation '' encodes to no tokens"):
        Scorer(model, CharTokenizer(), [Request("a", " b"), Request("a", "")])
    with pytest.raises(ValueError, match="more than max_length"):
        Scorer(model, CharTokenizer(), [Request("a", "b" * 50)], max_length=40)


def _tensor_passes(scorer):
    """Each pass's (rows, new positions, key positions, real tokens, scored positions, KV row-positions held),
    read off the tensors the Scorer built."""
    units = []
    for unit in scorer.units:
        rows, width = unit.main.ids.shape
        context_kv = rows * width if unit.conts else 0
        passes = []
        for p in (unit.main, *unit.conts):
            b, new = p.ids.shape
            keys = p.mask.shape[1]
            passes.append((b, new, keys, int(p.mask[:, -new:].sum()), int(p.targets.numel()),
                           context_kv + (b * keys if p is not unit.main else 0)))
        units.append(tuple(passes))
    return tuple(units)


@pytest.mark.parametrize("budget", [64, 512, 4096])
def test_the_plans_batches_are_the_scorers_tensors(tokenizer, budget):
    """tasks/batching.py decides the batches on lengths; the Scorer builds its tensors from that layout and
    the plan prices it (evaluation_passes, through the tokenisation cache): every pass's shape, token and
    scored-position count and cached KV agree with the tensors, on every task of the fixtures at 0 and 5 shots."""
    from types import SimpleNamespace

    from opt66b import OPTConfig
    from tasks.evaluation import TaskEvaluation, evaluation_passes
    from tasks.registry import ALL_TASKS, get_task

    stand_in = SimpleNamespace(config=OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64,
                                                max_positions=2048))  # the Scorer reads the config only
    for name in ALL_TASKS:
        for k in (0, 5):
            task = get_task(name, FIXTURES)
            try:
                ev = TaskEvaluation(stand_in, tokenizer, task, k, limit=12, batch_tokens=budget)
            except (FileNotFoundError, ValueError):  # a split the fixtures lack
                continue
            assert ev.scorer.passes().units == _tensor_passes(ev.scorer), (name, k)
            assert evaluation_passes(task, k, 12, 42, 2048, budget, tokenizer) == ev.scorer.passes(), (name, k)
