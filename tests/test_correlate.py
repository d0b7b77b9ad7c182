"""`run.py correlate` on synthetic importance files (3 layers x 4 heads, tasks a/b/c, shots 0/1/5)."""

from __future__ import annotations

import json

import pytest
import torch

import run
from opt66b.fileio import sha256_file
from opt66b.runs.results import write_tensors
from prune.stats import mean_and_variance, paper_argsort_correlation, spearman, top_fraction_overlap


def _imp(seed: int) -> torch.Tensor:
    return torch.rand(3, 4, generator=torch.Generator().manual_seed(seed))  # (L, H), n = 12 heads


def _write(root, shots=(0, 1, 5), aggregate=True):
    """a: random; b = 2a (same ranking); c = -a (reversed ranking); each shot adds its own noise to a."""
    written = {}
    for k in shots:
        a = _imp(0) + 0.1 * _imp(100 + k)
        tensors = {"a": a, "b": 2 * a, "c": -a}
        for task, imp in tensors.items():
            written[(k, task)] = write_tensors(root / f"shots-{k}" / f"{task}.safetensors", {"importance": imp})
        if aggregate:
            write_tensors(root / f"shots-{k}" / "aggregate.safetensors",
                          {"importance": (tensors["a"] + tensors["b"] + tensors["c"]) / 3})
    return written


