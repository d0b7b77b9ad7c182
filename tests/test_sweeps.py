"""Oracle FFN importance (cached vs naive), sweep unit loops: masks, counts, resume and ranking sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, oracle_of, random_model, sweep_of


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    from opt66b import OPTConfig

    cfg = OPTConfig(hidden_size=32, num_layers=4, num_heads=4, ffn_dim=64, max_positions=1024)
    return random_model(cfg, seed=11)


class Recording:
    """Wraps a TaskEvaluation and keeps every run's arguments and per-request log-likelihoods."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def run(self, **kw):
        metrics = self.inner.run(**kw)
        self.calls.append((kw, [ll for ll, _ in self.inner.results]))
        return metrics


def test_ffn_cache_matches_naive_reevaluation(model, tokenizer):
    from prune.oracle import ffn_oracle
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    task = get_task("copa", FIXTURES)
    runs = {}
    for cached in (True, False):
        ev = Recording(TaskEvaluation(model, tokenizer, task, shots=1, batch_tokens=256))
        runs[cached] = (ffn_oracle(ev, 4, "acc", cached=cached), ev.calls)
    (fast, fast_calls), (naive, naive_calls) = runs[True], runs[False]
    assert [kw.get("start_layer", 0) for kw, _ in fast_calls] == [0, 0, 1, 2, 3]  # base + one resume per layer
    assert [kw.get("start_layer", 0) for kw, _ in naive_calls] == [0] * 5
    assert fast["metrics"] == naive["metrics"] and fast["drop"] == naive["drop"]
    assert fast["ranking"] == naive["ranking"] and sorted(fast["ranking"]) == [0, 1, 2, 3]
    for (_, lls_fast), (_, lls_naive) in zip(fast_calls, naive_calls):
        # The resumed run reads the recorded float32 input of layer l and repeats the same ops
        # on the same shapes: equal to float32 round-off (observed: bitwise equal).
        torch.testing.assert_close(torch.tensor(lls_fast), torch.tensor(lls_naive), rtol=1e-6, atol=1e-6)
    # Knocking an FFN out changes the scores (the comparison above is not vacuous).
    assert any(lls != fast_calls[0][1] for _, lls in fast_calls[1:])


class FakeEvaluation:
    """Stands in for TaskEvaluation: metric = 1 - (zeroed heads + zeroed FFNs) / 100, masks recorded."""

    def __init__(self, log: list, task_name: str, shots: int):
        self.log, self.key = log, (task_name, shots)

    def run(self, head_mask=None, ffn_mask=None, start_layer=0, record_layer_inputs=False):
        self.log.append((self.key, head_mask, ffn_mask, start_layer))
        off = (0 if head_mask is None else int((head_mask == 0).sum())) + \
              (0 if ffn_mask is None else int((ffn_mask == 0).sum()))
        drop = 0.0 if ffn_mask is None or start_layer == 0 else 0.01 * ((start_layer * 7) % 3)
        return {"acc": 1.0 - off / 100 - drop}


class FakeModel:
    class config:  # noqa: N801 - mimics OPTConfig's attribute names
        num_layers, num_heads, max_positions = 10, 8, 2048


def write_importances(root: Path, tasks: list[str], shots: int, seed: int = 0) -> dict[str, torch.Tensor]:
    from opt66b.runs.results import write_tensors

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in [*tasks, "aggregate"]:
        out[name] = torch.rand(10, 8, generator=g)
        write_tensors(root / f"shots-{shots}" / f"{name}.safetensors", {"importance": out[name]})
    return out


def run(tmp_path, sweep, ranking="own", log=None, **kw):
    from tasks.registry import get_task

    log = [] if log is None else log
    tasks = {t: get_task(t, FIXTURES) for t in ("copa", "rte")}
    table = sweep_of(FakeModel(), None, tasks, sweep, ranking, [0], tmp_path / "out",
                     lambda m, tok, task, k: FakeEvaluation(log, task.NAME, k),
                     importance_dir=tmp_path / "imp", ffn_dir=tmp_path / "ffn", **kw)
    return json.loads(table.read_text()), log


