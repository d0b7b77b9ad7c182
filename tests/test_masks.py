"""prune/masks.py: p% counts against the paper's OPT-66B counts, rankings, masks, aggregation and mask files."""

from __future__ import annotations

import pytest
import torch

from conftest import random_model
from opt66b.runs.results import write_tensors
from prune.masks import (aggregate_importance, count_for_percent, ffn_mask_for_percent, ffn_ranking,
                         head_mask_for_percent, head_ranking, normalize_per_layer, read_importance)
from opt66b.runs.mask_files import read_masks, write_masks

# OPT-66B (64 layers x 72 heads = 4608) counts per 10% step: floor(p * n / 100), as the paper's released code.
HEADS_66B = {10: 460, 20: 921, 30: 1382, 40: 1843, 50: 2304, 60: 2764, 70: 3225, 80: 3686, 90: 4147}
FFNS_66B = {10: 6, 20: 12, 30: 19, 40: 25, 50: 32, 60: 38, 70: 44, 80: 51, 90: 57}


@pytest.mark.parametrize("percent", sorted(HEADS_66B))
def test_66b_head_mask_counts_match_paper_counts(percent):
    importance = torch.rand(64, 72, generator=torch.Generator().manual_seed(percent))
    mask = head_mask_for_percent(importance, percent)
    assert mask.shape == (64, 72) and mask.dtype == torch.float32
    assert int((mask == 0).sum()) == HEADS_66B[percent] == count_for_percent(percent, 4608)
    # The zeroed heads are exactly the least important ones: every pruned score <= every kept score.
    assert importance[mask == 0].max() <= importance[mask == 1].min()


@pytest.mark.parametrize("percent", sorted(FFNS_66B))
def test_66b_ffn_mask_counts_match_paper_counts(percent):
    ranking = torch.randperm(64, generator=torch.Generator().manual_seed(percent)).tolist()
    mask = ffn_mask_for_percent(ranking, percent, 64)
    assert int((mask == 0).sum()) == FFNS_66B[percent] == count_for_percent(percent, 64)
    assert set(torch.nonzero(mask == 0).view(-1).tolist()) == set(ranking[:FFNS_66B[percent]])


def test_count_edges_and_bad_percent():
    assert count_for_percent(0, 4608) == 0 and count_for_percent(100, 4608) == 4608
    assert count_for_percent(12.5, 64) == 8  # 12.5 * 64 / 100 = 8 exactly
    for bad in (-1, 100.5, float("nan"), "10", True):
        with pytest.raises(ValueError, match="percent"):
            count_for_percent(bad, 10)


def test_head_ranking_is_stable_and_layer_major():
    # flat scores [1, 0, 0, 1]: the two 0s keep flat order (1 then 2), then the two 1s (0 then 3).
    assert head_ranking(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist() == [1, 2, 0, 3]


def test_head_mask_hand_case():
    # flat [.5 .1 .9 .3 .8 .2]; 50% of 6 = 3 heads: .1 (0,1), .2 (1,2), .3 (1,0).
    imp = torch.tensor([[0.5, 0.1, 0.9], [0.3, 0.8, 0.2]])
    assert head_mask_for_percent(imp, 50).tolist() == [[1, 0, 1], [0, 1, 0]]
    assert head_mask_for_percent(imp, 0).eq(1).all()


def test_bad_importance_and_rankings_are_rejected():
    with pytest.raises(ValueError, match="non-finite value at \\(layer, head\\) = \\(1, 0\\)"):
        head_ranking(torch.tensor([[1.0, 2.0], [float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="shape \\(layers, heads\\)"):
        head_mask_for_percent(torch.ones(4), 10)
    with pytest.raises(ValueError, match="permutation of the layer ids 0..3"):
        ffn_mask_for_percent([0, 1, 1, 2], 50, 4)


def test_ffn_ranking_and_mask_hand_case():
    # drops [.5, -1, .5, 0]: ascending -1 (1), 0 (3), then the tie .5 keeps layer 0 before layer 2.
    assert ffn_ranking([0.5, -1.0, 0.5, 0.0]) == [1, 3, 0, 2]
    # 50% of 4 layers = 2: the first two of the ranking [2, 0, 3, 1] are zeroed.
    assert ffn_mask_for_percent([2, 0, 3, 1], 50, 4).tolist() == [0, 1, 0, 1]


def test_aggregate_is_the_mean_of_raw_tensors():
    agg = aggregate_importance([torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 6.0]])])
    assert agg.tolist() == [[2.0, 4.0]]
    with pytest.raises(ValueError, match="different shapes"):
        aggregate_importance([torch.ones(2, 3), torch.ones(3, 2)])
    with pytest.raises(ValueError, match="at least one"):
        aggregate_importance([])


def test_normalize_per_layer_hand_case():
    out = normalize_per_layer(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    # row norm 5 -> (.6, .8); the all-zero row stays 0 thanks to eps. 1e-12: float64 division round-off.
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, 0.0]], dtype=out.dtype), atol=1e-12)


def test_mask_file_roundtrip_and_shape_errors(tmp_path):
    head, ffn = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), torch.tensor([1.0, 0.0])
    path = write_masks(tmp_path / "m.safetensors", head, ffn, metadata={"percent": 30})
    got_head, got_ffn = read_masks(path, num_layers=2, num_heads=3)
    assert torch.equal(got_head, head) and torch.equal(got_ffn, ffn)
    only_ffn = write_masks(tmp_path / "f.safetensors", ffn_mask=ffn)
    assert read_masks(only_ffn, 2, 3)[0] is None
    with pytest.raises(ValueError, match="m.safetensors.*'head_mask' has shape \\(2, 3\\), expected .* \\(4, 3\\)"):
        read_masks(path, num_layers=4, num_heads=3)
    with pytest.raises(ValueError, match="f.safetensors.*'ffn_mask' has shape \\(2,\\)"):
        read_masks(only_ffn, num_layers=3)
    write_tensors(tmp_path / "x.safetensors", {"weights": torch.ones(2)})
    with pytest.raises(KeyError, match="x.safetensors.*found keys \\['weights'\\]"):
        read_masks(tmp_path / "x.safetensors")
    with pytest.raises(KeyError, match="x.safetensors: no 'importance' tensor"):
        read_importance(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_masks(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="layers"):
        write_masks(tmp_path / "bad.safetensors", head, torch.ones(3))


def test_mask_from_file_drives_the_model(tiny_config, tmp_path):
    model = random_model(tiny_config)
    imp = torch.rand(tiny_config.num_layers, tiny_config.num_heads, generator=torch.Generator().manual_seed(1))
    path = write_masks(tmp_path / "m.safetensors", head_mask_for_percent(imp, 50),
                       ffn_mask_for_percent([1, 0], 50, tiny_config.num_layers))
    head, ffn = read_masks(path, tiny_config.num_layers, tiny_config.num_heads)
    ids = torch.arange(10).view(1, 10)  # (B, T)
    with torch.no_grad():
        full = model(ids).logits
        pruned = model(ids, head_mask=head, ffn_mask=ffn).logits
    assert pruned.shape == full.shape
    assert not torch.allclose(pruned, full)  # half the heads and one FFN removed must change the logits