def test_correlate_cli_end_to_end(tmp_path):
    written = _write(tmp_path / "imp")
    assert run.main(["correlate", "--importance", str(tmp_path / "imp"), "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "correlations.json").read_text())

    shot = res["shots"]["0"]
    # no seen task among a, b, c: the matrices fall back to all tasks, the aggregate as the last row
    assert shot["tasks"] == ["a", "b", "c", "aggregate"] and shot["matrix_tasks"] == "all" and shot["n_heads"] == 12
    rho = shot["spearman"]["rho"]
    assert rho[0][1] == 1.0 and rho[0][2] == -1.0 and shot["spearman"]["p"][0][1] == 0.0
    assert shot["top_overlap"][0][1] == 1.0 and shot["top_overlap"][0][2] == 0.0  # k = floor(.3*12) = 3
    # The paper's variant is reported under its own label and equals the stats function on the files.
    a0 = (_imp(0) + 0.1 * _imp(100)).reshape(-1).tolist()
    c0 = [-v for v in a0]
    assert shot["paper_argsort_pearson"][0][2] == pytest.approx(paper_argsort_correlation(a0, c0), abs=1e-15)
    # vs aggregate: (a + 2a - a)/3 = 2a/3 ranks like a.
    assert shot["vs_aggregate"]["a"]["rho"] == 1.0 and shot["vs_aggregate"]["c"]["rho"] == -1.0
    assert shot["aggregate_source"] == "file"

    # Cross-shot: per task and pair, then mean and sample variance over tasks.
    assert sorted(res["cross_shot"]) == ["0v1", "0v5", "1v5"]
    c05 = res["cross_shot"]["0v5"]
    a5 = (_imp(0) + 0.1 * _imp(105)).reshape(-1).tolist()
    rho_a, p_a = spearman(a0, a5)
    assert c05["per_task"]["a"]["rho"] == pytest.approx(rho_a, abs=1e-15)  # JSON round-trips doubles exactly
    assert c05["per_task"]["a"]["p"] == pytest.approx(p_a, abs=1e-15)
    assert c05["per_task"]["c"]["top_overlap"] == pytest.approx(top_fraction_overlap(c0, [-v for v in a5]))
    # b = 2a and c = -a in both shots keep the same cross-shot rank relation as a.
    assert c05["per_task"]["b"]["rho"] == c05["per_task"]["a"]["rho"]
    mean, var = mean_and_variance([c05["per_task"][t]["rho"] for t in "abc"])
    assert c05["mean"]["rho"] == pytest.approx(mean, abs=1e-15)
    assert c05["variance"]["rho"] == pytest.approx(var, abs=1e-15)

    meta = res["metadata"]
    assert meta["input_sha256"]["shots-1/b.safetensors"] == sha256_file(written[(1, "b")])  # relative: moves keep it
    assert len(meta["input_sha256"]) == 12 and meta["layers_heads"] == [3, 4]
    assert "PAPER'S VARIANT" in res["definitions"]["paper_argsort_pearson"]


def test_correlate_matches_scipy_on_files(tmp_path):
    scipy_stats = pytest.importorskip("scipy.stats")
    root = tmp_path / "imp"
    x, y = _imp(1), _imp(2).round(decimals=1)  # rounding creates ties
    write_tensors(root / "shots-0" / "x.safetensors", {"importance": x})
    write_tensors(root / "shots-0" / "y.safetensors", {"importance": y})
    run.main(["correlate", "--importance", str(root), "--out", str(tmp_path / "out")])
    shot = json.loads((tmp_path / "out" / "correlations.json").read_text())["shots"]["0"]
    ref = scipy_stats.spearmanr(x.reshape(-1).double().numpy(), y.reshape(-1).double().numpy())
    assert shot["spearman"]["rho"][0][1] == pytest.approx(ref.statistic, abs=1e-10)  # float64 rank arithmetic
    assert shot["spearman"]["p"][0][1] == pytest.approx(ref.pvalue, abs=1e-8)  # same t-approximation as scipy
    assert shot["aggregate_source"] == "mean of the task files"  # no aggregate file: computed (spec §5.2)


def test_correlate_subsets_and_errors(tmp_path, capsys):
    _write(tmp_path / "imp", aggregate=False)
    assert run.main(["correlate", "--importance", str(tmp_path / "imp"), "--out", str(tmp_path / "o"),
                     "--shots", "0", "5", "--tasks", "a", "c"]) == 0
    res = json.loads((tmp_path / "o" / "correlations.json").read_text())
    assert sorted(res["shots"]) == ["0", "5"] and res["shots"]["5"]["tasks"] == ["a", "c", "aggregate"]
    assert list(res["cross_shot"]) == ["0v5"]

    assert run.main(["correlate", "--importance", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope: importance directory not found" in capsys.readouterr().err
    assert run.main(["correlate", "--importance", str(tmp_path / "imp"), "--out", str(tmp_path / "o"),
                     "--tasks", "zzz"]) == 2
    assert "no importance file for tasks ['zzz']" in capsys.readouterr().err
    write_tensors(tmp_path / "imp" / "shots-1" / "d.safetensors", {"importance": torch.rand(2, 4)})
    assert run.main(["correlate", "--importance", str(tmp_path / "imp"), "--out", str(tmp_path / "o")]) == 2
    assert "d.safetensors: importance has shape (2, 4)" in capsys.readouterr().err
    assert run.main(["correlate", "--importance", str(tmp_path / "imp"), "--out", str(tmp_path / "o"),
                     "--top-fraction", "1.5"]) == 2
    assert "--top-fraction must be in (0, 1]" in capsys.readouterr().err


def test_unseen_and_synthetic_tasks_stay_out_of_the_seen_statistics(tmp_path):
    """The paper's matrices hold its seen tasks plus the aggregate row; MathQA, LAMBADA and the
    synthetic copy task are reported apart (their correlation with the aggregate), and the cross-shot
    mean and variance are over the seen tasks only."""
    root = tmp_path / "imp"
    vecs = {}
    for k in (0, 1):
        for i, task in enumerate(("copa", "rte", "mathqa", "synthetic_copy")):
            vecs[k, task] = _imp(10 * i + k)
            write_tensors(root / f"shots-{k}" / f"{task}.safetensors", {"importance": vecs[k, task]})
        agg = (vecs[k, "copa"] + vecs[k, "rte"]) / 2
        write_tensors(root / f"shots-{k}" / "aggregate.safetensors", {"importance": agg})
    assert run.main(["correlate", "--importance", str(root), "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "correlations.json").read_text())
    shot = res["shots"]["0"]
    assert shot["tasks"] == ["copa", "rte", "aggregate"] and shot["matrix_tasks"] == "seen"
    assert len(shot["spearman"]["rho"]) == 3 and set(shot["vs_aggregate"]) == {"copa", "rte"}
    agg0 = ((vecs[0, "copa"] + vecs[0, "rte"]) / 2).reshape(-1).tolist()
    assert shot["spearman"]["rho"][2][0] == pytest.approx(spearman(agg0, vecs[0, "copa"].reshape(-1).tolist())[0])
    other = shot["other_tasks"]
    assert other["tasks"] == ["mathqa", "synthetic_copy"]
    want = spearman(vecs[0, "mathqa"].reshape(-1).tolist(), agg0)[0]
    assert other["vs_aggregate"]["mathqa"]["rho"] == pytest.approx(want)
    assert set(other["vs_seen"]["synthetic_copy"]) == {"copa", "rte"}
    c01 = res["cross_shot"]["0v1"]
    assert c01["tasks"] == ["copa", "rte"] and set(c01["other_tasks"]) == {"mathqa", "synthetic_copy"}
    mean, _ = mean_and_variance([c01["per_task"][t]["rho"] for t in ("copa", "rte")])
    assert c01["mean"]["rho"] == pytest.approx(mean)


def test_without_an_aggregate_file_the_aggregate_is_the_mean_of_the_seen_tasks_only(tmp_path):
    """The paper's aggregate averages its 14 seen tasks; an unseen (mathqa) or synthetic task file in the same
    directory must not move it. Checked against the mean written by hand of the two seen tasks."""
    root = tmp_path / "imp"
    t = {name: _imp(i) for i, name in enumerate(("copa", "boolq", "mathqa", "synthetic_copy"), start=1)}
    for name, tensor in t.items():
        write_tensors(root / "shots-0" / f"{name}.safetensors", {"importance": tensor})
    assert run.main(["correlate", "--importance", str(root), "--out", str(tmp_path / "out")]) == 0
    shot = json.loads((tmp_path / "out" / "correlations.json").read_text())["shots"]["0"]
    assert shot["aggregate_source"] == "mean of the seen task files"
    by_hand = ((t["copa"].double() + t["boolq"].double()) / 2).reshape(-1).tolist()
    for task in ("copa", "boolq"):
        rho, _ = spearman(t[task].reshape(-1).double().tolist(), by_hand)
        assert shot["vs_aggregate"][task]["rho"] == pytest.approx(rho, abs=1e-12)
    unseen = shot["other_tasks"]["vs_aggregate"]["mathqa"]["rho"]
    assert unseen == pytest.approx(spearman(t["mathqa"].reshape(-1).double().tolist(), by_hand)[0], abs=1e-12)
