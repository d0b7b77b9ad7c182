"""`--plan` (study/plan.py): the planned passes and tokens are what the run then processes, the FLOP
rule on a hand-computed case, and OPT-66B plans on one 141 GiB GPU and on 2 x 80 GiB without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import run
from conftest import random_model
from opt66b.model import OPT

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"


@pytest.fixture
def counted(monkeypatch):
    """Counts every model pass (OPT.forward), the tokens it is fed and every backward (autograd.grad)."""
    seen = {"forward_passes": 0, "backward_passes": 0, "tokens": 0, "padded_tokens": 0}
    forward, grad = OPT.forward, torch.autograd.grad

    def counting_forward(self, input_ids, attention_mask=None, *args, **kwargs):
        rows, new = input_ids.shape
        seen["forward_passes"] += 1
        seen["padded_tokens"] += rows * new
        seen["tokens"] += rows * new if attention_mask is None else int(attention_mask[:, -new:].sum())
        return forward(self, input_ids, attention_mask, *args, **kwargs)

    def counting_grad(*args, **kwargs):
        seen["backward_passes"] += 1
        return grad(*args, **kwargs)

    monkeypatch.setattr(OPT, "forward", counting_forward)
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    return seen


def plan_of(argv, tmp_path, capsys) -> dict:
    path = tmp_path / "plan.json"
    assert run.main([*argv, "--plan", "--throughput", "1", "--plan-json", str(path)]) == 0
    assert "nothing was run" in capsys.readouterr().out
    return json.loads(path.read_text())


def test_planned_passes_and_tokens_equal_what_each_step_processes(tmp_path, counted, capsys):
    imp, ffn = tmp_path / "importance", tmp_path / "ffn"
    tasks = ["--tasks", "copa", "--limit", "3"]
    steps = [  # (argv without --out, its output directory); small, the tiny model is 2 layers x 4 heads
        (["eval", "--tasks", "copa", "boolq", "--limit", "2", "--shots", "0", "1"], tmp_path / "eval"),
        (["importance", "heads", "--tasks", "copa", "--shots", "0", "1", "--n-docs", "3"], imp),
        (["importance", "ffn", *tasks, "--shots", "0", "1"], ffn),
        # 0% (no mask) and 10% (floor(0.8) = 0 heads: a mask of ones) are one evaluation, 20% and 24%
        # mask the same 1 head and are evaluated once: the plan must follow the sweep's dedupe
        (["prune", "heads", *tasks, "--shots", "0", "--importance", str(imp), "--head-percents", "0", "10", "20",
          "24"], tmp_path / "prune"),
        (["prune", "grid", *tasks, "--shots", "1", "--importance", str(imp), "--ffn-importance", str(ffn),
          "--head-percents", "0", "50", "--ffn-percents", "0", "50"], tmp_path / "prune"),
        (["induction", "prefix", "--seeds", "2"], tmp_path / "induction"),
        (["induction", "copying", "--seeds", "2"], tmp_path / "induction"),
        (["copytask", "--seeds", "3", "--length", "6", "--seed", "2"], tmp_path / "copytask"),
    ]
    for argv, out in steps:
        planned = plan_of(argv, tmp_path, capsys)["total"]
        assert counted["forward_passes"] == 0, "planning ran the model"
        assert run.main([*argv, "--out", str(out)]) == 0
        for key in counted:
            # a step whose passes change needs its planner in study/plan.py changed with it
            assert planned[key] == counted[key], (f"`run.py {' '.join(argv[:2])}`: planned {key} {planned[key]} "
                                                  f"!= {counted[key]} processed; update its planner in study/plan.py")
            counted[key] = 0
        assert planned["forward_passes"] > 0 and planned["tokens"] > 0


TINY = {"layers": 2, "d": 128, "f": 256, "w": 64, "v": 50272}


def test_flops_follow_the_stated_rule_on_a_hand_computed_pass(tmp_path, capsys):
    # induction prefix, seed 0: one pass of BOS + 4 x 25 tokens, no output head, no backward
    t, c = 1 + 4 * 25, TINY
    per_layer = 2 * t * (4 * c["d"] ** 2 + 2 * c["d"] * c["f"]) + 4 * t * t * c["d"]
    plan = plan_of(["induction", "prefix", "--seeds", "1"], tmp_path, capsys)
    assert plan["total"]["flops"] == c["layers"] * per_layer
    assert plan["total"]["seconds"] == pytest.approx(c["layers"] * per_layer / 1e12)  # --throughput 1 TFLOP/s
    # head importance: a forward, and a backward of the activations only (the weights are frozen): the weight
    # matmuls once more (dX = dY W^T), the attention twice (both operands are activations), the head once
    plan = plan_of(["importance", "heads", "--tasks", "copa", "--shots", "0", "--n-docs", "1"], tmp_path, capsys)
    step = plan["steps"][0]
    n, y = step["tokens"], step["logit_positions"]
    matmuls = c["layers"] * 2 * n * (4 * c["d"] ** 2 + 2 * c["d"] * c["f"])
    attention = c["layers"] * 4 * n * n * c["d"]
    head = 2 * y * c["w"] * c["v"]
    assert (step["forward_passes"], step["backward_passes"]) == (1, 1)
    assert step["flops"] == (matmuls + attention + head) + (matmuls + 2 * attention + head)
    # the rule the weights' gradients would add (x W, a matmul of the same size per weight) is not counted
    assert step["flops"] < 3 * (matmuls + attention + head)


def test_backward_memory_resident_keeps_every_layer_streamed_keeps_one_input_per_layer():
    """The activation rule of a backward pass (study/plan.py), on a hand-computed pass of a 3-layer
    shape: resident, the backward keeps each layer's working set B T (6 D + F) x bytes plus one for the
    gradients of the layer being differentiated; with streamed layers importance is layer-wise
    (opt66b.offload.layerwise_backward) and keeps one B T D input per layer plus one layer's working
    set and its gradients. The head device holds 3 fp32 (N, V) blocks: log-softmax, its gradient, the
    logits' gradient."""
    from types import SimpleNamespace

    from opt66b.cost import Passes, Run, WorkUnit
    from study.plan import Shape, StepPlan

    d, f, layers, heads, v, b, t, nbytes = 16, 64, 3, 2, 100, 2, 5, 2
    cfg = SimpleNamespace(hidden_size=d, ffn_dim=f, num_layers=layers, num_heads=heads, head_dim=d // heads,
                          word_embed_proj_dim=d, vocab_size=v, kept_heads=lambda i: list(range(heads)),
                          has_ffn=lambda i: True)
    working = b * t * (6 * d + f) * nbytes
    logits = 3 * 4 * v * 4  # 4 scored positions, three fp32 (N, V) blocks
    for streamed, kept in (({}, (layers + 1) * working), ({2: 1000}, 2 * working + layers * b * t * d * nbytes)):
        shape = Shape(cfg, nbytes, {"cuda:0": layers}, {"cuda:0": 0}, "cuda:0", streamed)
        step = StepPlan("importance heads", shape)
        passes = Passes((((b, t, t, b * t, 4, 0),),))  # one pass: B rows x T positions, 4 scored
        step.add_unit(WorkUnit(("example",), [Run(passes, backward="layerwise" if streamed else "full")]))
        assert step.activations["cuda:0"] == kept + logits, streamed
    assert (layers + 1) * working > 2 * working + layers * b * t * d * nbytes  # the layer-wise rule is the smaller


