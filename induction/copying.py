"""Copying score per attention head: the paper's "Algorithm 2" as its code runs it, as its text reads, and beside them.

Mirrors amazon-science/llm-interpret lm_eval/prefix_matching_copying.py (paper Appendix A.8,
Algorithm 2; docs/method.md, "Copying"). Input: BOS + N distinct random tokens (N = 4(25 + 2s)).
Every variant scores each query position j = 1 .. T-1 (BOS excluded) and average over j:

    c      = the tokens at positions 0..j (the "attendable" tokens, BOS included)
    z      = head h's output at j, read at the vocabulary ids c        (T_j = j + 1 values)
    r      = ReLU(z - mean(z))
    score_j = r[m_j] / sum(r)   (0 when sum(r) = 0),  m_j = argmax_k A_h[j, k]  (first on ties)

A score is in [0, 1]; a head whose output raises the logit of the token it attends to scores near 1,
a non-copying head keeps a positive floor of about 1 / (number of positive entries of r).

Four variants, named for what they are:

"paper": the computation as the paper's code runs it. The same embedding-level input x = E[tok] +
    P[pos] feeds every layer (the residual stream is never propagated); u = LN1_l(x); A from u
    (causal); the head's OV output at the *query* position, o_h = W_O^h v_proj(u)_h[j] + b_O (b_O for
    every head), goes through the unembedding with no final layer norm, and z = softmax over the full
    vocabulary at c.
    Implementation note: score_j is invariant to multiplying z by a positive constant per row, and
    softmax(l)[c] = exp(l[c] - max) * exp(max - logsumexp(l)), so z = exp(l[c] - max_c l[c]) gives the
    identical score without the 50272-way normaliser (`exact_softmax=True` computes the normaliser in
    position chunks as the code does; the tests check both agree).
"index_fix": the paper's computation with only its index fixed: z is read from the OV output of the
    attended *source* position m_j, o_h = W_O^h v_proj(u)_h[m_j] + b_O, still with b_O, no final layer
    norm and full-vocabulary probabilities. A difference between "paper" and "index_fix" is the index
    bug's alone; for a head attending to itself (m_j = j) the two agree exactly.
"text": what the paper's text (Appendix A.8) describes: feed the sequence directly through the head
    (the same embedding-level input as "paper", the direct path), take the head's own contribution to
    the output logits, W_U W_O^h v_h[m_j] (the attended token's OV output, no b_O, which belongs to no
    head), and measure how much it raises the *logit* of the maximally attended token over the other
    attendable tokens: z = logits at c, not probabilities. It fixes both of the code's departures from
    its text (probabilities, the query position); "index_fix" fixes the second only.
"residual": an extension of the paper, not a correction of it: the real forward pass. z_h[j] =
    sum_k A_h[j, k] v_h[k] (the head's attention-weighted value vector, exactly what out_proj reads, on
    the true residual stream instead of the embedding-level input), pushed through head h's slice of
    out_proj without b_O and the LN-free unembedding: z = logits at the attendable ids c; m_j from the
    head's real attention. It asks whether a head copies *in the running model*, where earlier layers
    have already written into its input; the paper's question is about the direct path.

Memory: neither variant forms a (heads, T, V) tensor. Only the T attendable ids are unembedded:
U_c = W_U[tokens] (T, D) and M = U_c W_O (T, H*Dh); per head chunk the (hc, T, T) logits are formed.
Peak beyond the model: about (2 T D + H T Dh + 3 hc T^2) floats (float32), e.g. ~0.5 GB for OPT-66B
at T = 893 with hc = 8; `exact_softmax` adds a (pc, V) logits block per head (pc = position chunk).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from opt66b import OPT, Capture
from opt66b.offload import layer_weights, running_layer

VARIANTS = ("paper", "index_fix", "text", "residual")


def shares(values: torch.Tensor, attended: torch.Tensor, exp_space: bool) -> torch.Tensor:
    """Mean over queries j >= 1 of r[m_j] / sum(r), r = ReLU(z - mean z) over keys k <= j.

    values: (h, T, T) head output at query j read at the id of the token at key k (logits).
    attended: (h, T) int64 m_j. exp_space: z = exp(values - row max) (the paper's probabilities up
    to a per-row constant) instead of the values themselves. Returns (h,) float32.
    """
    h, t, _ = values.shape
    valid = torch.ones(t, t, dtype=torch.bool, device=values.device).tril()  # (T, T) keys k <= j
    values = values.float()
    if exp_space:
        masked = values.masked_fill(~valid, float("-inf"))
        z = torch.exp(masked - masked.amax(-1, keepdim=True))  # (h, T, T), 0 off the valid keys
    else:
        z = values.masked_fill(~valid, 0.0)
    count = valid.sum(-1).to(z.dtype)  # (T,) j + 1 attendable tokens
    mean = z.sum(-1) / count  # (h, T)
    r = F.relu(z - mean.unsqueeze(-1)) * valid  # (h, T, T)
    total = r.sum(-1)  # (h, T)
    picked = r.gather(-1, attended.unsqueeze(-1)).squeeze(-1)  # (h, T)
    score = torch.where(total > 0, picked / total.clamp_min(torch.finfo(z.dtype).tiny), torch.zeros_like(total))
    return score[:, 1:].mean(-1)  # BOS is never a query


def _unembed_rows(model: OPT, tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(T, D) float32 rows of the unembedding for `tokens`, mapped back through project_out when the
    model has one (logit = W_U[t] . project_out(o))."""
    u = model.output_weight[tokens.to(model.output_weight.device)].float()  # (T, W)
    if model.config.has_projection:
        u = u @ model.decoder.project_out.weight.float().to(u.device)  # (T, W) @ (W, D) -> (T, D)
    return u.to(device)


