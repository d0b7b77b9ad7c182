"""Parity with transformers' OPT without transformers: golden files computed once by
tests/golden/make_golden.py (HF OPTForCausalLM, eager attention, fp32) and shipped with the tests.

Tolerances: 1e-4 max abs on fp32 logits and per-head outputs, as in test_parity.py (measured 0.0 on
torch 2.13 CPU when the files were made; the budget covers other BLAS builds); 1e-5 on attention
probabilities, which lie in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from opt66b import Capture, load_model
from opt66b.io import read_tensors

GOLDEN = Path(__file__).resolve().parent / "golden"
NAMES = ["pre_ln", "post_ln_350m"]
ATOL = 1e-4  # fp32 logits / head outputs, see the module docstring
PROB_ATOL = 1e-5  # probabilities in [0, 1]


def load(name: str):
    ref, meta = read_tensors(GOLDEN / name / "reference.safetensors")
    return load_model(GOLDEN / name, dtype=torch.float32), ref, meta


def real_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Max abs difference over real positions of (B, T, ...) tensors."""
    return (a[mask.bool()] - b[mask.bool()]).abs().max().item()


@pytest.mark.parametrize("name", NAMES)
def test_golden_logits_and_masks(name):
    model, ref, meta = load(name)
    assert meta["script"] == "tests/golden/make_golden.py"
    ids, mask = ref["input_ids"], ref["attention_mask"]
    assert (mask == 0).any(), "the golden batch must contain padding"
    assert real_diff(model(ids, attention_mask=mask).logits, ref["logits"], mask) < ATOL
    masked = model(ids, attention_mask=mask, head_mask=ref["head_mask"], ffn_mask=ref["ffn_mask"]).logits
    assert real_diff(masked, ref["logits_masked"], mask) < ATOL
    assert real_diff(ref["logits_masked"], ref["logits"], mask) > 100 * ATOL  # the masks matter


@pytest.mark.parametrize("name", NAMES)
def test_golden_capture(name):
    model, ref, _ = load(name)
    ids, mask = ref["input_ids"], ref["attention_mask"]
    cap = Capture(probs=True, heads=True)
    model(ids, attention_mask=mask, capture=cap)
    for layer in range(model.config.num_layers):
        heads = (cap.heads[layer] - ref[f"heads.{layer}"]).abs().amax(dim=(1, 3))  # (B, T)
        assert heads[mask.bool()].max().item() < ATOL
        probs = (cap.probs[layer] - ref[f"probs.{layer}"]).abs().amax(dim=(1, 3))  # (B, T)
        assert probs[mask.bool()].max().item() < PROB_ATOL


@pytest.mark.parametrize("name", NAMES)
def test_golden_kv_cache(name):
    model, ref, _ = load(name)
    ids, mask = ref["input_ids"], ref["attention_mask"]
    split = ids.shape[1] - 2  # every row has >= 2 real tokens: the last 2 columns are real
    ctx = model(ids[:, :split], attention_mask=mask[:, :split], use_cache=True)
    cont = model(ids[:, split:], attention_mask=mask, past_key_values=ctx.past_key_values).logits
    assert (cont - ref["logits"][:, split:]).abs().max().item() < ATOL
