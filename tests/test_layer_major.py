"""Layer order (opt66b/layer_major.py): many masked runs over a chunk, each layer fetched once, the same bits.

The reference is the model's own whole forward on each pass alone (itself proven against transformers
in test_model.py) and the batch-order oracle: layer order must give the same per-request
log-likelihoods exactly (float equality), since every layer call gets the same inputs, masks, cache
and attention mask. Exact equality holds on CPU because a layer's kernels do not depend on what else
ran before it.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FIXTURES, random_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _nets():
    from opt66b import OPTConfig
    from opt66b.runs.loading import load

    tiny = load(log=lambda m: None)[0]  # the embedded tiny OPT (2 layers)
    three = random_model(OPTConfig(hidden_size=32, num_layers=3, num_heads=4, ffn_dim=64, max_positions=1024), seed=5)
    return {"tiny": tiny, "random-3-layer": three}


@pytest.fixture(scope="module")
def nets():
    return _nets()


def _chunk_passes(ev):
    from opt66b import position_ids_from_mask
    from opt66b.layer_major import ChunkPass

    passes = [[u.main, *u.conts] for u in ev.scorer.units]
    units = [[ChunkPass(p.ids, p.mask, position_ids_from_mask(p.mask, p.ids.shape[1]), p.ctx_rows if j else None)
              for j, p in enumerate(ps)] for ps in passes]
    return passes, units


@pytest.mark.parametrize("which", ["tiny", "random-3-layer"])
def test_layer_order_equals_each_pass_forward_alone(which, nets, tokenizer):
    """Every pass's final hidden state under a head mask and an FFN mask, resumed or not, equals the
    whole forward of that pass alone (context pass first, continuation on its rows' cache)."""
    from opt66b.layer_major import MaskedRun, run_layer_major
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    net = nets[which]
    L, H = net.config.num_layers, net.config.num_heads
    ev = TaskEvaluation(net, tokenizer, get_task("copa", FIXTURES), shots=1, limit=6, batch_tokens=64)
    passes, units = _chunk_passes(ev)
    assert any(len(ps) > 1 for ps in passes)  # shared contexts: continuation passes on a cache
    head = torch.ones(L, H)
    head[L - 1, 1] = 0
    ffn = torch.ones(L)
    ffn[L - 1] = 0
    runs = [MaskedRun(), MaskedRun(head_mask=head, start_layer=L - 1), MaskedRun(ffn_mask=ffn, start_layer=1),
            MaskedRun(head_mask=head, ffn_mask=ffn)]
    got, order = {}, []
    run_layer_major(net, units, runs, lambda r, u, j, h: (got.__setitem__((r, u, j), h), order.append((r, u, j))))
    assert order == [(r, u, j) for r in range(len(runs)) for u, ps in enumerate(passes) for j in range(len(ps))]
    with torch.no_grad():
        for r, run in enumerate(runs):
            for u, ps in enumerate(passes):
                out = net(ps[0].ids, attention_mask=ps[0].mask, head_mask=run.head_mask, ffn_mask=run.ffn_mask,
                          use_cache=True, logits="none", position_ids=units[u][0].positions)
                assert torch.equal(got[r, u, 0], out.hidden), (r, u)
                for j, p in enumerate(ps[1:], 1):
                    past = [(k.index_select(0, p.ctx_rows), v.index_select(0, p.ctx_rows)) for k, v in out.past_key_values]
                    cont = net(p.ids, attention_mask=p.mask, head_mask=run.head_mask, ffn_mask=run.ffn_mask,
                               past_key_values=past, logits="none", position_ids=units[u][j].positions)
                    assert torch.equal(got[r, u, j], cont.hidden), (r, u, j)
    assert not torch.equal(got[0, 0, 0], got[3, 0, 0])  # the masks change the states: the test can fail


@pytest.mark.parametrize("which", ["tiny", "random-3-layer"])
def test_layer_order_oracle_equals_batch_order_and_naive(which, nets, tokenizer):
    """Scorer.run_knockouts in layer order, chunks of 1, 2 and all batches: the batch-order oracle's and
    the naive (every knock-out from layer 0) per-request results, bit for bit."""
    from prune.oracle import ffn_knockout_mask
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    net = nets[which]
    L = net.config.num_layers
    ev = TaskEvaluation(net, tokenizer, get_task("copa", FIXTURES), shots=1, limit=8, batch_tokens=64)
    n = len(ev.scorer.units)
    assert n >= 3
    runs = [(layer, None, ffn_knockout_mask(L, layer), layer) for layer in range(L)]
    batch_order = ev.scorer.run_knockouts(runs, 2, layer_major=False)
    naive = {"base": ev.scorer.run(), **{layer: ev.scorer.run(ffn_mask=ffn_knockout_mask(L, layer)) for layer in range(L)}}
    assert batch_order == naive
    for size in (1, 2, n):
        assert ev.scorer.run_knockouts(runs, size, layer_major=True) == naive, size
    assert any(naive[layer] != naive["base"] for layer in range(L))


def test_streamed_oracle_takes_layer_order_and_fetches_each_layer_once_per_chunk(tmp_path, tokenizer):
    """With every layer streamed from the checkpoint files (--offload mmap), run_knockouts takes layer
    order by itself: each layer is copied to the compute device once per chunk (L per chunk, where
    batch order copies the layers each run recomputes, for every batch), and the results are the
    resident model's bit for bit (the same float32 values through the same kernels)."""
    from opt66b import OPTConfig, save_checkpoint
    from opt66b.offload import load_streamed
    from prune.oracle import ffn_knockout_mask
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    cfg = OPTConfig(hidden_size=32, num_layers=4, num_heads=4, ffn_dim=64, max_positions=1024)
    resident = random_model(cfg, seed=9)
    save_checkpoint(resident, tmp_path)
    streamed = load_streamed(tmp_path, dtype=torch.float32)
    task = get_task("piqa", FIXTURES)
    evs = {name: TaskEvaluation(m, tokenizer, task, 0, limit=6, batch_tokens=48) for name, m in
           (("resident", resident), ("streamed", streamed))}
    n = len(evs["streamed"].scorer.units)
    assert n >= 3
    runs = [(layer, None, ffn_knockout_mask(4, layer), layer) for layer in range(4)]
    want = evs["resident"].scorer.run_knockouts(runs, 2)
    for size in (1, 2, n):
        before = streamed.streamer.copies
        assert evs["streamed"].scorer.run_knockouts(runs, size) == want, size
        assert streamed.streamer.copies - before == -(-n // size) * cfg.num_layers
    before = streamed.streamer.copies
    evs["streamed"].scorer.run_knockouts(runs, n, layer_major=False)
    per_batch = streamed.streamer.copies - before
    assert per_batch >= n * (4 + 4 + 3 + 2 + 1)  # batch order: every run's layers for every pass of every batch


def test_layer_order_refuses_runs_it_cannot_resume(nets):
    from opt66b.layer_major import ChunkPass, MaskedRun, run_layer_major

    net = nets["random-3-layer"]
    ids = torch.tensor([[5, 6, 7]])
    unit = [[ChunkPass(ids, torch.ones(1, 3, dtype=torch.long), torch.tensor([[2, 3, 4]]))]]
    ffn = torch.tensor([0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="runs\\[0\\] must run every layer"):
        run_layer_major(net, unit, [MaskedRun(start_layer=1)], lambda *a: None)
    with pytest.raises(ValueError, match="resumes from \\(runs\\[0\\]\\) in layers < 2"):
        run_layer_major(net, unit, [MaskedRun(), MaskedRun(ffn_mask=ffn, start_layer=2)], lambda *a: None)
    with pytest.raises(ValueError, match="start_layer must be in \\[0, 3\\)"):
        run_layer_major(net, unit, [MaskedRun(), MaskedRun(start_layer=3)], lambda *a: None)


def test_streamed_sweeps_run_each_task_in_layer_order_with_the_resident_tables(tmp_path, tokenizer):
    """run_sweep on a streamed model (every layer from the files) evaluates a (task, shot)'s cells
    together in layer order: each layer is fetched once per chunk for all of them, the tables equal
    the resident model's (same bits: JSON values compared), a rerun resumes from the chunk files
    (no layer fetched again), and the grid after the head and FFN sweeps runs only its new cells."""
    from opt66b import OPTConfig, save_checkpoint
    from opt66b.runs.results import write_tensors
    from opt66b.offload import load_streamed
    from opt66b.runs.store import UnitStore, Work
    from conftest import sweep_of
    from tasks.evaluation import EvaluationCache, TaskEvaluation
    from tasks.registry import get_task

    cfg = OPTConfig(hidden_size=32, num_layers=4, num_heads=4, ffn_dim=64, max_positions=1024)
    resident = random_model(cfg, seed=13)
    save_checkpoint(resident, tmp_path / "ckpt")
    streamed = load_streamed(tmp_path / "ckpt", dtype=torch.float32)
    tasks = {"copa": get_task("copa", FIXTURES)}
    g = torch.Generator().manual_seed(5)
    write_tensors(tmp_path / "imp" / "shots-0" / "copa.safetensors", {"importance": torch.rand(4, 4, generator=g)})
    (tmp_path / "ffn" / "shots-0").mkdir(parents=True)
    (tmp_path / "ffn" / "shots-0" / "copa.json").write_text(json.dumps({"ranking": [2, 0, 3, 1]}))
    make = lambda m, tok, task, k: TaskEvaluation(m, tok, task, k, limit=8, batch_tokens=24)  # noqa: E731
    batches = len(make(resident, tokenizer, tasks["copa"], 0).scorer.units)
    assert batches >= 3
    sweeps = (("heads", {"head_percents": [0, 25, 50]}), ("ffn", {"ffn_percents": [0, 25, 50]}),
              ("grid", {"head_percents": [0, 25, 50], "ffn_percents": [0, 25, 50]}))

    def tables(net, root, max_memory="cpu=8GiB"):
        cache, out, copies = EvaluationCache(net), {}, {}
        for sweep, kw in sweeps:
            before = getattr(net.streamer, "copies", 0)
            work = Work()
            table = sweep_of(net, tokenizer, tasks, sweep, "own", [0], root, make, importance_dir=tmp_path / "imp",
                             ffn_dir=tmp_path / "ffn", store=UnitStore({}), cache=cache, max_memory=max_memory,
                             work=work, limit=8, batch_tokens=24, **kw)
            out[sweep] = json.loads(table.read_text())["results"]
            copies[sweep] = (getattr(net.streamer, "copies", 0) - before, work.forward_passes)
        return out, copies

    want, _ = tables(resident, tmp_path / "resident")
    got, copies = tables(streamed, tmp_path / "streamed", max_memory="cpu=1TiB")  # one chunk: the whole task
    assert got == want
    passes = len([p for u in make(resident, tokenizer, tasks["copa"], 0).scorer.units for p in (u.main, *u.conts)])
    # heads: the unmasked cell + 2 masks, ffn: its 2 new masks (its 0% is the head sweep's), grid: its 4 cells with
    # both masked; no unmasked run is added as a base (every run starts at layer 0: the first new one is the
    # others' base); every sweep fetches each of the 4 layers once (one chunk)
    assert copies == {"heads": (4, 3 * passes), "ffn": (4, 2 * passes), "grid": (4, 4 * passes)}
    # chunks of one batch: the same tables, each layer fetched once per chunk
    got, copies = tables(streamed, tmp_path / "chunked", max_memory="cpu=4")  # a 1-byte budget: a batch a chunk
    assert got == want and copies["heads"][0] == 4 * batches
    assert len(list((tmp_path / "chunked" / "heads-own" / "shots-0" / "copa").glob("together-*/chunks-1/chunk-*.safetensors"))) == batches
    # a rerun with the unit files lost reads every chunk back: nothing is fetched or run again
    for unit in (tmp_path / "chunked").glob("*-own/shots-0/copa/*.json"):
        unit.unlink()
    got, copies = tables(streamed, tmp_path / "chunked", max_memory="cpu=4")  # a 1-byte budget: a batch a chunk
    assert got == want and {c for c, _ in copies.values()} == {0}


def test_a_streamed_evaluation_runs_in_layer_order_chunks(tmp_path, tokenizer):
    """Scorer.run on a streamed model (the evaluation step, a sweep cell) goes in layer order, chunks of
    `chunk_budget` bytes of states: the resident model's per-request results bit for bit under a head
    and an FFN mask, each layer fetched once per chunk (one chunk: L fetches for the whole task)."""
    from opt66b import OPTConfig, save_checkpoint
    from opt66b.offload import load_streamed
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    cfg = OPTConfig(hidden_size=32, num_layers=4, num_heads=4, ffn_dim=64, max_positions=1024)
    resident = random_model(cfg, seed=17)
    save_checkpoint(resident, tmp_path)
    streamed = load_streamed(tmp_path, dtype=torch.float32)
    task = get_task("copa", FIXTURES)
    head = torch.ones(4, 4)
    head[2, 1] = 0
    ffn = torch.tensor([1.0, 0.0, 1.0, 1.0])
    want = TaskEvaluation(resident, tokenizer, task, 1, limit=8, batch_tokens=64)
    want_metrics = want.run(head_mask=head, ffn_mask=ffn)
    for budget, chunks in ((None, 1), (1, len(want.scorer.units))):
        ev = TaskEvaluation(streamed, tokenizer, task, 1, limit=8, batch_tokens=64, chunk_budget=budget)
        before = streamed.streamer.copies
        assert ev.run(head_mask=head, ffn_mask=ffn) == want_metrics
        assert ev.results == want.results
        assert streamed.streamer.copies - before == chunks * 4
    assert len(want.scorer.units) >= 3


def test_run_knockouts_refuses_a_run_that_changes_layers_it_skips(nets, tokenizer):
    """Both orders check before any work: a knock-out resumed at layer 1 whose FFN mask also changes
    layer 0 would silently reuse the base's layer-0 output; it is refused, naming the run."""
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    net = nets["random-3-layer"]
    ev = TaskEvaluation(net, tokenizer, get_task("copa", FIXTURES), shots=0, limit=2, batch_tokens=64)
    bad = [("bad", None, torch.tensor([0.0, 0.0, 1.0]), 1)]
    for layer_major in (False, True):
        with pytest.raises(ValueError, match="run 'bad': .* layers < 1"):
            ev.scorer.run_knockouts(bad, 1, layer_major=layer_major)


def test_the_whole_study_streamed_from_the_files_writes_what_the_resident_model_writes(tmp_path):
    """`run.py all --offload mmap` on the tiny OPT: every model step streams its layers and runs in layer
    order (evaluation, head importance in example chunks, the oracle, the sweeps, the copying scores),
    and every number of every result file equals the resident run's (chunk files, a resume artifact,
    and work.json, whose counts differ by design, are left out; provenance such as argv may differ)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from compare_runs import compare

    root = Path(__file__).resolve().parents[1]
    argv = ["all", "--tasks", "copa", "cb", "rte", "--shots", "0", "--limit", "4", "--n-docs", "2", "--seeds", "1"]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    runs = {"resident": [], "streamed": ["--offload", "mmap", "--max-memory", "cpu=2GiB"]}
    for name, extra in runs.items():
        proc = subprocess.run([sys.executable, str(root / "run.py"), *argv, *extra, "--out", str(tmp_path / name)],
                              capture_output=True, text=True, env=env, timeout=600, cwd=root)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "layer order" in proc.stderr  # the streamed run said how it runs the oracle
    for name in runs:
        (tmp_path / name / "work.json").unlink()
        for chunk in (tmp_path / name).rglob("chunk-*.safetensors"):
            chunk.unlink()
    rep = compare(tmp_path / "resident", tmp_path / "streamed")
    assert rep["number_diffs"] == {} and rep["only_in_a"] == [] and rep["only_in_b"] == [], rep
    assert rep["json_files"] > 100 and rep["tensor_files"] > 10
