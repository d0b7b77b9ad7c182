"""One command-line grammar: --help of every sub-command without torch, the same defaults and
option meanings everywhere (opt66b/cli_options.py, tasks/cli_options.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

import run
from tasks.cli_options import SAMPLES_DIR

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: any import of torch raises, then every --help is printed.
HIDE_TORCH_AND_PRINT_HELP = r"""
import contextlib, importlib.abc, io, json, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is hidden in this test")
sys.meta_path.insert(0, NoTorch())
import argparse, run

def walk(parser, path):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, path + [name])

helps = {}
for path in walk(run.build_parser(), []):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        run.main(path + ["--help"])
    helps[" ".join(path)] = out.getvalue()
print(json.dumps({"helps": helps, "torch_loaded": "torch" in sys.modules}))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", HIDE_TORCH_AND_PRINT_HELP], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["torch_loaded"] is False
    return result["helps"]


def test_every_help_prints_without_torch_and_ends_with_an_example(helps):
    # the top level, all 13 sub-commands and their nested steps (data, importance heads|ffn, induction ...)
    for cmd in ("", "all", "eval", "importance heads", "importance ffn", "prune", "induction prefix",
                "induction copying", "induction capacity", "copytask", "report", "data", "device-map",
                "correlate", "convert"):
        assert cmd in helps, f"no help for {cmd!r}"
    for cmd, text in helps.items():
        assert text.startswith("usage: run.py"), (cmd, text[:200])
        tail = text.rstrip().rsplit("\n\n", 1)[-1]
        assert tail.startswith(("example:", "examples:")), f"`run.py {cmd} --help` does not end with an example"
        assert "python run.py" in tail or "torchrun" in tail, cmd


def _parse(argv: list[str]) -> argparse.Namespace:
    return run.build_parser().parse_args(argv)


STEPS = {  # sub-command argv (minimal) -> the seed default the paper's code uses for it
    "eval": (["eval", "--tasks", "copa"], 42),
    "importance heads": (["importance", "heads", "--tasks", "copa"], 1234),
    "importance ffn": (["importance", "ffn", "--tasks", "copa"], 42),
    "prune": (["prune", "heads", "--tasks", "copa"], 42),
}


@pytest.mark.parametrize("name", sorted(STEPS))
def test_task_steps_share_data_shots_seed_and_out(name):
    argv, seed = STEPS[name]
    args = _parse([*argv, "--out", "x"])
    assert args.data == SAMPLES_DIR and SAMPLES_DIR.is_dir()
    assert args.shots == [0, 1, 5]
    assert args.seed == seed
    assert args.out == Path("x")
    assert args.plan is False and args.json is None


def test_all_and_data_check_default_to_the_bundled_samples():
    assert _parse(["all", "--out", "x"]).data == SAMPLES_DIR
    assert _parse(["all", "--out", "x"]).shots == [0, 1, 5]
    assert _parse(["data", "check"]).data == SAMPLES_DIR


def test_induction_steps_take_an_explicit_seed_and_the_old_spelling():
    assert _parse(["induction", "prefix", "--out", "x"]).first_seed == 0
    assert _parse(["induction", "copying", "--seed", "7", "--out", "x"]).first_seed == 7
    assert _parse(["induction", "prefix", "--first-seed", "3", "--out", "x"]).first_seed == 3


def test_copytask_takes_an_explicit_seed():
    assert _parse(["copytask", "--out", "x"]).seed == 0
    assert _parse(["copytask", "--seed", "5", "--out", "x"]).seed == 5


def test_all_forwards_seed_batch_tokens_and_protocol_to_every_step_that_takes_them():
    from study.pipeline import plan_steps, step_args
    from study.run_cli import all_defaults

    argv = ["all", "--tasks", "copa", "piqa", "--out", "x"]
    other = {"paper": "head importance under the corrected protocol's targets (piqa)",
             "corrected": "head importance under the paper protocol's targets (piqa)"}
    plain = {label: step_args(a) for label, a in plan_steps(all_defaults(_parse(argv)), ["copa", "piqa"])}
    given = {label: step_args(a) for label, a in plan_steps(
        all_defaults(_parse([*argv, "--seed", "9", "--batch-tokens", "777", "--protocol", "paper"])), ["copa", "piqa"])}
    # piqa's importance targets differ between the protocols: each run computes them under the other one too
    assert given[other["paper"]].protocol == "corrected" and plain[other["corrected"]].protocol == "paper"
    plain[other["paper"]] = plain.pop(other["corrected"])
    takes = lambda step, name: name in vars(step)
    for label, step in given.items():  # step_args parsed each line: no step was given an option it lacks
        seed = "first_seed" if takes(step, "first_seed") else "seed"  # induction's --seed is its first seed
        wanted = [(seed, 9), ("batch_tokens", 777)] + ([] if label == other["paper"] else [("protocol", "paper")])
        for name, value in wanted:
            if takes(step, name):
                assert getattr(step, name) == value, (label, name)
                assert getattr(plain[label], name) != value, (label, name)  # the step's own default without it
    seeded = [label for label, step in given.items() if takes(step, "seed") or takes(step, "first_seed")]
    assert len(seeded) == 12 and "synthetic copy task" in seeded and "prefix matching" in seeded
    zero = dict(plan_steps(all_defaults(_parse([*argv, "--seed", "0"])), ["copa", "piqa"]))
    assert zero["synthetic copy task"][-2:] == ["--seed", "0"]  # 0 is a seed given, not "no seed"
    assert [label for label, step in given.items() if takes(step, "batch_tokens")] == [
        "evaluation", "FFN oracle", "head pruning (own ranking)", "head pruning (aggregate ranking)", "FFN pruning",
        "combined grid", "cross-task transfer (highest / lowest correlated partners)"]


def test_out_is_required_unless_planning(capsys):
    with pytest.raises(SystemExit) as err:
        run.main(["eval", "--tasks", "copa"])
    assert err.value.code == 2
    assert "--out" in capsys.readouterr().err.strip().splitlines()[-1]


def test_report_takes_out_and_keeps_run_as_an_alias():
    assert _parse(["report", "--out", "r"]).out == Path("r")
    assert _parse(["report", "--run", "r"]).out == Path("r")


def test_json_path_means_write_there_and_dash_means_stdout(tmp_path, capsys):
    # data check: the report rows
    assert run.main(["data", "check", "--tasks", "copa", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["task"] for r in rows} == {"copa"} and all(r["docs"] and r["sha256"] for r in rows)
    path = tmp_path / "check.json"
    assert run.main(["data", "check", "--tasks", "copa", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["rows"] == rows
    assert "copa" in capsys.readouterr().out  # with a file, the table is still printed
    # device-map: the map, usable as a --device-map file
    assert run.main(["device-map", "--size", "opt-66b", "--device-map", "0-31:cuda:0,32-63:cuda:1",
                     "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == {"head": "cuda:0", "layers": {"0-31": "cuda:0", "32-63": "cuda:1"}}
    path = tmp_path / "map.json"
    assert run.main(["device-map", "--size", "opt-66b", "--device-map", "0-31:cuda:0,32-63:cuda:1",
                     "--json", str(path)]) == 0
    assert json.loads(path.read_text())["layers"] == {"0-31": "cuda:0", "32-63": "cuda:1"}
