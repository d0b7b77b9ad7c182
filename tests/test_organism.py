"""The tiny OPT organism shipped in opt66b/assets/tiny-opt, and the synthetic copying task.

The numbers asserted here are those of opt66b/assets/tiny-opt/training_log.json and the README.
"""

from __future__ import annotations

import pytest
import torch

from conftest import ROOT

TINY = ROOT / "opt66b" / "assets" / "tiny-opt"
needs_organism = pytest.mark.skipif(not (TINY / "model.safetensors").is_file(),
                                    reason=f"{TINY}/model.safetensors absent: run `python -m study.train_tiny`")


def test_heads_above_and_mask_hand_computed():
    from study.copy_task import heads_above, mask_without

    scores = torch.tensor([[0.1, 0.7], [0.5, 0.49]])
    assert heads_above(scores, 0.5) == [(0, 1), (1, 0)]  # highest first; 0.5 itself counts
    assert heads_above(-scores, -float("inf"))[0] == (0, 0)  # the lowest score first
    assert mask_without(2, 2, [(1, 0)]).tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_repeated_sequence_layout():
    from study.copy_task import repeated_sequence

    pool = torch.arange(100, 200)
    ids = repeated_sequence(pool, 5, 3, seed=7)
    assert ids[0] == 2 and ids.numel() == 16  # BOS + 3 x 5
    assert torch.equal(ids[1:6], ids[6:11]) and torch.equal(ids[1:6], ids[11:16])
    assert len(set(ids[1:6].tolist())) == 5  # distinct tokens
    assert torch.equal(ids, repeated_sequence(pool, 5, 3, seed=7))  # seeded
    with pytest.raises(ValueError, match="length"):
        repeated_sequence(pool, 1, 2, seed=0)


@needs_organism
def test_shipped_checkpoint_shape_size_and_dtype():
    from opt66b import config_from_hf
    from opt66b.io import read_tensors

    size = (TINY / "model.safetensors").stat().st_size
    assert size <= 10 * 1024 * 1024, f"{size} bytes > 10 MiB"
    tensors, _ = read_tensors(TINY / "model.safetensors")
    assert all(t.dtype == torch.float16 for t in tensors.values())
    cfg = config_from_hf(TINY)
    assert cfg.vocab_size == 50272 and 2 <= cfg.num_layers <= 4 and cfg.do_layer_norm_before
    emb = [t for k, t in tensors.items() if k.endswith("embed_tokens.weight")][0]
    assert emb.shape[0] == 50272


@needs_organism
@pytest.mark.xfail(strict=True, reason="the shipped organism has not grown an induction head yet (top prefix "
                   "matching ~0.04 in training_log.json); remove this mark once study/train_tiny.py's recipe "
                   "gives one")
def test_organism_induction_head_and_copy_pruning():
    from opt66b import load_model, load_tokenizer
    from study.copy_task import pruning_experiment, token_pool

    torch.manual_seed(0)
    model = load_model(TINY, dtype=torch.float32)
    tok = load_tokenizer(TINY)
    res = pruning_experiment(model, token_pool(tok), seeds=8, length=25)
    top = max(max(row) for row in res["prefix_matching"])
    assert top >= 0.5, f"top prefix-matching head scores {top:.3f}"
    assert res["induction_heads"], "no head scores >= 0.5"
    # README numbers (8 seeds, length 25); 0.05 absolute slack covers CPU/BLAS rounding differences
    assert res["accuracy_full"] >= 0.8
    assert res["accuracy_induction_pruned"] <= 0.2
    assert res["accuracy_control_pruned"] >= res["accuracy_full"] - 0.1


@needs_organism
def test_training_log_matches_shipped_weights():
    import json

    from opt66b.io import sha256_file

    log = json.loads((TINY / "training_log.json").read_text())
    assert log["model_sha256"] == sha256_file(TINY / "model.safetensors")  # the log describes these bits
    assert len(log["loss_curve"]) == log["settings"]["steps"]
    top = max(max(row) for row in log["prefix_matching"])
    assert abs(top - log["top_score"]) < 1e-4  # rounded to 4 decimals in the log


def test_copy_experiment_runs_on_a_random_model(tiny_config):
    """Shapes and bookkeeping of the experiment on a random 2x4 model (no induction head: k = 0)."""
    from conftest import random_model
    from study.copy_task import pruning_experiment

    model = random_model(tiny_config)
    res = pruning_experiment(model, torch.arange(10, 120), seeds=2, length=6, threshold=0.99)
    assert len(res["prefix_matching"]) == 2 and len(res["prefix_matching"][0]) == 4
    assert all(0.0 <= v <= 1.0 + 1e-6 for row in res["prefix_matching"] for v in row)  # fp32 sum of probs
    assert res["induction_heads"] == [] and res["control_heads"] == []
    assert res["accuracy_induction_pruned"] == res["accuracy_full"]  # nothing pruned: same forward