def test_head_sweep_masks_and_counts_follow_masks_py(tmp_path):
    from prune.masks import count_for_percent, head_mask_for_percent

    imps = write_importances(tmp_path / "imp", ["copa", "rte"], 0)
    table, log = run(tmp_path, "heads")
    assert len(log) == 2 * 10  # 2 tasks x 10 percentages, one evaluation each
    for (task, _), head_mask, ffn_mask, _ in log:
        assert ffn_mask is None
        if head_mask is not None:
            # With 80 heads, p% zeroes 8p/10 heads: p is read back from the count; the mask must be
            # exactly masks.py's for this task's own ranking.
            p = round(100 * int((head_mask == 0).sum()) / 80 / 10) * 10
            assert int((head_mask == 0).sum()) == count_for_percent(p, 80)
            assert torch.equal(head_mask, head_mask_for_percent(imps[task], p)), (task, p)
    assert table["counts"]["heads"] == {str(p): count_for_percent(p, 80) for p in range(0, 100, 10)}
    assert table["counts"]["heads"]["90"] == 72 and table["counts"]["heads"]["10"] == 8  # floor(p * 80 / 100)
    # Hand-computed: 30% of 80 heads = 24 off -> acc 0.76 -> 76 points.
    assert table["results"]["copa"]["shots-0"]["30"]["0"] == pytest.approx(76.0)
    assert table["mean_over_tasks"]["shots-0"]["30"]["0"] == pytest.approx(76.0)
    assert table["missing_units"] == []


def test_rankings_own_aggregate_and_cross_task(tmp_path):
    from prune.masks import head_mask_for_percent

    imps = write_importances(tmp_path / "imp", ["copa", "rte", "wic"], 0)
    for ranking, source in (("aggregate", "aggregate"), ("wic", "wic")):
        log = []
        run(tmp_path, "heads", ranking=ranking, log=log, head_percents=[50])
        assert len(log) == 2
        for _, head_mask, _, _ in log:
            assert torch.equal(head_mask, head_mask_for_percent(imps[source], 50))
    with pytest.raises(FileNotFoundError, match="boolq.*run `run.py importance heads`"):
        run(tmp_path, "heads", ranking="boolq", head_percents=[10])


def test_ffn_and_grid_sweeps_use_the_ffn_ranking(tmp_path):
    from opt66b.runs.results import write_json
    from prune.masks import ffn_mask_for_percent

    write_importances(tmp_path / "imp", ["copa", "rte"], 0)
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    for t in ("copa", "rte"):
        write_json(tmp_path / "ffn" / "shots-0" / f"{t}.json", {"ranking": order})
    table, log = run(tmp_path, "ffn", ffn_percents=[0, 30])
    assert [int((f == 0).sum()) for _, _, f, _ in log if f is not None] == [3, 3]
    assert all(torch.equal(f, ffn_mask_for_percent(order, 30, 10)) for _, _, f, _ in log if f is not None)
    assert table["results"]["rte"]["shots-0"]["0"]["30"] == pytest.approx(97.0)
    grid, log = run(tmp_path, "grid", head_percents=[0, 20], ffn_percents=[0, 10])
    # 2 tasks x 4 cells, less the unmasked cell the FFN sweep left in the run's evaluation cache (OUT/evaluations)
    assert len(log) == 2 * 3 and all(h is not None or f is not None for _, h, f, _ in log)
    # Cell (20% heads, 10% FFN): 16 heads + 1 FFN off -> 83 points.
    assert grid["results"]["copa"]["shots-0"]["20"]["10"] == pytest.approx(83.0)
    assert set(grid["results"]["copa"]["shots-0"]) == {"0", "20"}


def test_sweep_resumes_from_unit_files(tmp_path):
    write_importances(tmp_path / "imp", ["copa", "rte"], 0)
    first, log1 = run(tmp_path, "heads")
    unit = tmp_path / "out" / "heads-own" / "shots-0" / "rte" / "h40_f0.json"
    assert unit.is_file()
    unit.unlink()
    second, log2 = run(tmp_path, "heads")
    # the missing cell is written again from the run's evaluation cache (OUT/evaluations): nothing is recomputed
    assert len(log1) == 20 and len(log2) == 0 and unit.is_file()
    assert second["results"] == first["results"]
    for entry in (tmp_path / "out" / "evaluations").glob("*.json"):  # without the cache, only that evaluation runs
        entry.unlink()
    unit.unlink()
    third, log3 = run(tmp_path, "heads")
    assert len(log3) == 1 and third["results"] == first["results"]


