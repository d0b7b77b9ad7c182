"""Copying scores: the share formula by hand, every variant against a naive full-vocabulary loop, and
an identity-OV head beating a random-OV head."""

from __future__ import annotations

import pytest
import torch

from conftest import random_model
from induction import sequences as sq
from induction.copying import copying_paper, copying_residual, copying_seed, shares
from opt66b import OPT, Capture, OPTConfig


def test_shares_by_hand():
    # T = 3: query 1 sees keys 0,1; query 2 sees keys 0,1,2 (query 0 = BOS is skipped)
    values = torch.tensor([[[9.0, 9.0, 9.0], [1.0, 3.0, 7.0], [1.0, 2.0, 4.0]]])  # (1, T, T); key 2 of row 1 is masked
    # row 1: mean 2 -> r = [0, 1] ; row 2: mean 7/3 -> r = [0, 0, 5/3]
    assert shares(values, torch.tensor([[0, 1, 2]]), exp_space=False).item() == pytest.approx(1.0)
    assert shares(values, torch.tensor([[0, 0, 2]]), exp_space=False).item() == pytest.approx(0.5)
    assert shares(values, torch.tensor([[0, 1, 1]]), exp_space=False).item() == pytest.approx(0.5)
    flat = torch.zeros(1, 3, 3)  # all equal -> sum r = 0 -> 0 by definition, never NaN
    assert shares(flat, torch.tensor([[0, 1, 2]]), exp_space=False).item() == 0.0


def _naive_share(z: torch.Tensor, m: int) -> float:
    r = torch.relu(z - z.mean())
    return float(r[m] / r.sum()) if r.sum() > 0 else 0.0


@torch.no_grad()
def _naive_paper(model: OPT, tokens: torch.Tensor, at_source: bool = False, text: bool = False,
                 literal: bool = False) -> torch.Tensor:
    """Algorithm 2 as the paper's released code runs it, step by step: out_proj on v placed in one head's slice,
    softmax over the full vocab, read at query j (at_source: at the attended position m_j instead).
    text: the attended token's own logits (no b_O, no softmax) at m_j ("attended_logits").
    literal: Appendix A.8 as written: the head's attention-weighted output at j through out_proj with
    b_O, as logits over the full vocabulary, read at the attendable ids."""
    cfg = model.config
    t, n_heads, dh = tokens.numel(), cfg.num_heads, cfg.head_dim
    x = model.embed(tokens.view(1, t), torch.arange(t).view(1, t) + 2)[0]  # (T, D)
    out = torch.zeros(cfg.num_layers, n_heads)
    for li, layer in enumerate(model.decoder.layers):
        att = layer.self_attn
        u = layer.self_attn_layer_norm(x)
        q = (att.q_proj(u) * att.scaling).view(t, n_heads, dh).transpose(0, 1)  # (H, T, Dh)
        k = att.k_proj(u).view(t, n_heads, dh).transpose(0, 1)  # (H, T, Dh)
        s = (q @ k.transpose(1, 2)).masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        probs_att = torch.softmax(s, -1)  # (H, T, T)
        v = att.v_proj(u)  # (T, D)
        for h in range(n_heads):
            placed = torch.zeros_like(v)
            placed[:, h * dh:(h + 1) * dh] = v[:, h * dh:(h + 1) * dh]
            if literal:  # row j: sum over positions k of A[j, k] times position k's output, then b_O
                mixed = torch.zeros_like(placed)
                mixed[:, h * dh:(h + 1) * dh] = probs_att[h] @ v[:, h * dh:(h + 1) * dh]  # (T, Dh)
                q_h = model.logits(att.out_proj(mixed))  # (T, V), b_O included, logits
            elif text:
                q_h = model.logits(placed @ att.out_proj.weight.T)  # (T, V): the head's own logits, no b_O
            else:
                q_h = torch.softmax(model.logits(att.out_proj(placed)), -1)  # (T, V), b_O included
            total = 0.0
            for j in range(1, t):
                m_j = int(probs_att[h, j, :j + 1].argmax())
                row = j if literal or not (at_source or text) else m_j
                total += _naive_share(q_h[row][tokens[:j + 1]], m_j)
            out[li, h] = total / (t - 1)
    return out


