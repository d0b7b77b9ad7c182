"""Physically pruned checkpoints (opt66b/export.py) against the masked full model on the same inputs.

Every layout (pre-LN, 350m-style post-LN with project_in/out, head_dim 80, untied head) and the
embedded tiny OPT, with a layer that loses every head, a layer that loses some, and a layer that
loses its FFN. The exported model must give the masked model's logits and log-likelihoods.

Tolerance: TOL = 1e-5 absolute on fp32 logits of magnitude <= ~10. The two models run the same ops
except that out_proj sums h*Dh products instead of H*Dh, the extra ones being exact zeros (0 * w);
adding exact zeros changes nothing, but a different inner length can change how BLAS blocks the
reduction, i.e. the float summation order: a few ulps of the partial sums (~1e-6 here). The
measured difference on torch 2.13 CPU is 0.0 for these shapes; a real slicing error (a wrong
row or column) changes logits by > 1e-2.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TOKENIZER_DIR, random_model

from opt66b import OPTConfig, load_model, save_checkpoint
from opt66b.export import config_for_counts, export_pruned, model_params, pruned_config, removal_summary
from opt66b.offload import load_streamed
from opt66b.placement import auto_device_map, layer_params

TOL = 1e-5  # fp32, float summation order only (module docstring)
CONFIGS = {
    "pre_ln": OPTConfig(hidden_size=32, num_layers=3, num_heads=4, ffn_dim=64, vocab_size=128, max_positions=64),
    "post_ln_350m": OPTConfig(hidden_size=32, num_layers=3, num_heads=4, ffn_dim=48, vocab_size=128,
                              max_positions=64, word_embed_proj_dim=16, do_layer_norm_before=False),
    "head_dim_80": OPTConfig(hidden_size=160, num_layers=3, num_heads=2, ffn_dim=64, vocab_size=96, max_positions=64),
    "untied": OPTConfig(hidden_size=32, num_layers=3, num_heads=4, ffn_dim=64, vocab_size=128, max_positions=64,
                        tie_word_embeddings=False),
}


def masks_for(cfg: OPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0 loses every head, layer 1 its head 1, the last layer its FFN (in 3 layers, layer 1 keeps it)."""
    head = torch.ones(cfg.num_layers, cfg.num_heads)  # (L, H)
    head[0] = 0.0
    head[1, 1] = 0.0
    ffn = torch.ones(cfg.num_layers)  # (L,)
    ffn[-1] = 0.0
    return head, ffn


def ids_for(cfg: OPTConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))  # (B, T)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in row 1
    return ids, mask