def test_ffn_oracle_units_resume_and_aggregate(tmp_path):
    from tasks.registry import get_task

    class Model:
        class config:  # noqa: N801
            num_layers = 4

    tasks = {t: get_task(t, FIXTURES) for t in ("copa", "rte")}
    log = []
    make = lambda m, tok, task, k: FakeEvaluation(log, task.NAME, k)  # noqa: E731
    oracle_of(Model(), None, tasks, [0], tmp_path, make)
    res = json.loads((tmp_path / "shots-0" / "copa.json").read_text())
    # Fake: 1 point per zeroed FFN + (7 l mod 3) points: layer 0 -> 1, 1 -> 2, 2 -> 3, 3 -> 1.
    assert res["drop"] == pytest.approx([1.0, 2.0, 3.0, 1.0])
    assert res["ranking"] == [0, 3, 1, 2]  # stable: ties keep the lower layer first
    agg = json.loads((tmp_path / "shots-0" / "aggregate.json").read_text())
    assert agg["ranking"] == [0, 3, 1, 2] and agg["tasks"] == ["copa", "rte"]
    # Resume: a finished (task, shot) is skipped; a lost layer unit alone is recomputed.
    (tmp_path / "shots-0" / "rte.json").unlink()
    (tmp_path / "shots-0" / "rte" / "layer-002.json").unlink()
    log.clear()
    oracle_of(Model(), None, tasks, [0], tmp_path, make)
    assert [(key, start) for key, _, _, start in log] == [(("rte", 0), 0), (("rte", 0), 2)]
    assert json.loads((tmp_path / "shots-0" / "rte.json").read_text())["ranking"] == [0, 3, 1, 2]


def test_shared_evaluation_cache_reuses_cells_exactly_and_runs_each_once(model, tokenizer, tmp_path):
    """`run.py all` shares one EvaluationCache between its steps: the grid's FFN-0% column is the head
    sweep's cells and its heads-0% row the FFN sweep's. Reused values equal a fresh run of the same
    cell (bit for bit: JSON floats compared as written), and only the new cells are run."""
    from opt66b.runs.results import write_tensors
    from opt66b.runs.store import Work
    from tasks.evaluation import EvaluationCache, TaskEvaluation
    from tasks.registry import get_task

    tasks = {"copa": get_task("copa", FIXTURES)}
    g = torch.Generator().manual_seed(5)
    write_tensors(tmp_path / "imp" / "shots-0" / "copa.safetensors", {"importance": torch.rand(4, 4, generator=g)})
    (tmp_path / "ffn" / "shots-0").mkdir(parents=True)
    (tmp_path / "ffn" / "shots-0" / "copa.json").write_text(json.dumps({"ranking": [2, 0, 3, 1]}))
    make = lambda m, tok, task, k: TaskEvaluation(m, tok, task, k, limit=4, batch_tokens=256)
    dirs = dict(importance_dir=tmp_path / "imp", ffn_dir=tmp_path / "ffn")
    hp, fp = [0, 25, 50], [0, 25, 50]

    def sweeps(root, cache):
        works = {}
        for sweep, kw in (("heads", {"head_percents": hp}), ("ffn", {"ffn_percents": fp}),
                          ("grid", {"head_percents": hp, "ffn_percents": fp})):
            works[sweep] = Work()
            sweep_of(model, tokenizer, tasks, sweep, "own", [0], root, make, **dirs, **kw, work=works[sweep],
                     cache=cache or EvaluationCache(model), limit=4, batch_tokens=256)  # None: a fresh cache per sweep
        tables = {s: json.loads((root / f"{s}-own.json").read_text())["results"]["copa"]["shots-0"] for s in works}
        return tables, {s: w.forward_passes for s, w in works.items()}

    with torch.no_grad():
        shared, shared_passes = sweeps(tmp_path / "shared", EvaluationCache(model))
        fresh, fresh_passes = sweeps(tmp_path / "fresh", None)
    assert shared == fresh  # every cell, reused or not, equals its own fresh evaluation
    per_run = fresh_passes["heads"] // 3  # 3 distinct head masks, one full evaluation each
    assert fresh_passes == {"heads": 3 * per_run, "ffn": 3 * per_run, "grid": 9 * per_run}
    # shared: the FFN sweep's 0% is the head sweep's; the grid runs only its 4 cells with both masked
    assert shared_passes == {"heads": 3 * per_run, "ffn": 2 * per_run, "grid": 4 * per_run}
    assert shared["grid"]["25"]["0"] == shared["heads"]["25"]["0"] and shared["grid"]["0"]["50"] == shared["ffn"]["0"]["50"]


def test_a_mask_of_ones_is_no_mask_bit_for_bit(model, tokenizer):
    """Why EvaluationCache keys a mask of ones as no mask: the model multiplies head outputs and FFN
    outputs by the mask, and x * 1.0 == x exactly, so every log-likelihood is the same bits."""
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    ev = TaskEvaluation(model, tokenizer, get_task("copa", FIXTURES), 1, limit=4, batch_tokens=256)
    with torch.no_grad():
        ev.run()
        plain = [ll for ll, _ in ev.results]
        ev.run(head_mask=torch.ones(4, 4), ffn_mask=torch.ones(4))
        ones = [ll for ll, _ in ev.results]
        ev.run(head_mask=torch.ones(4, 4).index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(0.0)))
        pruned = [ll for ll, _ in ev.results]
    assert ones == plain  # float equality of every request's log-likelihood
    assert pruned != plain  # masking one head changes them: the comparison can fail


