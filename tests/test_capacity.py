"""Capacity retained: hand cases, monotonicity and endpoints, the random reference, files and CLI."""

from __future__ import annotations

import itertools

import pytest
import torch

from induction.capacity import expected_random, pruned_percent, random_curve, retained_curve, run_capacity
from opt66b.fileio import read_json
from opt66b.runs.results import read_tensors, write_tensors


def test_retained_by_hand():
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # total 10
    importance = torch.tensor([[0.4, 0.1], [0.3, 0.2]])  # least important first: heads 1, 3, 2, 0
    # kept after pruning i heads: all 10; 10-2=8; 8-4=4; 4-3=1  -> percent of 10
    assert retained_curve(scores, importance).tolist() == pytest.approx([100.0, 80.0, 40.0, 10.0])
    assert pruned_percent(4).tolist() == [0.0, 25.0, 50.0, 75.0]


def test_curve_is_monotone_from_100_to_the_top_heads_share():
    gen = torch.Generator().manual_seed(0)
    scores, importance = torch.rand(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    curve = retained_curve(scores, importance)
    assert curve.shape == (48,) and curve[0] == pytest.approx(100.0)
    assert bool((curve[1:] <= curve[:-1] + 1e-12).all())  # 1e-12: float64 suffix sums
    top = int(importance.flatten().argmax())
    assert curve[-1] == pytest.approx(100.0 * float(scores.flatten()[top]) / float(scores.sum()))


def test_random_reference_is_the_mean_over_orders():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert expected_random(4).tolist() == [100.0, 75.0, 50.0, 25.0]
    # averaging over all 24 pruning orders gives exactly the expected line 100 - x
    curves = [retained_curve(scores, torch.tensor(perm, dtype=torch.float64).argsort().double())
              for perm in itertools.permutations(range(4))]
    torch.testing.assert_close(torch.stack(curves).mean(0), expected_random(4))
    assert torch.equal(random_curve(scores, 7), random_curve(scores, 7))  # seeded
    assert random_curve(scores, 7)[0] == pytest.approx(100.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        retained_curve(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="positive"):
        retained_curve(torch.zeros(2, 2), torch.ones(2, 2))


def test_run_capacity_files_and_cli(tmp_path):
    import run

    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    write_tensors(tmp_path / "ind" / "prefix_matching_paper.safetensors", {"mean": scores, "var": scores.clone()})
    write_tensors(tmp_path / "imp" / "shots-0" / "aggregate.safetensors",
                  {"importance": torch.tensor([[0.4, 0.1], [0.3, 0.2]])})
    write_tensors(tmp_path / "imp" / "shots-1" / "rte.safetensors", {"importance": torch.tensor([[4.0, 3.0], [2.0, 1.0]])})
    argv = ["induction", "capacity", "--scores", str(tmp_path / "ind"), "--importance", str(tmp_path / "imp"),
            "--out", str(tmp_path / "cap")]
    assert run.main(argv) == 0
    curves, _ = read_tensors(tmp_path / "cap" / "capacity.safetensors")
    assert curves["prefix_matching_paper|shots-0/aggregate"].tolist() == pytest.approx([100, 80, 40, 10])
    assert curves["prefix_matching_paper|shots-1/rte"].tolist() == pytest.approx([100, 60, 30, 10])
    assert curves["prefix_matching_paper|random_expected"].tolist() == [100, 75, 50, 25]
    table = read_json(tmp_path / "cap" / "capacity.json")["retained_at_pruned_percent"]
    assert table["prefix_matching_paper|shots-0/aggregate"]["50%"] == pytest.approx(40.0)
    write_tensors(tmp_path / "imp" / "shots-5" / "bad.safetensors", {"importance": torch.ones(3, 3)})
    assert run.main(argv) == 2  # shape mismatch: a clear one-line error naming both files
    assert run.main([*argv[:2], "--scores", str(tmp_path / "none"), *argv[4:]]) == 2
