"""A hand-written OPT decoder whose numbers match transformers' `OPTForCausalLM`.

Mirrors huggingface/transformers src/transformers/models/opt/modeling_opt.py (facts in
docs/porting.md). Parameter names are HF's, under `decoder.`, so loading
is "strip an optional `model.` prefix" and nothing more.

Dimension letters used in shape comments:
    B batch, T new positions, S key positions (past + new), D hidden_size, W word_embed_proj_dim,
    H heads, Dh head dim, F ffn_dim, V vocab (50272 rows), L layers.

Interventions are explicit forward arguments:
    head_mask (L, H): multiplies each head's attention-weighted value vector (its output before
        out_proj). 0 zeroes the head; out_proj's bias is per layer and stays, as in the paper's released code.
    ffn_mask (L,): scales the layer's whole FFN block. 0 skips it (the block is not computed); a
        post-LN (350m) layer still applies its trailing layer norm, as in the paper's released code.
    Physically pruned checkpoints (config.pruned_heads / pruned_ffn, written by export.py) compute
    only the heads and FFNs they have; masks stay (L, H) / (L,) in the original numbering, and a
    removed head or FFN is absent whatever its mask value (as if masked with 0).
    capture: a `Capture` (see capture.py) that records attention probabilities and per-head outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .capture import Capture
from .config import OPTConfig

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each (B, H, S, Dh)
POSITION_OFFSET = 2  # OPT's learned positions start at table row 2 (fairseq padding_idx 1 + 1)


@dataclass
class DecoderOutput:
    logits: torch.Tensor | None  # (B, T, V) or (B, 1, V) with logits="last"; None with logits="none"
    hidden: torch.Tensor  # (B, T, W): what the output head reads (after final LN / project_out)
    past_key_values: KVCache | None


def position_ids_from_mask(attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Table rows for the last `new_tokens` columns of a (B, S) 0/1 mask covering past + new tokens.

    Real tokens count 0, 1, 2, ... from the first real token (left padding does not shift them);
    pads get -1. Then the offset 2 is added: first real token -> row 2, pad -> row 1, row 0 unused.
    """
    mask = attention_mask.long()
    positions = torch.cumsum(mask, dim=1) * mask - 1  # (B, S)
    return positions[:, -new_tokens:] + POSITION_OFFSET  # (B, T)


def attention_allowed(key_real: torch.Tensor | None, batch: int, new: int, past: int,
                      device: torch.device) -> torch.Tensor:
    """Boolean (B, 1, T, S) mask: True where query t may attend key s.

    Causal over absolute positions, minus padded keys. A query's own key is always allowed, so a
    pad query row (left padding) is never fully masked: its output is garbage we never read, but
    finite (a fully masked row would give NaN in fused kernels).
    """
    total = past + new
    q_abs = torch.arange(past, total, device=device).view(new, 1)  # (T, 1)
    k_abs = torch.arange(total, device=device).view(1, total)  # (1, S)
    allowed = (k_abs <= q_abs).view(1, 1, new, total)  # (1, 1, T, S)
    if key_real is not None:
        allowed = allowed & key_real.bool().view(batch, 1, 1, total)  # (B, 1, T, S)
        allowed = allowed | (k_abs == q_abs).view(1, 1, new, total)
    return allowed.expand(batch, 1, new, total)


