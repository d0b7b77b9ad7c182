"""Unit tests of the decoder (opt66b/model.py) and capture (opt66b/capture.py) on tiny random models:
causality, argument checks, capture semantics and gradients, resume from a layer, position ids.

Tolerances: 1e-5 for fp32 results that are the same computation in a different order or split
(values of order 1-10; fp32 rounding is ~1e-6 there); exact equality where the very same ops run.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_model

from opt66b import Capture, OPTConfig, frozen, position_ids_from_mask

TOL = 1e-5  # fp32, same math reordered (see the module docstring)


@pytest.fixture
def model(tiny_config):
    return random_model(tiny_config, seed=1)


@pytest.fixture
def post_ln_model():
    cfg = OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, vocab_size=128, max_positions=64,
                    word_embed_proj_dim=16, do_layer_norm_before=False)
    return random_model(cfg, seed=2)


def ids_for(cfg, shape=(2, 8), seed=0) -> torch.Tensor:
    return torch.randint(3, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def test_position_ids_from_mask_hand_computed():
    mask = torch.tensor([[0, 0, 1, 1, 1],   # left padding: first real token -> row 2, pads -> row 1
                         [1, 1, 1, 0, 0]])  # right padding
    assert position_ids_from_mask(mask, 5).tolist() == [[1, 1, 2, 3, 4], [2, 3, 4, 1, 1]]
    assert position_ids_from_mask(mask, 2).tolist() == [[3, 4], [1, 1]]  # the last 2 (new) columns


@pytest.mark.parametrize("which", ["model", "post_ln_model"])
def test_causality(which, request):
    m = request.getfixturevalue(which)
    ids = ids_for(m.config)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 7) % m.config.vocab_size
    a, b = m(ids).logits, m(changed).logits
    assert torch.equal(a[:, :5], b[:, :5])  # earlier positions: bit-identical
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3  # later ones do see the change


def test_argument_shape_errors(model, tiny_config):
    ids = ids_for(tiny_config)
    L, H = tiny_config.num_layers, tiny_config.num_heads
    with pytest.raises(ValueError, match=r"head_mask must have shape \(layers, heads\) = \(2, 4\), got \(4, 2\)"):
        model(ids, head_mask=torch.ones(H, L))
    with pytest.raises(ValueError, match=r"ffn_mask must have shape \(layers,\) = \(2,\), got \(3,\)"):
        model(ids, ffn_mask=torch.ones(3))
    with pytest.raises(ValueError, match=r"attention_mask must be .* got \(2, 7\)"):
        model(ids, attention_mask=torch.ones(2, 7))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, positions\)"):
        model(ids[0])
    with pytest.raises(ValueError, match="logits must be"):
        model(ids, logits="some")
    with pytest.raises(ValueError, match="exceed the model's 64"):
        model(torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="start_layer > 0 needs hidden_in"):
        model(ids, start_layer=1)


def test_identity_masks_and_logit_modes(model, tiny_config):
    ids = ids_for(tiny_config)
    full = model(ids).logits
    same = model(ids, head_mask=torch.ones(2, 4), ffn_mask=[1.0, 1.0]).logits
    assert torch.equal(full, same)
    last = model(ids, logits="last").logits  # (B, 1, V); a smaller GEMM may block sums differently
    assert last.shape == (2, 1, tiny_config.vocab_size) and (last - full[:, -1:]).abs().max() < TOL
    assert model(ids, logits="none").logits is None


def test_ffn_mask_float_and_tensor_paths_agree(model, tiny_config):
    """ffn_mask 0 skips the block (float path); a grad-requiring mask multiplies it (tensor path)."""
    ids = ids_for(tiny_config)
    skipped = model(ids, ffn_mask=torch.tensor([0.0, 1.0])).logits
    scaled = model(ids, ffn_mask=torch.tensor([0.0, 1.0], requires_grad=True)).logits
    assert (skipped - scaled).abs().max() < TOL
    assert (skipped - model(ids).logits).abs().max() > 1e-3


def test_kv_cache_equals_full_forward(model, tiny_config):
    ids = ids_for(tiny_config, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # row 1 left-padded
    full = model(ids, attention_mask=mask).logits
    ctx = model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
    step = model(ids[:, 6:], attention_mask=mask, past_key_values=ctx.past_key_values).logits
    assert (step - full[:, 6:]).abs().max() < TOL
    assert ctx.past_key_values[0][0].shape == (2, tiny_config.num_heads, 6, tiny_config.head_dim)


@pytest.mark.parametrize("which", ["model", "post_ln_model"])
def test_capture_shapes_and_probabilities(which, request):
    m = request.getfixturevalue(which)
    cfg = m.config
    ids = ids_for(cfg, (2, 6))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    hooks_before = [len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules()]
    keys_before = list(m.state_dict())
    cap = Capture(probs=True, heads=True)
    plain = m(ids, attention_mask=mask).logits
    captured = m(ids, attention_mask=mask, capture=cap).logits
    assert (plain - captured).abs().max() < TOL  # eager softmax path == fused path
    for layer in range(cfg.num_layers):
        assert cap.heads[layer].shape == (2, cfg.num_heads, 6, cfg.head_dim)
        probs = cap.probs[layer]
        assert probs.shape == (2, cfg.num_heads, 6, 6) and probs.dtype == torch.float32
        assert (probs.sum(-1) - 1).abs().max() < TOL  # each row is a distribution
        assert torch.equal(probs.triu(1), torch.zeros_like(probs))  # no attention to the future
        assert probs[1, :, 2:, :2].abs().max() == 0  # real queries ignore the pads
    # Nothing outlives the call: no hooks or buffers were added to the model.
    assert [len(mod._forward_hooks) + len(mod._forward_pre_hooks) for mod in m.modules()] == hooks_before
    assert list(m.state_dict()) == keys_before
    only = Capture(heads=True, layers=[1])
    m(ids, capture=only)
    assert list(only.heads) == [1] and not only.probs


def test_capture_heads_are_after_the_head_mask(model, tiny_config):
    ids = ids_for(tiny_config)
    head_mask = torch.ones(2, 4)
    head_mask[1, 2] = 0.0
    cap = Capture(heads=True)
    model(ids, head_mask=head_mask, capture=cap)
    assert cap.heads[1][:, 2].abs().max() == 0
    assert cap.heads[1][:, 1].abs().max() > 0


@pytest.mark.parametrize("which", ["model", "post_ln_model"])
def test_head_gradients_match_head_mask_gradients(which, request):
    """d loss / d head output, contracted with the head output, is d loss / d head_mask at 1 (the
    paper's importance score): two independent autograd routes to the same number."""
    m = request.getfixturevalue(which)
    cfg = m.config
    ids = ids_for(cfg, (2, 7))
    cap = Capture(heads=True, grads=True)
    logits = m(ids, capture=cap).logits
    loss = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).sum()
    grads = torch.autograd.grad(loss, cap.head_list())
    via_heads = torch.stack([(g * z).sum(dim=(0, 2, 3)) for g, z in zip(grads, cap.head_list())])  # (L, H)

    head_mask = torch.ones(cfg.num_layers, cfg.num_heads, requires_grad=True)
    logits2 = m(ids, head_mask=head_mask).logits
    loss2 = torch.log_softmax(logits2[:, :-1], -1).gather(-1, ids[:, 1:, None]).sum()
    (via_mask,) = torch.autograd.grad(loss2, head_mask)
    assert (loss - loss2).abs() < TOL * loss.abs()
    # Sums over B*T*Dh products of O(1) values: fp32 reassociation error ~1e-5 relative.
    assert torch.allclose(via_heads, via_mask, rtol=1e-4, atol=1e-4)
    assert all(p.grad is None for p in m.parameters())


