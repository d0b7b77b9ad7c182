"""`run.py export-pruned` end to end: the dry run's numbers, masks from rankings, every command on the
exported model, and bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, random_model, write_checkpoint

from opt66b import OPTConfig, load_model
from opt66b.fileio import read_json
from opt66b.runs.results import read_tensors, write_json, write_tensors
from opt66b.runs.mask_files import write_masks
from run import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "src"
    cfg = OPTConfig(hidden_size=16, num_layers=2, num_heads=2, ffn_dim=32, vocab_size=50272, max_positions=2048)
    return write_checkpoint(random_model(cfg, seed=21), d)


@pytest.fixture(scope="module")
def rankings(tmp_path_factory):
    """Importance with both heads of layer 0 least important; FFN ranking with layer 1 first."""
    d = tmp_path_factory.mktemp("rank")
    write_tensors(d / "aggregate.safetensors", {"importance": torch.tensor([[0.1, 0.2], [0.9, 0.8]])})
    write_json(d / "aggregate.json", {"ranking": [1, 0]})
    return d


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    assert err.startswith("run.py export-pruned: error: ")
    return err


def test_dry_run_at_the_papers_point(capsys):
    """70% of OPT-66B's 4608 heads = 3225 heads of 4 D Dh + 3 Dh parameters; 20% of 64 FFNs = 12 FFNs of
    2 D F + F + D + 2 D (its pre-LN LayerNorm). Bytes at fp16 = 2 x parameters."""
    assert main(["export-pruned", "--dry-run", "--random-weights", "opt-66b", "--head-percent", "70",
                 "--ffn-percent", "20"]) == 0
    out = capsys.readouterr().out
    d, f, dh = 9216, 36864, 128
    heads = 3225 * (4 * d * dh + 3 * dh)
    ffns = 12 * (2 * d * f + f + d + 2 * d)
    assert f"heads: remove 3225 of 4608: {heads / 1e9:.3f}B parameters, {2 * heads / 2**30:.2f} GiB" in out
    assert f"FFNs:  remove 12 of 64: {ffns / 1e9:.3f}B parameters" in out
    assert f"total: remove {(heads + ffns) / 1e9:.3f}B parameters" in out
    assert "depend only on how many are removed" in out


def test_export_from_rankings_then_eval_induction_and_importance(checkpoint, rankings, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["export-pruned", "--model", str(checkpoint), "--head-importance",
                 str(rankings / "aggregate.safetensors"), "--head-percent", "50", "--ffn-ranking",
                 str(rankings / "aggregate.json"), "--ffn-percent", "50", "--out", str(out)]) == 0
    assert "removed 2 heads and 1 FFNs" in capsys.readouterr().out
    raw = read_json(out / "config.json")
    assert raw["pruned_heads"] == {"0": [0, 1]} and raw["opt66b_pruned_ffn"] == [1]
    assert raw["opt66b_export"]["head_percent"] == 50 and "head_importance_sha256" in raw["opt66b_export"]

    # eval: the exported model's log-likelihoods equal the masked full model's (fp32 summation order only)
    masks = write_masks(tmp_path / "m.safetensors", torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([1.0, 0.0]))
    common = ["--device", "cpu", "--dtype", "float32", "--data", str(FIXTURES), "--tasks", "copa", "--limit", "3"]
    assert main(["eval", "--model", str(out), *common, "--out", str(tmp_path / "e1")]) == 0
    assert main(["eval", "--model", str(checkpoint), *common, "--head-mask", str(masks), "--ffn-mask", str(masks),
                 "--out", str(tmp_path / "e2")]) == 0
    lls = [[json.loads(line)["loglikelihood"] for line in (tmp_path / d / "shots-0" / "requests" / "copa.jsonl").open()]
           for d in ("e1", "e2")]
    assert len(lls[0]) == 6 and lls[0] == pytest.approx(lls[1], abs=1e-5, rel=0)

    # induction scores and head importance run on it; removed heads score 0 in the original numbering
    assert main(["induction", "prefix", "--model", str(out), "--seeds", "1", "--out", str(tmp_path / "ind")]) == 0
    scores = read_tensors(tmp_path / "ind" / "prefix_matching_paper.safetensors")[0]["mean"]
    assert scores.shape == (2, 2) and torch.all(scores[0] == 0) and torch.all(scores[1] > 0)
    assert main(["importance", "heads", "--model", str(out), "--data", str(FIXTURES), "--tasks", "copa",
                 "--shots", "0", "--n-docs", "2", "--out", str(tmp_path / "imp")]) == 0
    imp = read_tensors(tmp_path / "imp" / "shots-0" / "copa.safetensors")[0]["importance"]
    assert imp.shape == (2, 2) and torch.all(imp[0] == 0) and torch.all(imp[1] > 0)
    # a sweep on the exported model with its own ranking: the removed heads rank first, so 50% (2 of
    # the 4 original heads) is the exported model itself and 75% removes one more
    assert main(["prune", "heads", "--model", str(out), "--importance", str(tmp_path / "imp"), *common,
                 "--shots", "0", "--head-percents", "0", "50", "75", "--out", str(tmp_path / "sweep")]) == 0
    table = read_json(tmp_path / "sweep" / "heads-own.json")["results"]["copa"]["shots-0"]
    assert table["0"]["0"] == table["50"]["0"] and set(table) == {"0", "50", "75"}


def _bad(argv, capsys, out):
    assert main(["export-pruned", *argv, "--out", str(out)]) == 2
    assert not out.exists()
    return one_error_line(capsys)


def test_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys):
    wrong = write_masks(tmp_path / "wrong.safetensors", torch.ones(3, 2))
    err = _bad(["--model", str(checkpoint), "--head-mask", str(wrong)], capsys, tmp_path / "o1")
    assert str(wrong) in err and "(layers, heads) = (2, 2)" in err
    everything = write_masks(tmp_path / "all.safetensors", torch.zeros(2, 2))
    err = _bad(["--model", str(checkpoint), "--head-mask", str(everything)], capsys, tmp_path / "o2")
    assert str(everything) in err and "removes every head of every layer" in err
    half = write_masks(tmp_path / "half.safetensors", torch.full((2, 2), 0.5))
    assert "values other than 0 and 1" in _bad(["--model", str(checkpoint), "--head-mask", str(half)], capsys,
                                                tmp_path / "o3")
    assert "percentage alone" in _bad(["--model", str(checkpoint), "--head-percent", "50"], capsys, tmp_path / "o4")
    ok = write_masks(tmp_path / "ok.safetensors", torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    before = sorted(p.name for p in checkpoint.iterdir())
    err = _bad(["--model", str(checkpoint), "--head-mask", str(ok)], capsys, checkpoint / "pruned")
    assert "inside the source checkpoint" in err and sorted(p.name for p in checkpoint.iterdir()) == before
    assert main(["export-pruned", "--model", str(checkpoint), "--head-mask", str(ok), "--out", str(checkpoint)]) == 2
    assert "inside the source checkpoint" in one_error_line(capsys)
    assert sorted(p.name for p in checkpoint.iterdir()) == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    assert main(["export-pruned", "--model", str(checkpoint), "--head-mask", str(ok), "--out", str(busy)]) == 2
    assert "exists and is not empty" in one_error_line(capsys) and [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_killed_export_resumes(checkpoint, tmp_path, monkeypatch):
    """A crash after the first shard leaves no config.json (not loadable); the rerun keeps that shard."""
    import opt66b.export as export

    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    real = export.atomic_save_file
    calls = []

    def dies_on_second(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(export, "atomic_save_file", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        export.export_pruned(checkpoint, tmp_path / "x", mask, max_shard_bytes=1 << 20)
    assert not (tmp_path / "x" / "config.json").exists()
    first = sorted((tmp_path / "x").glob("model-*.safetensors"))
    assert len(first) == 1
    stamp = first[0].stat().st_mtime_ns
    monkeypatch.setattr(export, "atomic_save_file", real)
    export.export_pruned(checkpoint, tmp_path / "x", mask, max_shard_bytes=1 << 20)
    assert first[0].stat().st_mtime_ns == stamp  # kept, not rewritten
    ids = torch.arange(3, 19).view(2, 8)
    want = load_model(checkpoint)(ids, head_mask=mask).logits
    assert (load_model(tmp_path / "x")(ids).logits - want).abs().max() <= 1e-5