@pytest.mark.parametrize("tokens", [24, 96])
def test_the_backward_rule_counts_what_autograd_keeps(tokens):
    """The rule's per-layer working set B T (6 D + F) against what autograd really saves for the
    backward of a head-importance example (torch.autograd.graph.saved_tensors_hooks, each storage
    counted once, the frozen weights left out), on a random 3-layer OPT: within 0.8-1.25 (the
    benchmark's band), so the plan's backward memory is the model's and not a guess."""
    from opt66b import Capture, OPTConfig, frozen
    from study.plan import layer_working_bytes, Shape

    cfg = OPTConfig(hidden_size=64, num_layers=3, num_heads=4, ffn_dim=256, vocab_size=512, max_positions=256)
    model = random_model(cfg, seed=2)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, saved = set(), [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in seen:
            seen.add(ptr)
            saved[0] += t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, 512, (1, tokens))
    with frozen(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, capture=Capture(heads=True, grads=True), logits="none")
    shape = Shape(cfg, 4, {"cpu": 3}, {"cpu": 0}, "cpu")
    rule = cfg.num_layers * layer_working_bytes(shape, tokens)
    assert 0.8 <= rule / saved[0] <= 1.25, (rule, saved[0])


def opt66b_params() -> int:
    # the published opt-66b shape: 64 layers, D 9216, F 36864, vocabulary 50272, 2048 + 2 positions
    d, f, layers = 9216, 36864, 64
    per_layer = 4 * d * d + 2 * d * f + (4 * d + f + d) + 4 * d  # matrices, biases, two layer norms
    return layers * per_layer + 50272 * d + 2050 * d + 2 * d


