"""Scoped capture of attention probabilities and per-head outputs.

A `Capture` is passed to `OPT.forward(capture=...)`; it lives as long as the caller keeps it and
touches no module state, so nothing outlives the call (no hooks, no buffers on the model).

    cap = Capture(probs=True, heads=True, grads=True)
    out = model(ids, capture=cap)
    loss = ...
    grads = torch.autograd.grad(loss, cap.head_list())   # d loss / d head outputs, no weight grads

Recorded tensors, per layer index:
    cap.probs[l]  (B, H, T, S) float32 post-softmax attention (before any head mask)
    cap.layer_inputs[l] (B, T, D) the residual stream entering layer l (with layer_inputs=True)
    cap.heads[l]  (B, H, T, Dh) each head's attention-weighted value vector, after the head mask,
                  i.e. exactly what out_proj reads (the paper's `context_layer_val`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn


class Capture:
    def __init__(self, probs: bool = False, heads: bool = False, grads: bool = False,
                 layers: Iterable[int] | None = None, to_cpu: bool = False, layer_inputs: bool = False):
        """probs/heads: what to record. grads: make the head outputs part of the autograd graph
        (even when no weight requires grad) so `torch.autograd.grad(loss, cap.head_list())` works.
        layer_inputs: record the (B, T, D) residual stream entering each layer (resume points for
        `OPT.forward(start_layer=l, hidden_in=...)`).
        layers: restrict recording to these layer indices (None = all). to_cpu: move recordings to
        host memory as they are made (bounded GPU memory for long captures; not with grads)."""
        if grads and not heads:
            raise ValueError("Capture(grads=True) needs heads=True: gradients are taken on the head outputs")
        if grads and to_cpu:
            raise ValueError("Capture(grads=True) cannot move head outputs to CPU: the graph needs them")
        self.want_probs, self.want_heads, self.want_grads = probs, heads, grads
        self.want_layer_inputs = layer_inputs
        self.layer_inputs: dict[int, torch.Tensor] = {}
        self.layers = None if layers is None else set(int(i) for i in layers)
        self.to_cpu = to_cpu
        self.probs: dict[int, torch.Tensor] = {}
        self.heads: dict[int, torch.Tensor] = {}

    def _wanted(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def wants_probs(self, layer: int) -> bool:
        return self.want_probs and self._wanted(layer)

    def wants_heads(self, layer: int) -> bool:
        return self.want_heads and self._wanted(layer)

    def wants_layer_inputs(self, layer: int) -> bool:
        return self.want_layer_inputs and self._wanted(layer)

    def record_layer_input(self, layer: int, h: torch.Tensor) -> None:
        self.layer_inputs[layer] = h.detach().cpu() if self.to_cpu else h.detach()

    def record_probs(self, layer: int, probs: torch.Tensor) -> None:
        self.probs[layer] = probs.detach().cpu() if self.to_cpu else probs.detach()

    def record_heads(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Store z and return the tensor the forward must continue with."""
        if self.want_grads:
            if not z.requires_grad:
                # Nothing upstream needs grad (frozen weights, first layer): make z a graph leaf so
                # d loss / d z exists, and every later layer's z joins the graph through it.
                z = z.detach().requires_grad_(True)
            self.heads[layer] = z
        else:
            self.heads[layer] = z.detach().cpu() if self.to_cpu else z.detach()
        return z

    def head_list(self) -> list[torch.Tensor]:
        return [self.heads[i] for i in sorted(self.heads)]

    def clear(self) -> None:
        self.probs.clear()
        self.heads.clear()
        self.layer_inputs.clear()


def head_attribution(heads: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """(H,) float32 attribution of each head: sum over batch and positions of |a . dL/da|.

    heads, grads: (B, H, T, Dh) a head's attention-weighted value vector (what `Capture(heads=True)`
    records) and the loss gradient with respect to it. a . dL/da is the first-order change of the
    loss if the head's output were removed (Michel et al. 2019; Bansal et al. 2023 eq. 1); the
    absolute value is taken per token position before summing. One formula for every caller
    (head importance with full autograd or the layer-wise backward, the copy task's control).
    """
    # detached: the score is a number, not part of any graph (keeping one would hold every example's
    # activations alive across a whole importance run)
    per_position = (heads.detach().float() * grads.detach().float()).sum(-1).abs()  # (B, H, T)
    return per_position.sum(-1).sum(0)  # (H,)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily set requires_grad=False on every parameter (restored on exit, even on error),
    so a backward pass computes activation gradients only."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