def _heads_through_unembedding(u_c: torch.Tensor, att: torch.nn.Module) -> torch.Tensor:
    """M[k, h] = W_O^h^T U_c[k]: (T, H, Dh), so head h's logit of token k from a value vector v is v . M[k, h].
    A head removed from a pruned checkpoint has W_O^h = 0."""
    t = u_c.shape[0]
    w_o = att.out_weight_by_head().to(u_c.device).float().flatten(1)  # (D, H, Dh) -> (D, H*Dh)
    return (u_c @ w_o).view(t, att.total_heads, -1)  # (T, D) @ (D, H*Dh) -> (T, H, Dh)


@torch.no_grad()
def copying_paper(model: OPT, tokens: torch.Tensor, head_chunk: int = 8, exact_softmax: bool = False,
                  position_chunk: int = 256, read_at: str = "query", logits: bool = False) -> torch.Tensor:
    """The direct-path copying score (see module docstring) for `tokens` (T,) = BOS + distinct ids.
    read_at="query": the head's OV output at query j (the code); "source": at the attended
    position m_j ("index_fix"). logits=True: the head's own logit contribution (no b_O) compared as
    logits, not probabilities (with read_at="source": the "text" variant). Returns (L, H) float32."""
    if read_at not in ("query", "source"):
        raise ValueError(f"read_at must be 'query' or 'source', got {read_at!r}")
    if logits and exact_softmax:
        raise ValueError("exact_softmax normalises probabilities; the logits variant has none")
    cfg = model.config
    t = tokens.numel()
    dev0 = model.decoder.embed_tokens.weight.device
    ids = tokens.view(1, t).to(dev0)  # (1, T)
    x = model.embed(ids, torch.arange(t, device=dev0).view(1, t) + 2)  # (1, T, D), table row = position + 2
    out = torch.zeros(cfg.num_layers, cfg.num_heads)
    causal = torch.ones(t, t, dtype=torch.bool).tril()  # (T, T)
    for li in range(cfg.num_layers):
        with layer_weights(model, li) as layer:  # a streamed layer is fetched for the block
            dev = layer.device
            att = layer.self_attn
            u = layer.self_attn_layer_norm(x.to(dev))[0]  # (T, D)
            if att.num_heads == 0:  # a pruned checkpoint's layer without heads: nothing to copy
                continue
            # h kept heads (all H unless the checkpoint is pruned), then back to the original numbering
            q = (att.q_proj(u) * att.scaling).view(t, att.num_heads, -1).transpose(0, 1)  # (h, T, Dh)
            k = att.k_proj(u).view(t, att.num_heads, -1).transpose(0, 1)  # (h, T, Dh)
            v = att.v_proj(u).view(t, att.num_heads, -1).transpose(0, 1).float()  # (h, T, Dh), b_V included
            scores = (q @ k.transpose(-1, -2)).float()  # (h, T, T); softmax is monotone, argmax suffices
            attended = scores.masked_fill(~causal.to(dev), float("-inf")).argmax(-1)  # (h, T)
            v, attended = att.to_all_heads(v[None])[0], att.to_all_heads(attended[None])[0]  # (H, T, Dh), (H, T)
            u_c = _unembed_rows(model, tokens, dev)  # (T, D)
            m = _heads_through_unembedding(u_c, att)  # (T, H, Dh)
            with_bias = att.out_proj.bias is not None and not logits  # b_O is no head's contribution
            bias_logit = u_c @ att.out_proj.bias.float() if with_bias else torch.zeros(t, device=dev)
            for h0 in range(0, cfg.num_heads, head_chunk):
                hs = slice(h0, min(h0 + head_chunk, cfg.num_heads))
                z = torch.einsum("hjd,khd->hjk", v[hs], m[:, hs]) + bias_logit  # (hc, T, T) output at j, id of k
                if read_at == "source":
                    # row j <- row m_j: the OV output of the attended position, still read at query j's ids c
                    rows = attended[hs].unsqueeze(-1).expand(-1, -1, t)  # (hc, T, T)
                    z = z.gather(1, rows)
                if exact_softmax:
                    lse = _full_vocab_lse(model, att, v[hs], hs.start, position_chunk)  # (hc, T) per output row
                    if read_at == "source":
                        lse = lse.gather(1, attended[hs])  # (hc, T): the normaliser of row m_j
                    probs = torch.exp(z - lse.unsqueeze(-1))  # (hc, T, T): full-vocabulary softmax at ids c
                    out[li, hs] = shares(probs, attended[hs], exp_space=False).cpu()
                else:
                    out[li, hs] = shares(z, attended[hs], exp_space=not logits).cpu()
            if att.head_ids is not None:  # heads a pruned checkpoint lacks copy nothing (their b_O-only logits
                removed = [h for h in range(cfg.num_heads) if h not in att.head_ids]  # would give a share anyway)
                out[li, removed] = 0.0
    return out