@pytest.mark.parametrize("budgets", ["cuda:0=141GiB", "cuda:0=80GiB,cuda:1=80GiB"])
def test_opt66b_plans_without_a_gpu(budgets, tmp_path, capsys):
    argv = ["eval", "--random-weights", "opt-66b", "--device", "cuda:0", "--device-map", "auto",
            "--max-memory", budgets, "--tasks", "copa", "--shots", "0", "--limit", "8"]
    path = tmp_path / "plan66.json"
    assert run.main([*argv, "--plan", "--throughput", "400", "--plan-json", str(path)]) == 0
    printed = capsys.readouterr().out
    plan = json.loads(path.read_text())
    weights = plan["weights_bytes"]
    assert sum(weights.values()) == 2 * opt66b_params()  # float16, every parameter placed once
    gib = 1 << 30
    budget = {d: float(b.removesuffix("GiB")) * gib for d, b in (x.split("=") for x in budgets.split(","))}
    assert set(weights) == set(budget)
    total = plan["total"]
    for dev, peak in total["peak_bytes"].items():
        assert weights[dev] < peak <= budget[dev], (dev, peak)  # activations on top, within the budget
    assert total["seconds"] == pytest.approx(total["flops"] / 400e12)
    assert total["forward_passes"] > 0 and total["backward_passes"] == 0
    assert "OVER BUDGET" not in printed and "random:opt-66b" in printed


def test_all_plans_every_step_without_loading_a_model(tmp_path, counted, capsys):
    argv = ["all", "--tasks", "copa", "--shots", "0", "--limit", "2", "--n-docs", "2", "--seeds", "2"]
    plan = plan_of(argv, tmp_path, capsys)
    captured = capsys.readouterr()
    assert counted["forward_passes"] == 0 and "loading" not in captured.err
    labels = [s["step"] for s in plan["steps"]]
    assert labels[:2] == ["data check", "evaluation"] and "synthetic copy task" in labels
    assert all(s["command"].startswith("python run.py ") for s in plan["steps"])
    # every step that runs the model has passes; the ones that read results only have none
    for s in plan["steps"]:
        reads_only = s["command"].split()[2] in ("correlate", "data") or " capacity " in s["command"]
        assert (s["forward_passes"] == 0) == reads_only, s["step"]
    assert plan["total"]["forward_passes"] == sum(s["forward_passes"] for s in plan["steps"])


def test_all_plans_the_transfer_step(tmp_path, capsys):
    """With a transfer target (copa) and a partner among the tasks, `all --plan` bounds the transfer
    sweeps: 4 partner rankings x the sweep's distinct percentages, each an evaluation of copa."""
    argv = ["all", "--tasks", "copa", "boolq", "--shots", "0", "--limit", "2", "--n-docs", "2", "--seeds", "2"]
    plan = plan_of(argv, tmp_path, capsys)
    steps = {s["step"].split(" (")[0]: s for s in plan["steps"]}
    transfer = steps["cross-task transfer"]
    assert transfer["forward_passes"] > 0 and transfer["backward_passes"] == 0
    assert transfer["forward_passes"] % 4 == 0  # at most 4 partners, each the same per-sweep passes