class Attention(nn.Module):
    """OPT self-attention over the heads this layer has. In a pruned checkpoint (config.pruned_heads)
    q/k/v have rows and out_proj has columns for the kept heads only; head masks, captured
    probabilities and head outputs stay in the original numbering (H heads, removed ones zero)."""

    def __init__(self, cfg: OPTConfig, layer: int = 0):
        super().__init__()
        d, b = cfg.hidden_size, cfg.enable_bias
        self.total_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        kept = cfg.kept_heads(layer)
        self.num_heads = len(kept)
        # None when every head is present, so an unpruned layer runs exactly the ops it always did.
        self.head_ids: list[int] | None = None if self.num_heads == cfg.num_heads else kept
        self.scaling = self.head_dim ** -0.5
        inner = self.num_heads * self.head_dim
        if inner:
            self.q_proj = nn.Linear(d, inner, bias=b)
            self.k_proj = nn.Linear(d, inner, bias=b)
            self.v_proj = nn.Linear(d, inner, bias=b)
            self.out_proj = nn.Linear(inner, d, bias=b)
        elif b:
            self.out_proj = OutputBias(d)  # every head removed: out_proj's bias is all that is left

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        bsz, t, _ = x.shape
        return x.view(bsz, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, T, Dh), h kept heads

    def to_all_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, ...) over the kept heads -> (B, H, ...) in the original numbering, zeros for
        removed heads (out of place, so gradients flow back to x)."""
        if self.head_ids is None:
            return x
        full = x.new_zeros(x.shape[0], self.total_heads, *x.shape[2:])  # (B, H, ...)
        return full.index_copy(1, torch.tensor(self.head_ids, device=x.device), x)

    def out_weight_by_head(self) -> torch.Tensor:
        """out_proj's weight as (D, H, Dh) in the original head numbering, zeros for removed heads."""
        d = self.total_heads * self.head_dim
        if self.num_heads == 0:
            bias = self.out_proj.bias if hasattr(self, "out_proj") else None
            return torch.zeros(d, self.total_heads, self.head_dim, device=None if bias is None else bias.device)
        w = self.out_proj.weight.view(d, self.num_heads, self.head_dim)  # (D, h*Dh) -> (D, h, Dh)
        return self.to_all_heads(w)  # (D, H, Dh)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, head_scale: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None, capture: Capture | None, layer: int,
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if self.num_heads == 0:
            return self._forward_no_heads(x, allowed, head_scale, capture, layer)
        bsz, t, d = x.shape
        # HF scales q (bias included) before QK^T; kept in this order for identical fp16 rounding.
        q = self.split_heads(self.q_proj(x) * self.scaling)  # (B, h, T, Dh)
        k = self.split_heads(self.k_proj(x))  # (B, h, T, Dh)
        v = self.split_heads(self.v_proj(x))  # (B, h, T, Dh)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, h, S, Dh)
            v = torch.cat([past[1], v], dim=2)  # (B, h, S, Dh)
        want_probs = capture is not None and capture.wants_probs(layer)
        if want_probs:
            scores = torch.matmul(q, k.transpose(-1, -2)).float()  # (B, h, T, S), softmax in fp32
            scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
            probs = torch.softmax(scores, dim=-1)
            capture.record_probs(layer, self.to_all_heads(probs))  # (B, H, T, S)
            z = torch.matmul(probs.to(v.dtype), v)  # (B, h, T, Dh)
        else:
            # Fused attention; the scale is already folded into q. Fused kernels keep fp32 softmax.
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=1.0)  # (B, h, T, Dh)
        if head_scale is not None:
            if self.head_ids is not None:
                head_scale = head_scale[torch.tensor(self.head_ids, device=head_scale.device)]  # (H,) -> (h,)
            z = z * head_scale.to(z.dtype).view(1, self.num_heads, 1, 1)
        if capture is not None and capture.wants_heads(layer):
            if self.head_ids is None:
                z = capture.record_heads(layer, z)
            else:  # record (B, H, T, Dh) and continue from it, so gradients on the record reach z's users
                full = capture.record_heads(layer, self.to_all_heads(z))
                z = full.index_select(1, torch.tensor(self.head_ids, device=full.device))  # (B, h, T, Dh)
        out = self.out_proj(z.transpose(1, 2).reshape(bsz, t, self.num_heads * self.head_dim))  # (B, T, h*Dh) -> (B, T, D)
        return out, (k, v)

    def _forward_no_heads(self, x: torch.Tensor, allowed: torch.Tensor, head_scale: torch.Tensor | None,
                          capture: Capture | None, layer: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """A layer whose heads were all removed adds out_proj's bias (what the masked model's
        out_proj(0) gives) and nothing else; the cache keeps its (B, 0, S, Dh) shape."""
        bsz, t, d = x.shape
        s = allowed.shape[-1]
        if capture is not None and capture.wants_probs(layer):
            capture.record_probs(layer, x.new_zeros(bsz, self.total_heads, t, s, dtype=torch.float32))
        empty = x.new_zeros(bsz, 0, s, self.head_dim)  # (B, 0, S, Dh)
        out = x.new_zeros(bsz, t, d) if not hasattr(self, "out_proj") else \
            self.out_proj.bias.to(x.dtype).expand(bsz, t, d)  # (D,) -> (B, T, D)
        if capture is not None and capture.wants_heads(layer):
            z = capture.record_heads(layer, x.new_zeros(bsz, self.total_heads, t, self.head_dim))  # (B, H, T, Dh)
            # Adds exact zeros, but puts the record in the graph: d loss / d z exists (and is 0),
            # as for a masked head of the full model, so head gradients work on every layer.
            out = out + z.sum(dim=(1, 3)).unsqueeze(-1) * 0.0  # (B, T) -> (B, T, 1)
        if head_scale is not None and head_scale.requires_grad:
            out = out + head_scale.sum() * 0.0  # the same for a head mask: its gradient here is 0
        return out, (empty, empty)


class OutputBias(nn.Module):
    """out_proj of a layer without heads: only the bias (named `out_proj.bias`, as in the checkpoint)."""

    def __init__(self, d: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(d))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: OPTConfig, layer: int = 0):
        super().__init__()
        d, b, aff = cfg.hidden_size, cfg.enable_bias, cfg.layer_norm_elementwise_affine
        self.pre_ln = cfg.do_layer_norm_before
        self.self_attn = Attention(cfg, layer)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps, elementwise_affine=aff)
        self.has_ffn = cfg.has_ffn(layer)
        if self.has_ffn:
            self.fc1 = nn.Linear(d, cfg.ffn_dim, bias=b)
            self.fc2 = nn.Linear(cfg.ffn_dim, d, bias=b)
        if self.has_ffn or not self.pre_ln:  # a post-LN layer applies it even without an FFN
            self.final_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps, elementwise_affine=aff)

    def forward(self, h: torch.Tensor, allowed: torch.Tensor, head_scale: torch.Tensor | None,
                ffn_scale: float | torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                capture: Capture | None, layer: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = self.self_attn_layer_norm(h) if self.pre_ln else h
        a, kv = self.self_attn(x, allowed, head_scale, past, capture, layer)
        h = h + a
        if not self.pre_ln:
            h = self.self_attn_layer_norm(h)
        skip_ffn = not self.has_ffn or (isinstance(ffn_scale, float) and ffn_scale == 0.0)
        if not skip_ffn:
            x = self.final_layer_norm(h) if self.pre_ln else h
            f = self.fc2(F.relu(self.fc1(x)))  # (B, T, F) inside
            if not (isinstance(ffn_scale, float) and ffn_scale == 1.0):
                f = f * ffn_scale
            h = h + f
        if not self.pre_ln:
            h = self.final_layer_norm(h)
        return h, kv

    @property
    def device(self) -> torch.device:
        for p in self.parameters():  # fc1 may be pruned away; any parameter tells where the layer is
            return p.device
        return torch.device("cpu")


class Decoder(nn.Module):
    """HF's `OPTDecoder`: embeddings, layers, final layer norm and the 350m projections."""

    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.word_embed_proj_dim)
        self.embed_positions = nn.Embedding(cfg.max_positions + POSITION_OFFSET, cfg.hidden_size)
        if cfg.has_projection:
            self.project_in = nn.Linear(cfg.word_embed_proj_dim, cfg.hidden_size, bias=False)
            self.project_out = nn.Linear(cfg.hidden_size, cfg.word_embed_proj_dim, bias=False)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        if cfg.has_final_layer_norm:
            self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps,
                                                 elementwise_affine=cfg.layer_norm_elementwise_affine)


