"""Multi-process sweeps (distributed.py): a 2-process torchrun/gloo run writes the same files as one process.

A toy sweep (run_units) and the real prune/sweeps.py head-pruning sweep on a tiny random model
with a stand-in evaluation (the real TaskEvaluation needs the dataset files) are each run with one
process and with `torchrun --nproc_per_node 2` (gloo on CPU), and their files compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opt66b.runs import distributed

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import sys, torch
sys.path.insert(0, {root!r})
from pathlib import Path
from opt66b.runs import distributed

out = Path(sys.argv[1])
units = [f"task{{t}}-shot{{s}}" for t in range(3) for s in (0, 1)]

def compute(u):
    g = torch.Generator().manual_seed(sum(map(ord, u)))  # result depends on the unit only, not the rank
    return {{"unit": u, "value": float(torch.randn(8, generator=g).sum())}}

merged = distributed.run_units(units, lambda u: out / "units" / f"{{u}}.json", compute,
                               merge=lambda rs: {{"rows": [r for _, r in rs]}}, merged_path=out / "merged.json")
rank, world = distributed.rank_world()
(out / f"ran-{{rank}}.txt").write_text(",".join(distributed.my_units(units)))
distributed.finish()
'''


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(extra)
    return env


def _run(args, timeout=120, **kw):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_my_units_round_robin(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed.my_units(list(range(8))) == [1, 4, 7]
    assert not distributed.is_main()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_cuda_offset(2) == 2  # local rank 1 with 2 GPUs per process owns cuda:2, cuda:3


def test_run_units_single_process_is_resumable(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []

    def compute(u):
        calls.append(u)
        return {"u": u, "sq": u * u}
    merged = distributed.run_units([1, 2, 3], lambda u: tmp_path / f"{u}.json", compute, merged_path=tmp_path / "m.json")
    assert merged == {"1": {"u": 1, "sq": 1}, "2": {"u": 2, "sq": 4}, "3": {"u": 3, "sq": 9}}
    (tmp_path / "2.json").unlink()  # a unit lost to a crash
    distributed.run_units([1, 2, 3], lambda u: tmp_path / f"{u}.json", compute, merged_path=tmp_path / "m.json")
    assert calls == [1, 2, 3, 2]  # only the missing unit was recomputed
    assert json.loads((tmp_path / "m.json").read_text()) == merged


def test_two_process_gloo_equals_one_process(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(script), str(one)], env=_env())
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(script), str(two)], env=_env(OMP_NUM_THREADS="1"))
    assert (two / "ran-0.txt").read_text() == "task0-shot0,task1-shot0,task2-shot0"
    assert (two / "ran-1.txt").read_text() == "task0-shot1,task1-shot1,task2-shot1"
    assert (one / "merged.json").read_text() == (two / "merged.json").read_text()  # byte-identical merge
    files_one = sorted(p.name for p in (one / "units").iterdir())
    assert files_one == sorted(p.name for p in (two / "units").iterdir()) and len(files_one) == 6
    for name in files_one:
        assert (one / "units" / name).read_text() == (two / "units" / name).read_text()


PRUNE_SCRIPT = r'''
import sys, torch
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from pathlib import Path
from conftest import random_model, sweep_of
from opt66b import OPTConfig
from opt66b.runs import distributed

out, imp = Path(sys.argv[1]), Path(sys.argv[2])
model = random_model(OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, vocab_size=128,
                               max_positions=64), seed=1)
ids = torch.randint(0, 128, (4, 10), generator=torch.Generator().manual_seed(2))

class Task:
    PRIMARY_METRIC, NAME, VERSION = "acc", "stand-in", 0
    def data_files(self):
        return []

class Evaluation:  # stand-in for tasks' evaluation: "accuracy" = agreement with the unpruned argmax
    def __init__(self, shots):
        self.shots = shots
        self.ref = model(ids[:, shots:]).logits.argmax(-1)
    def run(self, head_mask=None, ffn_mask=None, **kw):
        pred = model(ids[:, self.shots:], head_mask=head_mask, ffn_mask=ffn_mask).logits.argmax(-1)
        return {{"acc": float((pred == self.ref).double().mean())}}

tasks = {{"copa": Task(), "piqa": Task()}}
with torch.no_grad():
    sweep_of(model, None, tasks, "heads", "own", [0, 1], out, lambda m, t, task, k: Evaluation(k),
             importance_dir=imp, head_percents=[0, 25, 50, 75])
distributed.finish()
'''


def test_prune_sweep_two_processes_equal_one(tmp_path):
    pytest.importorskip("prune.sweeps")
    import torch

    from opt66b.runs.results import write_tensors

    imp = tmp_path / "importance"
    for k in (0, 1):
        for t, seed in (("copa", 0), ("piqa", 1)):
            scores = torch.rand(2, 4, generator=torch.Generator().manual_seed(seed + 10 * k), dtype=torch.float64)
            write_tensors(imp / f"shots-{k}" / f"{t}.safetensors", {"importance": scores})
    script = tmp_path / "prune_sweep.py"
    script.write_text(PRUNE_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests")))
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(script), str(one), str(imp)], env=_env())
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          str(script), str(two), str(imp)], env=_env(OMP_NUM_THREADS="1"))
    a, b = (json.loads((d / "heads-own.json").read_text()) for d in (one, two))
    for table in (a, b):
        table.pop("meta")  # creation time and argv differ by design
    assert a == b and a["missing_units"] == []
    assert set(a["results"]) == {"copa", "piqa"} and a["results"]["copa"]["shots-0"]["0"]["0"] == 100.0
    units = sorted(p.relative_to(one) for p in one.rglob("h*_f*.json"))
    assert len(units) == 16 and units == sorted(p.relative_to(two) for p in two.rglob("h*_f*.json"))


STUDY = ["all", "--tasks", "copa", "cb", "rte", "--shots", "0", "--limit", "4", "--n-docs", "2", "--seeds", "2"]


@pytest.fixture(scope="module")
def one_process_study(tmp_path_factory):
    """The small study run whole by one process: what every multi-process or resumed run must write."""
    out = tmp_path_factory.mktemp("study") / "one"
    _run([sys.executable, str(ROOT / "run.py"), *STUDY, "--out", str(out)], env=_env(OMP_NUM_THREADS="1"), timeout=600)
    return out


def _torchrun(processes: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            str(ROOT / "run.py"), *STUDY, "--out", str(out)]


def test_the_whole_study_under_a_three_process_torchrun_writes_what_one_process_writes(tmp_path, one_process_study):
    """`torchrun --nproc_per_node 3 run.py all ...` (gloo, CPU, the tiny OPT): every step splits its work units
    over the processes by cost, the processes wait for each other between steps, rank 0 alone writes the shared
    files and the report; every number equals the single-process run's (work.json and each process's work
    file count each process's own share, so they are left out of that comparison). The plan is the schedule:
    work.json sets each process's executed FLOPs beside the FLOPs the plan the run made assigned it, equal
    within 10% for every step whose masks are known before the run; where two rankings mask the same heads
    (the aggregate's and a task's own on a model of 8 heads) or the transfer partners are read at run time, the
    plan is an upper bound of the step."""
    from compare_runs import compare

    one, three = one_process_study, tmp_path / "three"
    proc = _run(_torchrun(3, three), env=_env(OMP_NUM_THREADS="1"), timeout=900)
    assert proc.stderr.count("[all] step 1/") == 1  # one process speaks for the study
    work = json.loads((three / "work.json").read_text())
    upper_bound = {"head pruning (aggregate ranking)", "cross-task transfer (highest / lowest correlated partners)"}
    for step, row in work.items():
        ranks = row["processes"]
        assert len(ranks) == 3 and all(r["planned_flops"] is not None for r in ranks), step
        if step in upper_bound:
            assert row["flops"] <= sum(r["planned_flops"] for r in ranks) * 1.0001, step
            continue
        for r in ranks:
            assert abs(r["executed_flops"] - r["planned_flops"]) <= 0.1 * max(r["planned_flops"], 1), (step, r)
    assert sum(1 for row in work.values() if sum(r["executed_flops"] > 0 for r in row["processes"]) >= 2) >= 5
    rep = compare(one, three)  # work.json and work/ are records of each invocation, left out
    assert rep["number_diffs"] == {} and rep["only_in_a"] == [] and rep["only_in_b"] == [], rep
    assert (three / "report.md").is_file() and (three / "prune" / "transfer.json").is_file()


def _descendants(pid: int) -> list[int]:
    """Every process under `pid` (Linux /proc): torchrun starts its workers in sessions of their own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds torchrun's workers through Linux /proc")