def test_throughput_is_measured_on_this_machine_or_reported_missing(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert run.main(["induction", "prefix", "--seeds", "1", "--plan", "--plan-json", str(path)]) == 0
    plan = json.loads(path.read_text())
    assert plan["throughput_source"].startswith("measured") and plan["throughput_tflops"] > 0
    assert plan["total"]["seconds"] == pytest.approx(plan["total"]["flops"] / (plan["throughput_tflops"] * 1e12))
    # a device this machine lacks: no time rather than a guess, and the table says how to get one
    if not torch.cuda.is_available():
        assert run.main(["induction", "prefix", "--seeds", "1", "--device", "cuda:0", "--plan"]) == 0
        out = capsys.readouterr().out
        assert "give --throughput TFLOPS" in out and "?" in out


def test_all_fits_its_scoring_batch_to_the_memory_beside_the_weights(tmp_path, capsys):
    """Without --batch-tokens, `all` on OPT-66B with one 141 GiB GPU takes the largest batch whose
    worst-case scoring activations fit beside the 122 GiB of weights (1024: 2048 would need ~24 GiB), so
    the evaluating steps are planned within the budget; a given --batch-tokens is kept."""
    import json

    import run

    base = ["all", "--plan", "--random-weights", "opt-66b", "--dtype", "float16", "--device-map", "auto",
            "--max-memory", "cuda:0=141GiB,cpu=400GiB", "--throughput", "400", "--tasks", "copa", "rte", "--shots", "0"]
    path = tmp_path / "plan.json"
    assert run.main([*base, "--plan-json", str(path)]) == 0
    err = capsys.readouterr().err
    assert "--batch-tokens 1024: the largest scoring batch" in err
    steps = {s["step"]: s for s in json.loads(path.read_text())["steps"]}
    for name in ("evaluation", "FFN oracle", "head pruning (own ranking)", "combined grid"):
        assert "--batch-tokens 1024" in steps[name]["command"], name
        assert steps[name]["peak_bytes"]["cuda:0"] <= 141 * (1 << 30), name
    # a 2048-token example's full backward would not fit beside the weights: importance goes layer-wise
    assert "head importance takes the layer-wise backward" in err
    assert "--backward layerwise" in steps["head importance"]["command"]
    assert steps["head importance"]["peak_bytes"]["cuda:0"] <= 141 * (1 << 30)
    assert run.main([*base, "--batch-tokens", "4096", "--plan-json", str(path)]) == 0
    assert "--batch-tokens 4096" in {s["step"]: s for s in json.loads(path.read_text())["steps"]}["evaluation"]["command"]


def test_layerwise_backward_of_a_resident_model_gives_the_full_backwards_importance(tmp_path):
    """`importance heads --backward layerwise` on the resident tiny OPT: the same importance as the full
    backward to float round-off, recorded as layer-wise in the metadata."""
    import json

    import run
    from opt66b.runs.results import read_tensors
    from tasks.cli_options import SAMPLES_DIR

    argv = ["importance", "heads", "--data", str(SAMPLES_DIR), "--tasks", "copa", "--shots", "1", "--n-docs", "3"]
    assert run.main([*argv, "--out", str(tmp_path / "full")]) == 0
    assert run.main([*argv, "--backward", "layerwise", "--out", str(tmp_path / "lw")]) == 0
    full, _ = read_tensors(tmp_path / "full" / "shots-1" / "copa.safetensors")
    lw, meta = read_tensors(tmp_path / "lw" / "shots-1" / "copa.safetensors")
    # 1e-5 relative: the same float32 products, recomputed layer by layer and summed in another order
    torch.testing.assert_close(lw["importance"], full["importance"], rtol=1e-5, atol=1e-8)
    assert meta["backward"] == "layer-wise"  # str metadata is stored as is


def test_plan_prices_the_study_on_several_processes(tmp_path, capsys):
    """--processes N: the schedule the run will follow. Each step's work units go to the processes by
    opt66b.runs.distributed.assign (longest first, to the least loaded), the steps one after another: the
    makespan is the sum of each step's slowest process, no less than a perfect split and no more than 4/3 of
    the best assignment (Graham) plus the largest unit; each process's FLOPs add up to the total."""
    import json

    import run
    from opt66b.runs.distributed import assign

    path = tmp_path / "plan.json"
    assert run.main(["all", "--plan", "--throughput", "1", "--processes", "4", "--tasks", "copa", "rte", "--shots", "0",
                     "--plan-json", str(path)]) == 0
    assert "on 4 processes" in capsys.readouterr().out
    plan = json.loads(path.read_text())
    total, per = plan["total"], plan["per_process"]
    assert plan["processes"] == 4 and len(per) == 4
    assert sum(p["flops"] for p in per) == pytest.approx(total["flops"])
    assert total["seconds"] / 4 <= total["makespan_seconds"] * (1 + 1e-9) and total["makespan_seconds"] < total["seconds"]
    for step in plan["steps"]:  # each step's split, recomputed by hand from its per-process loads
        per_step = step["per_process_flops"]
        assert sum(per_step) == pytest.approx(step["flops"]) and len(per_step) == 4
    assert total["makespan_seconds"] == pytest.approx(sum(max(s["per_process_flops"]) for s in plan["steps"]) / 1e12)
    assert assign([5, 4, 3, 3, 3], 2) == [0, 1, 1, 0, 1]  # longest first, to the least loaded: 8 and 10
    assert run.main(["all", "--plan", "--processes", "0", "--tasks", "copa"]) == 2


FIT_ARGV = ["all", "--random-weights", "opt-66b", "--dtype", "float16", "--device", "cuda:0", "--device-map", "auto",
            "--max-memory", "cuda:0=141GiB,cpu=400GiB", "--tasks", "record", "multirc", "--limit", "8",
            "--n-docs", "2", "--seeds", "1", "--batch-tokens", "4096"]


def test_all_keeps_free_what_its_own_plan_needs(tmp_path, capsys):
    """ReCoRD's long passages at --batch-tokens 4096 hold a KV cache in every layer: beside OPT-66B on one
    141 GiB GPU, the auto map's default reserve (about 8192 tokens of one layer, 1833 MiB) leaves the
    evaluation over budget. `all` fits --reserve from its own plan (study.study.fit_reserve): every step's
    peak is within the budget under the map it then builds, the reserve covers the activations the plan
    puts on the GPU, and every model step's command carries it."""
    default_like = plan_of([*FIT_ARGV, "--reserve", "cuda:0=1833MiB"], tmp_path, capsys)
    budget = 141 << 30
    assert max(s["peak_bytes"]["cuda:0"] for s in default_like["steps"]) > budget  # the problem being fixed
    path = tmp_path / "fitted.json"
    assert run.main([*FIT_ARGV, "--plan", "--throughput", "1", "--plan-json", str(path)]) == 0
    printed = capsys.readouterr()
    assert "OVER BUDGET" not in printed.out and "[all] --reserve cuda:0=" in printed.err
    plan = json.loads(path.read_text())
    reserve = plan["reserve"]
    assert reserve and reserve.startswith("cuda:0=") and reserve.endswith("MiB")
    kept = int(reserve.removeprefix("cuda:0=").removesuffix("MiB")) << 20
    weights = plan["weights_bytes"]["cuda:0"]
    assert weights + kept <= budget
    assert plan["model"]["device_map"]["streamed_layers"] > 0  # room was made by streaming layers
    for step in plan["steps"]:
        assert step["peak_bytes"]["cuda:0"] <= budget, step["step"]
        assert step["peak_bytes"]["cuda:0"] - weights <= kept, step["step"]
        if step["forward_passes"]:
            assert f"--reserve {reserve}" in step["command"], step["step"]
    # the reserve is what the largest pass needs (rounded up to a MiB), not a blanket margin
    assert max(s["peak_bytes"]["cuda:0"] for s in plan["steps"]) - weights > kept - (1 << 20)


def test_all_loads_with_the_reserve_its_plan_fitted(tmp_path, monkeypatch, capsys):
    """The run builds the map the plan priced: the study is resolved with its plan, and every step's
    command, and the one model load, get the fitted --reserve."""
    from opt66b.runs.loading import LoadSettings
    from study.commands import build_parser
    from study.pipeline import run_all
    from study.study import resolve

    seen = {}

    class Stop(Exception):
        pass

    def fake_load(self, threads=None, log=None):
        seen["reserve"] = str(self.reserve)
        raise Stop

    monkeypatch.setattr(LoadSettings, "load", fake_load)
    study = resolve(build_parser().parse_args([*FIT_ARGV, "--throughput", "1", "--out", str(tmp_path / "run")]))
    assert all(f"--reserve {study.load.reserve}" in line for line, (_, s) in zip(study.commands(), study.steps)
               if s.USES_MODEL)
    with pytest.raises(Stop):
        run_all(study)
    planned = plan_of(FIT_ARGV, tmp_path, capsys)["reserve"]
    assert seen["reserve"] == planned and planned
    assert not (tmp_path / "run").exists()  # nothing is written before the load


def test_a_second_plan_reads_its_evaluations_from_the_cache_and_changed_data_is_planned_again(tmp_path, monkeypatch,
                                                                                                capsys):
    """study/planners.py keeps each evaluation's passes in OPT66B_CACHE_DIR/plans/ under the data's content:
    the same plan again tokenises nothing and prices the same passes; a changed data file is a new key."""
    import shutil

    from tasks.cli_options import SAMPLES_DIR

    monkeypatch.setenv("OPT66B_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(SAMPLES_DIR / "copa", data / "copa")
    argv = ["eval", "--tasks", "copa", "--shots", "0", "1", "--data", str(data)]

    def plan() -> tuple[dict, str]:
        path = tmp_path / "plan.json"
        assert run.main([*argv, "--throughput", "1", "--plan-json", str(path)]) == 0
        return json.loads(path.read_text())["total"], capsys.readouterr().err

    first, err = plan()
    assert err.count("tokenising its requests") == 2  # 0-shot and 1-shot
    again, err = plan()
    assert "tokenising" not in err and again == first
    assert len(list((tmp_path / "cache" / "plans").glob("copa-*.json"))) == 2
    val = next(p for p in (data / "copa").iterdir() if "val" in p.name)
    val.write_text("".join(val.read_text().splitlines(keepends=True)[:-3]))  # three docs fewer
    changed, err = plan()
    assert err.count("tokenising its requests") == 2 and changed["tokens"] < first["tokens"]


def test_hardware_as_it_is_a_budget_or_a_rate_the_card_cannot_give_is_refused(tmp_path, capsys):
    """--gpu KIND (opt66b/hardware.py): a --max-memory entry above the card's usable memory (what the driver
    exposes less the CUDA context and allocator) or a --throughput above its dense fp16/bf16 peak is exit 2
    naming both numbers; without --throughput the plan runs at the stated fraction of the peak."""
    from opt66b.hardware import GPU_KINDS, SUSTAINED_FRACTION

    base = ["all", "--plan", "--random-weights", "opt-66b", "--device", "cuda:0", "--device-map", "auto",
            "--tasks", "copa", "--shots", "0", "--limit", "2", "--n-docs", "2", "--seeds", "1"]
    a100 = ",".join(f"cuda:{i}=38GiB" for i in range(4)) + ",cpu=400GiB"
    assert run.main([*base, "--max-memory", a100, "--gpu", "a100-40gb", "--throughput", "400"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--throughput 400" in err and "312" in err
    assert run.main([*base, "--max-memory", "cuda:0=80GiB,cpu=400GiB", "--gpu", "h100-80gb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cuda:0=80.0GiB" in err and "78.6 GiB" in err and "79.6" in err
    path = tmp_path / "plan.json"
    assert run.main([*base, "--max-memory", "cuda:0=139GiB,cpu=400GiB", "--gpu", "h200", "--plan-json", str(path)]) == 0
    plan = json.loads(path.read_text())
    assert plan["throughput_tflops"] == pytest.approx(SUSTAINED_FRACTION * GPU_KINDS["h200"].peak_tflops)
    assert plan["gpu"]["kind"] == "h200" and plan["gpu"]["usable_gib"] == pytest.approx(139.4)
    assert run.main([*base, "--gpu", "b300"]) == 2 and "h100-80gb" in capsys.readouterr().err


def test_a_plan_on_the_bundled_samples_says_so_first_and_one_on_a_data_directory_does_not(capsys, tmp_path):
    from study.costs import SAMPLES_LINE

    assert run.main(["eval", "--tasks", "copa", "--shots", "0", "--plan"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == SAMPLES_LINE
    assert run.main(["eval", "--tasks", "copa", "--shots", "0", "--data", str(FIXTURES), "--plan"]) == 0
    assert capsys.readouterr().out.startswith("plan for ")


def test_the_study_progress_line_never_says_100_percent_before_the_end():
    from study.pipeline import StudyClock

    clock = StudyClock({"steps": [{"step": "eval", "flops": 999.0}, {"step": "prune", "flops": 1.0},
                                  {"step": "correlate", "flops": 0.0}], "throughput_tflops": None})
    clock.done("eval", 10.0, computed=True)
    assert "99% of the planned work done" in clock.line(2)  # 99.9% is not yet all of it
    clock.done("prune", 1.0, computed=True)
    assert clock.line(1) == "; the model work is done, 1 step(s) reading files left"