def test_no_weight_grads_even_when_weights_train(tiny_config):
    m = random_model(tiny_config).requires_grad_(True)
    ids = ids_for(tiny_config)
    cap = Capture(heads=True, grads=True)
    with frozen(m):
        m(ids, capture=cap).logits.sum().backward()
    assert all(p.grad is None for p in m.parameters())
    assert all(p.requires_grad for p in m.parameters())  # restored on exit
    with pytest.raises(ValueError, match=r"grads=True\) needs heads=True"):
        Capture(grads=True)


@pytest.mark.parametrize("which", ["model", "post_ln_model"])
def test_resume_from_layer_input(which, request):
    m = request.getfixturevalue(which)
    cfg = m.config
    ids = ids_for(cfg, (2, 6))
    mask = torch.tensor([[1] * 6, [0, 1, 1, 1, 1, 1]])
    head_mask = torch.ones(cfg.num_layers, cfg.num_heads)
    head_mask[1, 0] = 0.0  # a change after the resume point
    cap = Capture(layer_inputs=True)
    m(ids, attention_mask=mask, capture=cap)
    full = m(ids, attention_mask=mask, head_mask=head_mask).logits
    resumed = m(ids, attention_mask=mask, head_mask=head_mask, start_layer=1, hidden_in=cap.layer_inputs[1]).logits
    assert torch.equal(full, resumed)  # the same ops on the same layer-1 input
    with pytest.raises(ValueError, match="hidden_in must be"):
        m(ids, start_layer=1, hidden_in=cap.layer_inputs[1][:, :3])
