"""One command-line grammar: --help of every sub-command without torch, the same defaults and
option meanings everywhere (opt66b/runs/options.py, tasks/cli_options.py)."""

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


STEPS = {  # sub-command argv (minimal) -> the seed default the paper's released code uses for it
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


def test_induction_steps_take_an_explicit_seed():
    assert _parse(["induction", "prefix", "--out", "x"]).first_seed == 0
    assert _parse(["induction", "copying", "--seed", "7", "--out", "x"]).first_seed == 7


def test_copytask_takes_an_explicit_seed():
    assert _parse(["copytask", "--out", "x"]).seed == 0
    assert _parse(["copytask", "--seed", "5", "--out", "x"]).seed == 5


def _study(argv: list[str]):
    """(model settings, {label: settings}) of `all` with these options, as study.resolve builds them."""
    from opt66b.runs.loading import LoadSettings
    from study.study import StudySettings, fit_to_budgets, study_steps

    args = _parse(argv)
    load = LoadSettings.from_args(args)
    s = StudySettings.from_args(args)
    s.check()
    s = s.sized(load)
    return load, dict(study_steps(s, load, ["copa", "piqa"], *fit_to_budgets(s, load)))


def test_all_forwards_seed_batch_tokens_and_protocol_to_every_step_that_takes_them():
    """Each step's settings hold `all`'s --seed, --batch-tokens and --protocol where the step takes them,
    and its commands.txt line (parsed by the step's own parser) holds them too."""
    from dataclasses import fields

    from tasks.protocol import Protocol

    argv = ["all", "--tasks", "copa", "piqa", "--out", "x"]
    other = {"paper": "head importance under the corrected protocol's targets (piqa)",
             "corrected": "head importance under the paper protocol's targets (piqa)"}
    plain = _study(argv)[1]
    load, given = _study([*argv, "--seed", "9", "--batch-tokens", "777", "--protocol", "paper"])
    # piqa's importance targets differ between the protocols: each run computes them under the other one too
    assert given[other["paper"]].protocol.name == "corrected" and plain[other["corrected"]].protocol.name == "paper"
    plain[other["paper"]] = plain.pop(other["corrected"])
    takes = lambda step, name: name in {f.name for f in fields(step)}  # noqa: E731
    for label, step in given.items():
        parsed = _parse(step.argv(load.options()))  # the replayed line, by the step's parser
        seed = "first_seed" if takes(step, "first_seed") else "seed"  # induction's --seed is its first seed
        wanted = [(seed, 9), ("batch_tokens", 777)] + ([] if label == other["paper"] else [("protocol", "paper")])
        for name, value in wanted:
            if takes(step, name):
                got = getattr(parsed, name)
                got = Protocol.named(got) if name == "protocol" else got
                value = Protocol.named(value) if name == "protocol" else value
                assert getattr(step, name) == value == got, (label, name)
                assert getattr(plain[label], name) != value, (label, name)  # the step's own default without it
    seeded = [label for label, step in given.items() if takes(step, "seed") or takes(step, "first_seed")]
    assert len(seeded) == 12 and "synthetic copy task" in seeded and "prefix matching" in seeded
    zero = _study([*argv, "--seed", "0"])[1]
    assert zero["synthetic copy task"].seed == 0 and "--seed 0 " in " ".join(zero["synthetic copy task"].argv())
    assert [label for label, step in given.items() if takes(step, "batch_tokens")] == [
        "evaluation", "FFN oracle", "head pruning (own ranking)", "head pruning (aggregate ranking)", "FFN pruning",
        "combined grid", "cross-task transfer (highest / lowest correlated partners)"]


def test_out_is_required_unless_planning(capsys):
    with pytest.raises(SystemExit) as err:
        run.main(["eval", "--tasks", "copa"])
    assert err.value.code == 2
    assert "--out" in capsys.readouterr().err.strip().splitlines()[-1]


def test_report_takes_out():
    assert _parse(["report", "--out", "r"]).out == Path("r")


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
    assert run.main(["device-map", "--random-weights", "opt-66b", "--device-map", "0-31:cuda:0,32-63:cuda:1",
                     "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == {"head": "cuda:0", "layers": {"0-31": "cuda:0", "32-63": "cuda:1"}}
    path = tmp_path / "map.json"
    assert run.main(["device-map", "--random-weights", "opt-66b", "--device-map", "0-31:cuda:0,32-63:cuda:1",
                     "--json", str(path)]) == 0
    assert json.loads(path.read_text())["layers"] == {"0-31": "cuda:0", "32-63": "cuda:1"}


OLD_SPELLINGS = [  # removed in 0.2 (docs/errors.md): each is refused, naming the option
    ["device-map", "--size", "opt-30b"], ["export-pruned", "--dry-run", "--size", "opt-1.3b"],
    ["export-pruned", "--dry-run", "--heads-percent", "70"], ["induction", "prefix", "--first-seed", "3", "--out", "x"],
    ["report", "--run", "r"], ["eval", "--tasks", "copa", "--paper-quirks", "--out", "x"],
    ["eval", "--tasks", "copa", "--plan", "--json", "p.json"], ["convert", "src", "dst"],
]


@pytest.mark.parametrize("argv", OLD_SPELLINGS)
def test_one_spelling_per_concept_old_spellings_are_refused(argv, capsys):
    """The model shape is --random-weights SIZE everywhere, a head percentage --head-percent(s), the first
    induction seed --seed, a run directory --out, the protocol --protocol, a step's plan --plan-json."""
    with pytest.raises(SystemExit) as err:
        _parse(argv)
    assert err.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option" in err or "unexpected argument" in err, err


def test_one_name_per_model_shape_option():
    assert "--size" not in build_parser_help("device-map") and "--random-weights" in build_parser_help("device-map")


def build_parser_help(command: str) -> str:
    from study.commands import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    return sub.choices[command].format_help()


def test_all_names_each_seed_for_what_it_seeds():
    """`all`'s seeds by role: --eval-seed (docs and demos of every evaluating step), --importance-seed
    (importance demos), --sequence-seed (induction and copy-task sequences); --seed sets the three, and
    a role-named one beside it wins. Each reaches exactly the steps of its role."""
    argv = ["all", "--tasks", "copa", "piqa", "--out", "x"]

    def seeds(*extra):
        steps = _study([*argv, *extra])[1]
        return {label: getattr(s, "first_seed", getattr(s, "seed", None)) for label, s in steps.items()}

    roles = seeds("--eval-seed", "7", "--importance-seed", "8", "--sequence-seed", "9")
    assert {roles[k] for k in ("evaluation", "FFN oracle", "head pruning (own ranking)", "combined grid",
                               "cross-task transfer (highest / lowest correlated partners)")} == {7}
    assert {v for k, v in roles.items() if k.startswith("head importance")} == {8}
    assert {roles[k] for k in ("prefix matching", "copying", "synthetic copy task")} == {9}
    mixed = seeds("--seed", "5", "--importance-seed", "8")
    assert mixed["evaluation"] == 5 and mixed["head importance"] == 8 and mixed["prefix matching"] == 5
    defaults = seeds()
    assert (defaults["evaluation"], defaults["head importance"], defaults["prefix matching"]) == (42, 1234, 0)
    with pytest.raises(ValueError, match="--sequence-seed must be >= 0"):
        _study([*argv, "--sequence-seed", "-1"])


def test_plan_json_is_the_plan_and_json_is_a_result(capsys):
    """--json names one thing, a file-only command's result (data check's rows, device-map's map); the
    plan of a model step is --plan-json, which implies --plan."""
    args = _parse(["eval", "--tasks", "copa", "--plan-json", "-"])
    assert args.plan and str(args.json) == "-"
    assert "--plan-json" in build_parser_help("eval") and "--json" not in build_parser_help("eval").replace("--plan-json", "")
    assert "--json" in build_parser_help("device-map") and "--plan-json" not in build_parser_help("device-map")


@pytest.mark.parametrize("argv, words", [
    (["all", "--shtos", "1", "--out", "x"], ("run.py all: error: unknown option --shtos", "did you mean --shots?")),
    (["importance", "heads", "--tasks", "copa", "--n-dcos", "2"], ("run.py importance heads:", "--n-docs")),
    (["evl"], ("run.py: error:", "unknown choice 'evl'", "did you mean eval?")),
    (["induction", "prefx"], ("run.py induction: error:", "did you mean prefix?")),
    (["all", "--shots", "x", "--out", "o"], ("run.py all: error: argument --shots: invalid int value",)),
    (["all"], ("run.py all: error:", "--out (or --plan)")),
])
def test_a_mistyped_line_is_one_line_with_the_nearest_spelling(argv, words, capsys):
    with pytest.raises(SystemExit) as stop:
        run.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err, err
    for word in words:
        assert word in err, (word, err)