def log_likelihoods(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    cfg = CONFIGS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    full = random_model(cfg, seed=5)
    save_checkpoint(full, d / "src", max_shard_bytes=30_000)
    head, ffn = masks_for(cfg)
    record = export_pruned(d / "src", d / "out", head, ffn, max_shard_bytes=20_000)
    return full, d, head, ffn, record


def test_exported_equals_masked_full_model(exported, one_thread):
    full, d, head, ffn, _ = exported
    small = load_model(d / "out")
    ids, mask = ids_for(full.config)
    want = full(ids, attention_mask=mask, head_mask=head, ffn_mask=ffn).logits
    got = small(ids, attention_mask=mask).logits
    real = mask.bool()[:, 1:]
    assert (got - want).abs().max() <= TOL
    assert (log_likelihoods(got, ids) - log_likelihoods(want, ids))[real].abs().max() <= TOL
    # the masks of the full model apply unchanged (original head numbering); removed units stay removed
    again = small(ids, attention_mask=mask, head_mask=head, ffn_mask=ffn).logits
    assert (again - want).abs().max() <= TOL
    # and the unmasked full model is different, so the comparison above could fail
    assert (full(ids, attention_mask=mask).logits - want).abs().max() > 1e-2


def test_checkpoint_is_physically_smaller(exported):
    full, d, head, ffn, record = exported
    cfg = full.config
    small = load_model(d / "out")
    layers = small.decoder.layers
    assert not hasattr(layers[0].self_attn, "q_proj") and layers[0].self_attn.out_proj.bias.shape == (cfg.hidden_size,)
    kept = cfg.num_heads - 1
    assert layers[1].self_attn.q_proj.weight.shape == (kept * cfg.head_dim, cfg.hidden_size)
    assert layers[1].self_attn.out_proj.weight.shape == (cfg.hidden_size, kept * cfg.head_dim)
    assert not hasattr(layers[2], "fc1") and hasattr(layers[2], "final_layer_norm") == (not cfg.do_layer_norm_before)
    # slices are the right rows/columns: head 2 of layer 1 is stored at position 1 after the removal
    dh, h = cfg.head_dim, 2
    src_q = full.decoder.layers[1].self_attn.q_proj.weight[h * dh:(h + 1) * dh]
    assert torch.equal(layers[1].self_attn.q_proj.weight[dh:2 * dh], src_q)
    src_o = full.decoder.layers[1].self_attn.out_proj.weight[:, h * dh:(h + 1) * dh]
    assert torch.equal(layers[1].self_attn.out_proj.weight[:, dh:2 * dh], src_o)
    removed = sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in small.parameters())
    assert record["parameters_removed"] == removed == model_params(cfg) - model_params(small.config)
    raw = json.loads((d / "out" / "config.json").read_text())
    assert raw["pruned_heads"] == {"0": list(range(cfg.num_heads)), "1": [1]} and raw["opt66b_pruned_ffn"] == [2]
    assert set(raw["opt66b_export"]["source_sha256"]) >= {"config.json", "model.safetensors.index.json"}
    index = json.loads((d / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # written as several shards
    assert not (d / "out" / ".export-manifest.json").exists()


def test_streamed_and_placed_loading_of_an_exported_model(exported, one_thread):
    """mmap streaming rebuilds its buffers for layers of different shapes; placement sizes are per layer."""
    full, d, head, ffn, _ = exported
    ids, mask = ids_for(full.config, seed=1)
    want = load_model(d / "out")(ids, attention_mask=mask).logits
    streamed = load_streamed(d / "out")
    assert torch.equal(streamed(ids, attention_mask=mask).logits, want)
    small = load_model(d / "out").config
    sizes = [sum(p.numel() for p in layer.parameters()) for layer in load_model(d / "out").decoder.layers]
    assert [layer_params(small, i) for i in range(small.num_layers)] == sizes
    assert sizes[0] < sizes[1] < layer_params(full.config)
    dm = auto_device_map(small, {"cpu": 10**9}, torch.float32)
    assert dm.bytes_per_device["cpu"] == 4 * model_params(small)


def test_capture_scores_keep_the_original_head_numbering(exported, one_thread):
    """Head outputs and attention read (B, H, ...) with zeros for removed heads; the kept ones equal the
    masked full model's, and head gradients (importance) agree too."""
    from opt66b import Capture

    full, d, head, ffn, _ = exported
    small = load_model(d / "out")
    ids, mask = ids_for(full.config, seed=2)
    caps = []
    for model, kwargs in ((full, {"head_mask": head, "ffn_mask": ffn}), (small, {})):
        cap = Capture(probs=True, heads=True, grads=True)
        out = model(ids, attention_mask=mask, capture=cap, **kwargs)
        grads = torch.autograd.grad(out.logits.logsumexp(-1).sum(), cap.head_list())
        cap.heads = {i: z.detach() for i, z in cap.heads.items()}
        caps.append((cap, grads))
    (cf, gf), (cs, gs) = caps
    for i in range(full.config.num_layers):
        assert cs.heads[i].shape == cf.heads[i].shape and cs.probs[i].shape == cf.probs[i].shape
        assert (cs.heads[i] - cf.heads[i]).abs().max() <= TOL  # masked heads are zero in both
        kept = head[i].bool()
        assert torch.allclose(cs.probs[i][:, kept], cf.probs[i][:, kept], rtol=0, atol=TOL)
        assert torch.all(cs.probs[i][:, ~kept] == 0)
        score_f = (cf.heads[i] * gf[i]).sum(-1).abs().sum((0, 2))  # (H,) the importance attribution
        score_s = (cs.heads[i] * gs[i]).sum(-1).abs().sum((0, 2))
        assert (score_s - score_f).abs().max() <= TOL * max(1.0, float(score_f.abs().max()))


def test_layerwise_backward_on_an_exported_model(exported, one_thread):
    """The bounded-memory head gradients (one layer at a time, also through the mmap streamer) give the
    full-graph capture's head scores on an exported model, the layer without heads included."""
    from opt66b import Capture
    from opt66b.offload import layerwise_backward

    _, d, _, _, _ = exported
    small = load_model(d / "out")
    ids, mask = ids_for(small.config, seed=5)
    cap = Capture(heads=True, grads=True)
    out = small(ids, attention_mask=mask, capture=cap, logits="none")
    loss = small.logits(out.hidden).logsumexp(-1).sum()
    grads = torch.autograd.grad(loss, cap.head_list())
    want = torch.stack([(z.detach() * g).sum(-1).abs().sum((0, 2)) for z, g in zip(cap.head_list(), grads)])  # (L, H)
    for model in (small, load_streamed(d / "out")):
        value, head_grad, scores = layerwise_backward(model, ids, mask, lambda h: model.logits(h).logsumexp(-1).sum())
        assert value == pytest.approx(float(loss.detach()), rel=1e-5)
        assert (scores - want).abs().max() <= 1e-4 * float(want.max())
        assert torch.all(scores[0] == 0) and torch.all(head_grad[0] == 0)  # layer 0 has no heads left


def test_pruning_an_exported_model_further(exported, tmp_path, one_thread):
    full, d, head, ffn, _ = exported
    more = head.clone()
    more[1, 0] = 0.0  # a further head; layer 0's already-removed heads may say anything
    more[0] = 1.0
    export_pruned(d / "out", tmp_path / "again", more, None)
    twice = load_model(tmp_path / "again")
    combined = head.clone()
    combined[1, 0] = 0.0
    ids, mask = ids_for(full.config, seed=3)
    want = full(ids, attention_mask=mask, head_mask=combined, ffn_mask=ffn).logits
    assert (twice(ids, attention_mask=mask).logits - want).abs().max() <= TOL
    raw = json.loads((tmp_path / "again" / "config.json").read_text())
    assert raw["pruned_heads"]["1"] == [0, 1] and raw["opt66b_export"]["history"][0]["heads_removed"] == \
        full.config.num_heads + 1


def test_tiny_default_exported_equals_masked(tmp_path, one_thread):
    full = load_model(TOKENIZER_DIR, dtype=torch.float32)
    head, ffn = masks_for(full.config)
    export_pruned(TOKENIZER_DIR, tmp_path / "tiny", head, ffn)
    assert (tmp_path / "tiny" / "vocab.json").is_file()  # tokenizer files travel with the weights
    small = load_model(tmp_path / "tiny", dtype=torch.float32)
    ids, mask = ids_for(OPTConfig(vocab_size=50265), seed=4)
    want = full(ids, attention_mask=mask, head_mask=head, ffn_mask=ffn).logits
    got = small(ids, attention_mask=mask).logits
    assert (got - want).abs().max() <= TOL
    assert (log_likelihoods(got, ids) - log_likelihoods(want, ids))[mask.bool()[:, 1:]].abs().max() <= TOL


def test_removal_counts_by_hand():
    """OPT-66B (D 9216, F 36864, 64 layers x 72 heads, Dh 128): a head is 4 D Dh + 3 Dh parameters,
    an FFN 2 D F + F + D plus its pre-LN final LayerNorm (2 D)."""
    from opt66b import config_for_size

    cfg = config_for_size("opt-66b")
    d, f, dh = 9216, 36864, 128
    small = config_for_counts(cfg, heads=3225, ffns=12)  # floor(70% of 4608), floor(20% of 64)
    got = removal_summary(cfg, small, torch.float16)
    assert got["heads_removed"] == 3225 and got["ffn_removed"] == 12
    assert got["parameters_removed"] == 3225 * (4 * d * dh + 3 * dh) + 12 * (2 * d * f + f + d + 2 * d)
    assert got["bytes_removed"] == 2 * got["parameters_removed"]
    # which heads does not matter: another choice of 3225 heads and 12 FFNs removes as much
    head = torch.ones(64, 72)
    head.view(-1)[torch.randperm(4608, generator=torch.Generator().manual_seed(0))[:3225]] = 0
    ffn = torch.ones(64)
    ffn[torch.arange(64)[-12:]] = 0
    assert removal_summary(cfg, pruned_config(cfg, head, ffn), torch.float16) == got


def test_bad_masks_are_refused(tiny_config):
    with pytest.raises(ValueError, match=r"m\.st: shape \(2, 3\) does not fit the model, which needs \(layers, heads\)"):
        pruned_config(tiny_config, torch.ones(2, 3), head_source="m.st")
    with pytest.raises(ValueError, match=r"values other than 0 and 1 \(e\.g\. 0\.5\)"):
        pruned_config(tiny_config, torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="removes every head of every layer"):
        pruned_config(tiny_config, torch.zeros(2, 4))


def test_copying_scores_on_an_exported_model(exported, one_thread):
    """The paper's copying score reads each layer on the embeddings alone, so a kept head scores as in
    the full model; removed heads score 0 (both variants, exact softmax too), in the original numbering."""
    from induction.copying import copying_residual, copying_paper

    full, d, head, _, _ = exported
    small = load_model(d / "out")
    tokens = torch.cat([torch.tensor([2]), torch.randperm(full.config.vocab_size - 3,
                                                          generator=torch.Generator().manual_seed(6))[:15] + 3])  # (T,)
    want = copying_paper(full, tokens)
    for exact in (False, True):
        got = copying_paper(small, tokens, exact_softmax=exact)
        kept = head.bool()
        assert got.shape == want.shape and torch.all(got[~kept] == 0)
        assert (got[kept] - want[kept]).abs().max() <= 1e-4  # scores in [0, 1]; fp32 softmax ratios
    corrected = copying_residual(small, tokens)
    assert corrected.shape == want.shape and torch.all(corrected[~head.bool()] == 0)
    assert torch.isfinite(corrected).all() and corrected[head.bool()].abs().sum() > 0