@pytest.mark.parametrize("which", ["tiny", "random-3-layer"])
def test_chunked_oracle_equals_the_cached_and_the_naive_one_bit_for_bit(which, model, tokenizer):
    """The bounded-memory FFN oracle (chunks of 1, 2 and all scoring batches) gives the per-request
    log-likelihoods of the cached one (one recording of the whole task) and of the naive one (every
    knock-out from layer 0), bit for bit: every request is scored inside one batch, whatever the chunks."""
    from opt66b import OPTConfig
    from opt66b.runs.loading import load
    from prune.oracle import ffn_knockout_mask, ffn_oracle
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    if which == "tiny":
        net = load(log=lambda m: None)[0]  # the embedded tiny OPT (2 layers)
    else:
        net = random_model(OPTConfig(hidden_size=32, num_layers=3, num_heads=4, ffn_dim=64, max_positions=1024), seed=5)
    layers = net.config.num_layers
    task = get_task("copa", FIXTURES)  # shared contexts: batches with continuation passes too
    ev = TaskEvaluation(net, tokenizer, task, shots=1, limit=8, batch_tokens=64)
    n_units = len(ev.scorer.units)
    assert n_units >= 3  # several batches, so the chunks really cut the task
    naive = {"base": ev.scorer.run()}
    for layer in range(layers):
        naive[layer] = ev.scorer.run(ffn_mask=ffn_knockout_mask(layers, layer))
    ev.scorer.run(record_layer_inputs=True)
    cached = {layer: ev.scorer.run(ffn_mask=ffn_knockout_mask(layers, layer), start_layer=layer)
              for layer in range(layers)}
    runs = [(layer, None, ffn_knockout_mask(layers, layer), layer) for layer in range(layers)]
    for size in (1, 2, n_units):
        chunked = ev.scorer.run_knockouts(runs, size)
        assert chunked["base"] == naive["base"], size
        for layer in range(layers):
            assert chunked[layer] == cached[layer] == naive[layer], (size, layer)  # exact float equality
    assert any(naive[layer] != naive["base"] for layer in range(layers))  # the knock-outs change scores
    a = ffn_oracle(ev, layers, "acc", chunk_units=1)
    b = ffn_oracle(ev, layers, "acc", cached=False)
    assert a["drop"] == b["drop"] and a["metrics"] == b["metrics"]


def test_chunked_oracle_resumes_per_chunk_and_bounds_its_records(tmp_path, model, tokenizer):
    """The FFN oracle under a small record budget: chunk files are written and reused on rerun, and the
    result equals the unbounded run's."""
    from tasks.evaluation import TaskEvaluation
    from tasks.registry import get_task

    tasks = {"piqa": get_task("piqa", FIXTURES)}

    def make(m, tok, task, shots):
        return TaskEvaluation(m, tok, task, shots, limit=6, batch_tokens=48)
    probe = make(model, tokenizer, tasks["piqa"], 0)
    assert len(probe.scorer.units) >= 3
    from opt66b.layer_major import chunk_state_bytes

    tokens = max(sum(int(p.ids.numel()) for p in (u.main, *u.conts)) for u in probe.scorer.units)
    budget = 2 * chunk_state_bytes(tokens, 4, 32, 4)  # two batches' recorded inputs (4 layers x D 32 x fp32) at a time
    oracle_of(model, tokenizer, tasks, [0], tmp_path / "bounded", make, budget=budget)
    chunks = sorted((tmp_path / "bounded" / "shots-0" / "piqa").glob("chunks-2/chunk-*.safetensors"))
    assert len(chunks) == -(-len(probe.scorer.units) // 2)
    oracle_of(model, tokenizer, tasks, [0], tmp_path / "whole", make, budget=None)
    bounded = json.loads((tmp_path / "bounded" / "shots-0" / "piqa.json").read_text())
    whole = json.loads((tmp_path / "whole" / "shots-0" / "piqa.json").read_text())
    assert bounded["drop"] == whole["drop"] and bounded["metrics"] == whole["metrics"]
    # a rerun after losing the merged results reads the chunks back instead of recomputing them
    (tmp_path / "bounded" / "shots-0" / "piqa.json").unlink()
    for layer_file in (tmp_path / "bounded" / "shots-0" / "piqa").glob("layer-*.json"):
        layer_file.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in chunks}
    oracle_of(model, tokenizer, tasks, [0], tmp_path / "bounded", make, budget=budget)
    assert {p: p.stat().st_mtime_ns for p in chunks} == stamps
    assert json.loads((tmp_path / "bounded" / "shots-0" / "piqa.json").read_text())["drop"] == whole["drop"]
