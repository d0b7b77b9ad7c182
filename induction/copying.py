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

Five variants, named for what they are:

"paper": the computation as the paper's released code runs it. The same embedding-level input x =
    E[tok] + P[pos] feeds every layer (the residual stream is never propagated); u = LN1_l(x); A from u
    (causal); the head's OV output at the *query* position, o_h = W_O^h v_proj(u)_h[j] + b_O (b_O for
    every head), goes through the unembedding with no final layer norm, and z = softmax over the full
    vocabulary at c.
    Implementation note: score_j is invariant to multiplying z by a positive constant per row, and
    softmax(l)[c] = exp(l[c] - max) * exp(max - logsumexp(l)), so z = exp(l[c] - max_c l[c]) gives the
    identical score without the 50272-way normaliser (`exact_softmax=True` computes the normaliser in
    position chunks as the code does; the tests check both agree).
"index_fix": the released code with only its index fixed: z is read from the OV output of the
    attended *source* position m_j, o_h = W_O^h v_proj(u)_h[m_j] + b_O, still with b_O, no final layer
    norm and full-vocabulary probabilities. A difference between "paper" and "index_fix" is the index
    bug's alone; for a head attending to itself (m_j = j) the two agree exactly.
"attended_logits": the attended token's OV output alone as logits: z = W_U W_O^h v_h[m_j] (no b_O),
    compared as logits. It fixes both of the code's departures from the text (probabilities, the
    query position) but keeps only the most-attended token's row of the head's output and drops b_O:
    narrower than the text (an earlier version called it "text").
"text": Appendix A.8 as written: "directly feed the sequence through each head and compute the
    contribution of the head to the output logits, and then measure how much the head increased the
    logit of the maximally attended to token over increasing the logits of other attendable tokens".
    The head's contribution at query j is its attention-weighted output through its slice of W_O,
    o_h[j] = sum_k A_h[j, k] W_O^h v_h[k] + b_O (the text drops no bias), on the direct path (the same
    embedding-level input as "paper"); z = the logits W_U o_h[j] at the attendable ids c, compared as
    logits; m_j = argmax_k A_h[j, k].
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

VARIANTS = ("paper", "index_fix", "attended_logits", "text", "residual")
# the direct-path variants: (where the OV output is read, compared as logits, with b_O)
DIRECT = {"paper": ("query", False, True), "index_fix": ("source", False, True),
          "attended_logits": ("source", True, False), "text": ("weighted", True, True)}


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
                  position_chunk: int = 256, read_at: str = "query", logits: bool = False,
                  bias: bool | None = None) -> torch.Tensor:
    """A direct-path copying score (see module docstring) for `tokens` (T,) = BOS + distinct ids.
    read_at="query": the head's OV output at query j (the released code); "source": at the attended
    position m_j ("index_fix", "attended_logits"); "weighted": the attention-weighted sum over positions
    ("text"). logits=True compares logits, not probabilities. bias: add b_O (default: when comparing
    probabilities, as the code does). The DIRECT table names each variant's choices. Returns (L, H) float32."""
    if read_at not in ("query", "source", "weighted"):
        raise ValueError(f"read_at must be 'query', 'source' or 'weighted', got {read_at!r}")
    if logits and exact_softmax:
        raise ValueError("exact_softmax normalises probabilities; the logits variant has none")
    cfg = model.config
    t = tokens.numel()
    dev0 = model.decoder.embed_tokens.weight.device
    ids = tokens.view(1, t).to(dev0)  # (1, T)
    x = model.embed(ids, torch.arange(t, device=dev0).view(1, t) + 2)  # (1, T, D), table row = position + 2
    out = torch.zeros(cfg.num_layers, cfg.num_heads)
    for li in range(cfg.num_layers):
        with layer_weights(model, li) as layer:  # a streamed layer is fetched for the block
            att = layer.self_attn
            if att.num_heads == 0:  # a pruned checkpoint's layer without heads: nothing to copy
                continue
            v, probs, attended = _direct_path(layer, x, t)  # (H, T, Dh), (H, T, T), (H, T)
            u_c = _unembed_rows(model, tokens, layer.device)  # (T, D)
            m = _heads_through_unembedding(u_c, att)  # (T, H, Dh)
            with_bias = (not logits) if bias is None else bias
            bias_logit = u_c @ att.out_proj.bias.float() if with_bias and att.out_proj.bias is not None \
                else torch.zeros(t, device=layer.device)
            for h0 in range(0, cfg.num_heads, head_chunk):
                hs = slice(h0, min(h0 + head_chunk, cfg.num_heads))
                z = torch.einsum("hjd,khd->hjk", v[hs], m[:, hs])  # (hc, T, T) OV output at position j, id of k
                if read_at == "source":  # row j <- row m_j: the attended position's output, read at query j's ids
                    z = z.gather(1, attended[hs].unsqueeze(-1).expand(-1, -1, t))  # (hc, T, T)
                elif read_at == "weighted":  # the head's output at j: sum_k A[j, k] (output of position k)
                    z = probs[hs] @ z  # (hc, T, T) @ (hc, T, T)
                z = z + bias_logit
                if exact_softmax:
                    lse = _full_vocab_lse(model, att, v[hs], hs.start, position_chunk)  # (hc, T) per output row
                    if read_at == "source":
                        lse = lse.gather(1, attended[hs])  # (hc, T): the normaliser of row m_j
                    out[li, hs] = shares(torch.exp(z - lse.unsqueeze(-1)), attended[hs], exp_space=False).cpu()
                else:
                    out[li, hs] = shares(z, attended[hs], exp_space=not logits).cpu()
            if att.head_ids is not None:  # heads a pruned checkpoint lacks copy nothing (their b_O-only logits
                removed = [h for h in range(cfg.num_heads) if h not in att.head_ids]  # would give a share anyway)
                out[li, removed] = 0.0
    return out


def _direct_path(layer: torch.nn.Module, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(v, A, m) of one layer's heads on the embedding-level input x (1, T, D): the value vectors (H, T, Dh)
    float32 (b_V included), the causal attention probabilities (H, T, T) and the attended position m_j
    (H, T) (argmax of the scores: softmax is monotone; the first of ties), in the original head numbering
    (a pruned checkpoint's missing heads hold zeros)."""
    att = layer.self_attn
    u = layer.self_attn_layer_norm(x.to(layer.device))[0]  # (T, D)
    q = (att.q_proj(u) * att.scaling).view(t, att.num_heads, -1).transpose(0, 1)  # (h, T, Dh)
    k = att.k_proj(u).view(t, att.num_heads, -1).transpose(0, 1)  # (h, T, Dh)
    v = att.v_proj(u).view(t, att.num_heads, -1).transpose(0, 1).float()  # (h, T, Dh)
    causal = torch.ones(t, t, dtype=torch.bool, device=u.device).tril()  # (T, T)
    scores = (q @ k.transpose(-1, -2)).float().masked_fill(~causal, float("-inf"))  # (h, T, T)
    probs, attended = torch.softmax(scores, -1), scores.argmax(-1)  # (h, T, T), (h, T)
    return tuple(att.to_all_heads(a[None])[0] for a in (v, probs, attended))


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
        if v in DIRECT:
            read_at, logits, bias = DIRECT[v]
            out[v] = copying_paper(model, tokens, head_chunk=head_chunk, read_at=read_at, logits=logits, bias=bias)
        elif v == "residual":
            out[v] = copying_residual(model, tokens, head_chunk=head_chunk)
        else:
            raise ValueError(f"unknown copying variant {v!r}; choose from {VARIANTS}")
    return out