class OPT(nn.Module):
    # Optional layer streamer (offload.py): when set, forward runs `streamer.acquire(i)` instead of
    # `decoder.layers[i]` and calls `streamer.release(i)` after it. None = every layer resident.
    streamer = None

    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.config = cfg
        self.decoder = Decoder(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.word_embed_proj_dim, cfg.vocab_size, bias=False)

    # -- pieces, usable one at a time by layer-streaming executors ------------------------------
    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        dec = self.decoder
        dev = dec.embed_tokens.weight.device
        x = dec.embed_tokens(input_ids.to(dev))  # (B, T, W); OPT does not scale embeddings
        if self.config.has_projection:
            x = dec.project_in(x.to(dec.project_in.weight.device))  # (B, T, D)
        pos = dec.embed_positions(position_ids.to(dec.embed_positions.weight.device))  # (B, T, D)
        return x + pos.to(x.device)

    def finalize(self, h: torch.Tensor) -> torch.Tensor:
        """Final layer norm and project_out: (B, T, D) -> (B, T, W), the input of the output head."""
        dec = self.decoder
        if self.config.has_final_layer_norm:
            h = dec.final_layer_norm(h.to(dec.final_layer_norm.weight.device))
        if self.config.has_projection:
            h = dec.project_out(h.to(dec.project_out.weight.device))
        return h

    @property
    def output_weight(self) -> torch.Tensor:
        """(V, W) unembedding; the tied embedding unless the config unties it."""
        return self.decoder.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., W) -> (..., V). Call it on the positions you need only: the full-vocabulary
        projection is the most expensive single matmul of a small model."""
        w = self.output_weight
        return F.linear(hidden.to(w.device), w)

    # -- the whole forward ----------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                head_mask: torch.Tensor | None = None, ffn_mask: torch.Tensor | Sequence[float] | None = None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                capture: Capture | None = None, logits: str = "all",
                position_ids: torch.Tensor | None = None, start_layer: int = 0,
                hidden_in: torch.Tensor | None = None) -> DecoderOutput:
        """Run the decoder on (B, T) token ids.

        attention_mask: (B, S) 1 for real tokens and 0 for pads, covering past + new tokens.
        past_key_values: the cache returned by an earlier call with use_cache=True.
        logits: "all" (B, T, V), "last" (B, 1, V) or "none" (only `hidden`).
        start_layer, hidden_in: resume from the (B, T, D) input of layer `start_layer` (recorded by
            Capture(layer_inputs=True) on an earlier call) instead of embedding input_ids; layers
            before it are not run. Used to avoid recomputing layers whose inputs did not change.
        """
        if logits not in ("all", "last", "none"):
            raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        past = self._check_inputs(input_ids, attention_mask, past_key_values, position_ids)
        head_rows, ffn_scales = self._check_masks(head_mask, ffn_mask)
        bsz, new = input_ids.shape
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(past, past + new, device=input_ids.device).expand(bsz, new)
                position_ids = position_ids + POSITION_OFFSET
            else:
                position_ids = position_ids_from_mask(attention_mask, new)
        h = self._first_hidden(input_ids, position_ids, start_layer, hidden_in)  # (B, T, D)
        h, new_cache = self.run_layers(h, attention_mask, past, head_rows, ffn_scales, past_key_values,
                                       capture, start_layer, use_cache)
        hidden = self.finalize(h)  # (B, T, W)
        out_logits = None
        if logits == "all":
            out_logits = self.logits(hidden)
        elif logits == "last":
            out_logits = self.logits(hidden[:, -1:])
        return DecoderOutput(out_logits, hidden, new_cache if use_cache else None)

    def _check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      past_key_values: KVCache | None, position_ids: torch.Tensor | None) -> int:
        """Shapes of the ids, mask and cache, each wrong one a ValueError naming it; returns the cached length."""
        cfg = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, positions), got shape {tuple(input_ids.shape)}")
        bsz, new = input_ids.shape
        past = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if past_key_values is not None and len(past_key_values) != cfg.num_layers:
            raise ValueError(f"past_key_values has {len(past_key_values)} layers, the model {cfg.num_layers}")
        if attention_mask is not None and tuple(attention_mask.shape) != (bsz, past + new):
            raise ValueError(f"attention_mask must be (batch, past + new) = {(bsz, past + new)}, "
                             f"got {tuple(attention_mask.shape)}")
        if past + new > cfg.max_positions and position_ids is None:
            raise ValueError(f"{past + new} positions exceed the model's {cfg.max_positions}; truncate the input")
        return past

    def _first_hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor, start_layer: int,
                      hidden_in: torch.Tensor | None) -> torch.Tensor:
        """The residual stream entering layer `start_layer`: the embeddings, or the recorded `hidden_in`."""
        if hidden_in is None:
            if start_layer != 0:
                raise ValueError("start_layer > 0 needs hidden_in, the recorded input of that layer")
            return self.embed(input_ids, position_ids)  # (B, T, D)
        bsz, new = input_ids.shape
        if tuple(hidden_in.shape) != (bsz, new, self.config.hidden_size):
            raise ValueError(f"hidden_in must be (batch, new, hidden) = {(bsz, new, self.config.hidden_size)}, "
                             f"got {tuple(hidden_in.shape)}")
        return hidden_in

    def run_layers(self, h: torch.Tensor, attention_mask: torch.Tensor | None, past: int,
                   head_rows: list[torch.Tensor] | None, ffn_scales: list, past_key_values: KVCache | None,
                   capture: Capture | None, start_layer: int = 0,
                   use_cache: bool = False) -> tuple[torch.Tensor, KVCache]:
        """Layers start_layer..L-1 on the (B, T, D) stream `h`, wherever each lives: a resident layer on its
        device, a streamed one (offload.py) acquired on the compute device for its turn and released
        after. Returns the last layer's output and, with use_cache, the new cache (one (k, v) per layer
        run; without it each layer's keys and values are dropped as soon as the layer is done)."""
        bsz, new = h.shape[:2]
        allowed_by_device: dict[torch.device, torch.Tensor] = {}  # one causal + padding mask per device
        new_cache: KVCache = []
        streamer = self.streamer
        for i, layer in enumerate(self.decoder.layers):
            if i < start_layer:
                continue
            if streamer is not None:
                layer = streamer.acquire(i)
            dev = layer.device
            if dev not in allowed_by_device:
                key_real = None if attention_mask is None else attention_mask.to(dev)
                allowed_by_device[dev] = attention_allowed(key_real, bsz, new, past, dev)
            layer_past = None if past_key_values is None else past_key_values[i]
            head_scale = None if head_rows is None else head_rows[i]
            if capture is not None and capture.wants_layer_inputs(i):
                capture.record_layer_input(i, h)
            if head_scale is not None:
                head_scale = head_scale.to(dev)  # no-op unless the layer is streamed
            h, kv = layer(h.to(dev), allowed_by_device[dev], head_scale, ffn_scales[i], layer_past, capture, i)
            if streamer is not None:
                streamer.release(i)
            if use_cache:
                new_cache.append(kv)
        return h, new_cache

    def _check_masks(self, head_mask, ffn_mask):
        """Validate mask shapes; return per-layer head rows (or None) and per-layer FFN scales.

        FFN scales become Python floats (one host sync per forward) so an exact 0 can skip the
        block; a mask that requires grad stays a tensor so gradients can flow to it.
        """
        cfg = self.config
        head_rows = None
        if head_mask is not None:
            head_mask = torch.as_tensor(head_mask)
            if tuple(head_mask.shape) != (cfg.num_layers, cfg.num_heads):
                raise ValueError(f"head_mask must have shape (layers, heads) = {(cfg.num_layers, cfg.num_heads)}, "
                                 f"got {tuple(head_mask.shape)}")
            if head_mask.requires_grad or not bool((head_mask == 1).all()):
                head_rows = [head_mask[i] if self.streamer is not None else head_mask[i].to(layer.device)
                             for i, layer in enumerate(self.decoder.layers)]
        if ffn_mask is None:
            return head_rows, [1.0] * cfg.num_layers
        ffn_mask = torch.as_tensor(ffn_mask)
        if tuple(ffn_mask.shape) != (cfg.num_layers,):
            raise ValueError(f"ffn_mask must have shape (layers,) = ({cfg.num_layers},), got {tuple(ffn_mask.shape)}")
        if ffn_mask.requires_grad:
            return head_rows, [ffn_mask[i] for i in range(cfg.num_layers)]
        return head_rows, [float(v) for v in ffn_mask.tolist()]