def _full_vocab_lse(model: OPT, att: torch.nn.Module, v: torch.Tensor, first_head: int, chunk: int) -> torch.Tensor:
    """(hc, T) logsumexp over the whole vocabulary of W_U (W_O^h v_h + b_O), one (chunk, V) block at a time."""
    hc, t, dh = v.shape
    w = model.output_weight.float()
    out = torch.empty(hc, t, device=v.device)
    w_all = att.out_weight_by_head()  # (D, H, Dh)
    for i in range(hc):
        w_o = w_all[:, first_head + i].float()  # (D, Dh)
        for p0 in range(0, t, chunk):
            o = v[i, p0:p0 + chunk] @ w_o.T  # (pc, D)
            if att.out_proj.bias is not None:
                o = o + att.out_proj.bias.float()
            o = _project_out(model, o)  # (pc, W)
            lse = torch.logsumexp(F.linear(o.to(w.device), w), dim=-1)  # (pc, V) -> (pc,)
            out[i, p0:p0 + chunk] = lse.to(v.device)
    return out


def _project_out(model: OPT, o: torch.Tensor) -> torch.Tensor:
    if model.config.has_projection:
        return o @ model.decoder.project_out.weight.float().T  # (pc, D) -> (pc, W)
    return o


class _CopyingCapture(Capture):
    """Scores each layer as the real forward reaches it: record_probs keeps only the (H, T) argmax,
    record_heads turns the (1, H, T, Dh) head outputs into scores; nothing else is kept."""

    def __init__(self, model: OPT, tokens: torch.Tensor, head_chunk: int):
        super().__init__(probs=True, heads=True)
        self.model, self.tokens, self.head_chunk = model, tokens, head_chunk
        cfg = model.config
        self.scores = torch.zeros(cfg.num_layers, cfg.num_heads)
        self.attended: torch.Tensor | None = None
        self.u_c: dict[torch.device, torch.Tensor] = {}

    def record_probs(self, layer: int, probs: torch.Tensor) -> None:
        self.attended = probs[0].argmax(-1)  # (H, T); masked keys hold probability 0

    def record_heads(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        dev = z.device
        if dev not in self.u_c:
            self.u_c[dev] = _unembed_rows(self.model, self.tokens, dev)
        att = running_layer(self.model, layer).self_attn  # the stream buffer when the layer is streamed
        n_heads = self.model.config.num_heads
        m = _heads_through_unembedding(self.u_c[dev], att)  # (T, H, Dh), no b_O
        zf = z[0].float()  # (H, T, Dh)
        for h0 in range(0, n_heads, self.head_chunk):
            hs = slice(h0, min(h0 + self.head_chunk, n_heads))
            logits = torch.einsum("hjd,khd->hjk", zf[hs], m[:, hs])  # (hc, T, T)
            self.scores[layer, hs] = shares(logits, self.attended[hs], exp_space=False).cpu()
        return z


@torch.no_grad()
def copying_residual(model: OPT, tokens: torch.Tensor, head_chunk: int = 8) -> torch.Tensor:
    """The residual-stream copying score (see module docstring) for `tokens` (T,). Returns (L, H) float32."""
    cap = _CopyingCapture(model, tokens, head_chunk)
    dev0 = model.decoder.embed_tokens.weight.device
    model(tokens.view(1, -1).to(dev0), capture=cap, logits="none")  # (1, T)
    return cap.scores


def copying_seed(model: OPT, tokens: torch.Tensor, variants: Iterable[str] = VARIANTS,
                 head_chunk: int = 8) -> dict[str, torch.Tensor]:
    """{variant: (L, H) copying scores} for one sequence."""
    out = {}
    for v in variants:
        if v == "paper":
            out[v] = copying_paper(model, tokens, head_chunk=head_chunk)
        elif v == "index_fix":
            out[v] = copying_paper(model, tokens, head_chunk=head_chunk, read_at="source")
        elif v == "text":
            out[v] = copying_paper(model, tokens, head_chunk=head_chunk, read_at="source", logits=True)
        elif v == "residual":
            out[v] = copying_residual(model, tokens, head_chunk=head_chunk)
        else:
            raise ValueError(f"unknown copying variant {v!r}; choose from {VARIANTS}")
    return out