@torch.no_grad()
def _naive_residual(model: OPT, tokens: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    t, dh = tokens.numel(), cfg.head_dim
    cap = Capture(probs=True, heads=True)
    model(tokens.view(1, t), capture=cap)
    out = torch.zeros(cfg.num_layers, cfg.num_heads)
    for li, layer in enumerate(model.decoder.layers):
        w_o = layer.self_attn.out_proj.weight
        for h in range(cfg.num_heads):
            o = cap.heads[li][0, h] @ w_o[:, h * dh:(h + 1) * dh].T  # (T, D), no b_O
            logits = model.logits(o)  # (T, V), no final LN
            out[li, h] = sum(_naive_share(logits[j][tokens[:j + 1]], int(cap.probs[li][0, h, j, :j + 1].argmax()))
                             for j in range(1, t)) / (t - 1)
    return out


def test_both_variants_match_naive_full_vocabulary_loops():
    cfg = OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, vocab_size=128, max_positions=64)
    model = random_model(cfg, seed=5)
    tokens = sq.copying_sequence(list(range(3, 128)), seed=0, bos_id=2, length=20)  # (21,)
    naive_paper = _naive_paper(model, tokens)
    # 1e-5: float32 softmax / exp of the same logits; the shortcut drops only a per-row constant
    torch.testing.assert_close(copying_paper(model, tokens), naive_paper, atol=1e-5, rtol=0)
    torch.testing.assert_close(copying_paper(model, tokens, exact_softmax=True, position_chunk=7), naive_paper,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(copying_paper(model, tokens, head_chunk=3), naive_paper, atol=1e-5, rtol=0)
    torch.testing.assert_close(copying_residual(model, tokens, head_chunk=1), _naive_residual(model, tokens),
                               atol=1e-5, rtol=0)


def identity_ov_model() -> OPT:
    """One layer, two heads that both attend to themselves (W_Q = W_K on the token subspace). Head 0's
    OV circuit is the identity on the 32 token dims (its output raises its input token's logit);
    head 1's is random. Token embeddings live in dims 0..31, positions are zero."""
    cfg = OPTConfig(hidden_size=64, num_layers=1, num_heads=2, ffn_dim=8, vocab_size=64, max_positions=64)
    model = OPT(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if "layer_norm.weight" in name else 0.0)
        dec, att = model.decoder, model.decoder.layers[0].self_attn
        dec.embed_tokens.weight[:, :32] = torch.randn(64, 32, generator=gen)
        eye = torch.eye(32)
        for h in (0, 1):
            rows = slice(32 * h, 32 * (h + 1))
            att.q_proj.weight[rows, :32] = eye  # self-match: x_j . x_k is largest for k = j
            att.k_proj.weight[rows, :32] = eye
        att.v_proj.weight[:32, :32] = eye
        att.out_proj.weight[:32, :32] = eye  # head 0: W_O W_V = identity on the token dims
        att.v_proj.weight[32:, :32] = torch.randn(32, 32, generator=gen) / 32 ** 0.5
        att.out_proj.weight[:32, 32:] = torch.randn(32, 32, generator=gen) / 32 ** 0.5  # head 1: random OV
    return model


def test_identity_ov_head_outscores_random_ov_head():
    model = identity_ov_model()
    pool = list(range(3, 64))
    attended = lambda m, t: copying_paper(m, t, read_at="source", logits=True)  # noqa: E731
    attended.__name__ = "attended_logits"
    text = lambda m, t: copying_seed(m, t, ["text"])["text"]  # noqa: E731
    text.__name__ = "text"
    for fn in (copying_paper, copying_residual, attended, text):
        scores = torch.stack([fn(model, sq.copying_sequence(pool, s, 2, length=40)) for s in range(2)]).mean(0)
        # measured: identity head 1.00 (paper) / 0.55 (corrected: a share of raw logits, not of
        # probabilities), random head 0.16 / 0.09; the bars leave room for float differences
        assert scores[0, 0] > 0.45, (fn.__name__, scores)
        assert scores[0, 0] > scores[0, 1] + 0.2, (fn.__name__, scores)


@torch.no_grad()
def _attends_elsewhere_share(model: OPT, tokens: torch.Tensor) -> float:
    """Share of (layer, head, query j >= 1) whose embedding-level attention argmax m_j is not j."""
    cfg = model.config
    t, n_heads, dh = tokens.numel(), cfg.num_heads, cfg.head_dim
    x = model.embed(tokens.view(1, t), torch.arange(t).view(1, t) + 2)[0]  # (T, D)
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # (T, T)
    elsewhere = []
    for layer in model.decoder.layers:
        att = layer.self_attn
        u = layer.self_attn_layer_norm(x)
        q = att.q_proj(u).view(t, n_heads, dh).transpose(0, 1)  # (H, T, Dh)
        k = att.k_proj(u).view(t, n_heads, dh).transpose(0, 1)  # (H, T, Dh)
        m = (q @ k.transpose(1, 2)).masked_fill(~causal, float("-inf")).argmax(-1)  # (H, T)
        elsewhere.append(m[:, 1:] != torch.arange(1, t))
    return float(torch.stack(elsewhere).float().mean())


def test_index_fix_matches_a_full_vocabulary_loop_on_heads_attending_elsewhere():
    """The index-fix-only variant reads the OV output at the attended source position m_j. On heads
    that attend to themselves it equals the paper's; here most queries attend elsewhere, so the loop
    checks the source indexing and the test sees the two variants differ."""
    cfg = OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, vocab_size=128, max_positions=64)
    model = random_model(cfg, seed=11)
    with torch.no_grad():  # larger query/key weights: sharp attention, mostly on other positions
        for layer in model.decoder.layers:
            layer.self_attn.q_proj.weight.mul_(3.0)
            layer.self_attn.k_proj.weight.mul_(3.0)
    tokens = sq.copying_sequence(list(range(3, 128)), seed=1, bos_id=2, length=20)  # (21,)
    assert _attends_elsewhere_share(model, tokens) > 0.5
    naive = _naive_paper(model, tokens, at_source=True)
    # 1e-5: float32 softmax / exp of the same logits, as in the test above
    torch.testing.assert_close(copying_paper(model, tokens, read_at="source"), naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(copying_paper(model, tokens, read_at="source", exact_softmax=True, position_chunk=6,
                                             head_chunk=3), naive, atol=1e-5, rtol=0)
    paper = copying_paper(model, tokens)
    assert float((paper - naive).abs().max()) > 0.05  # the index matters on these heads
    # the paper's text: the same source index, the head's own logits (no b_O), no softmax
    text = _naive_paper(model, tokens, text=True)
    # 1e-5: the same float32 logits, summed in another order
    torch.testing.assert_close(copying_paper(model, tokens, read_at="source", logits=True), text, atol=1e-5, rtol=0)
    assert float((text - naive).abs().max()) > 0.02  # logits vs probabilities: measured 0.043, far above 1e-5
    # Appendix A.8 as written: the attention-weighted output with b_O, as logits
    literal = _naive_paper(model, tokens, literal=True)
    # 1e-5: the same float32 logits, summed in another order
    torch.testing.assert_close(copying_seed(model, tokens, ["text"], head_chunk=3)["text"], literal, atol=1e-5, rtol=0)
    assert float((literal - text).abs().max()) > 0.02  # the weighted output is not the attended row alone
    with pytest.raises(ValueError, match="read_at"):
        copying_paper(model, tokens, read_at="key")


def test_the_literal_text_variant_by_hand():
    """One layer, one head, D = 2, vocabulary 4, tokens [BOS=0, 1, 2]: every number below is worked by hand.
    Embeddings e0 = (0, 0), e1 = (1, 0), e2 = (0, 1), no positions, the layer norm replaced by the identity,
    W_V = W_O = I, b_O = (0.5, 0), unembedding = the embeddings (tied); q = k = 0 first (uniform attention)."""
    cfg = OPTConfig(hidden_size=2, num_layers=1, num_heads=1, ffn_dim=2, vocab_size=4, max_positions=8)
    model = OPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.zero_()
        emb = model.decoder.embed_tokens.weight
        emb[1], emb[2], emb[3] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
        att = model.decoder.layers[0].self_attn
        att.v_proj.weight.copy_(torch.eye(2))
        att.out_proj.weight.copy_(torch.eye(2))
        att.out_proj.bias.copy_(torch.tensor([0.5, 0.0]))
    model.decoder.layers[0].self_attn_layer_norm = torch.nn.Identity()  # x itself reaches the head
    tokens = torch.tensor([0, 1, 2])
    # j = 1: A = (1/2, 1/2) over e0, e1 -> o = (1/2, 0) + b_O = (1, 0); logits at ids (0, 1): (0, 1); mean 1/2,
    #        r = (0, 1/2); m_1 = 0 (uniform: the first key) -> share 0
    # j = 2: A = 1/3 each over e0, e1, e2 -> o = (1/3, 1/3) + b_O = (5/6, 1/3); logits at ids (0, 1, 2):
    #        (0, 5/6, 1/3), mean 7/18, r = (0, 8/18, 0); m_2 = 0 -> share 0
    # uniform attention picks BOS (the first of ties) as m_j at every query: the score is 0
    assert copying_seed(model, tokens, ["text"])["text"].item() == pytest.approx(0.0, abs=1e-6)
    import math

    with torch.no_grad():  # q = a x, k = x with a = sqrt(2) ln 2: the score of key k is ln 2 (x_j . x_k)
        att.q_proj.weight.copy_(math.sqrt(2) * math.log(2) * torch.eye(2))  # (the head scales q by 1/sqrt(2))
        att.k_proj.weight.copy_(torch.eye(2))
    # j = 1 (e1): scores (0, ln 2) -> A = (1/3, 2/3), m_1 = 1; o = 2/3 e1 + b_O = (7/6, 0); logits at ids (0, 1):
    #        (0, 7/6), mean 7/12, r = (0, 7/12) -> share 1
    # j = 2 (e2): scores (0, 0, ln 2) -> A = (1/4, 1/4, 1/2), m_2 = 2; o = 1/4 e1 + 1/2 e2 + b_O = (3/4, 1/2);
    #        logits at (0, 1, 2): (0, 3/4, 1/2), mean 5/12, r = (0, 1/3, 1/12) -> share (1/12) / (5/12) = 1/5
    # score (1 + 1/5) / 2 = 0.6; 1e-6: float32 arithmetic on these few numbers
    assert copying_seed(model, tokens, ["text"])["text"].item() == pytest.approx(0.6, abs=1e-6)
    # the attended row alone (no weighting, no b_O): j = 1 row e1 -> logits (0, 1), share 1; j = 2 row e2 ->
    # logits (0, 0, 1), share 1: score 1, the narrower reading the text does not describe
    assert copying_seed(model, tokens, ["attended_logits"])["attended_logits"].item() == pytest.approx(1.0, abs=1e-6)