def test_a_killed_two_process_torchrun_resumes_on_one_and_on_three_processes_to_the_clean_result(
        tmp_path, one_process_study):
    """A node lost midway: the 2-process torchrun of `all` is frozen in the middle of its pruning sweeps (a second run
    into its directory meanwhile is refused, naming it), then every one of its processes is killed (SIGKILL: no
    cleanup, its lock and half-written files left). Copies of what it left are resumed by one process and by three;
    each takes the stale lock over with one line, and every result file equals the clean one-process run's."""
    import shutil
    import signal

    from compare_runs import compare

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun(2, killed), env=_env(OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "[all] step 6/" in line:  # head pruning under the aggregate ranking: steps 1-5 are whole, 6 is not
                break
        else:
            pytest.fail(f"the torchrun ended before step 6 (exit {proc.wait()})")
        workers = _descendants(proc.pid)
        for pid in [proc.pid, *workers]:
            os.kill(pid, signal.SIGSTOP)  # frozen mid-step: its processes still hold the directory
        second = subprocess.run([sys.executable, str(ROOT / "run.py"), *STUDY, "--out", str(killed)],
                                env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and str(killed) in second.stderr, second.stderr
        assert "another run is writing here" in second.stderr and "Traceback" not in second.stderr
    finally:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    assert (killed / "run.lock").is_file() and not (killed / "report.md").exists()
    for processes in (1, 3):
        resumed = tmp_path / f"resumed-on-{processes}"
        shutil.copytree(killed, resumed)
        argv = ([sys.executable, str(ROOT / "run.py"), *STUDY, "--out", str(resumed)] if processes == 1
                else _torchrun(processes, resumed))
        done = _run(argv, env=_env(OMP_NUM_THREADS="1"), timeout=900)
        assert done.stderr.count("taking over the stale lock") == 1, done.stderr[-2000:]
        rep = compare(one_process_study, resumed)
        assert rep["number_diffs"] == {} and rep["only_in_a"] == [] and rep["only_in_b"] == [], (processes, rep)
        assert not (resumed / "run.lock").exists() and (resumed / "report.md").is_file()
