"""Typed step settings (opt66b/runs/settings.py): every step `run.py all` builds renders a command line
that the step's own parser turns back into equal settings, and the settings' defaults are the
parsers' defaults, so the library, the CLI and commands.txt mean the same thing."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from opt66b.runs.loading import LoadSettings
from opt66b.runs.settings import step_class
from study.commands import build_parser
from study.study import StudySettings, fit_to_budgets, study_steps

TASKS = ["copa", "piqa", "rte"]


def study_of(*extra: str):
    """(model settings, steps) of `all` with these options, as study.resolve builds them (without the plan)."""
    args = build_parser().parse_args(["all", "--tasks", *TASKS, "--out", "OUT", *extra])
    load = LoadSettings.from_args(args)
    s = StudySettings.from_args(args).sized(load)
    return load, study_steps(s, load, TASKS, *fit_to_budgets(s, load))


def settings_class_of(argv: list[str]):
    """The settings class a sub-command builds, by parsing the line as run.py does."""
    return step_class(build_parser().parse_args(argv).step)


@pytest.mark.parametrize("extra", [[], ["--seed", "0", "--batch-tokens", "512", "--protocol", "paper", "--recompute",
                                        "--threads", "2", "--limit", "5", "--n-docs", "3", "--seeds", "2"],
                                   ["--random-weights", "opt-125m", "--max-memory", "cpu=8GiB", "--dtype", "bfloat16"]])
def test_every_step_line_parses_back_into_its_settings(extra):
    load, steps = study_of(*extra)
    assert len(steps) == 15
    for label, settings in steps:
        argv = settings.argv(load.options())
        parsed = build_parser().parse_args(argv)
        assert type(settings) is settings_class_of(argv), label
        assert type(settings).from_args(parsed) == settings, (label, argv)
        if settings.USES_MODEL:  # the line loads the model `all` loaded
            assert LoadSettings.from_args(parsed) == load, label
    lines = [" ".join(s.argv(load.options())) for _, s in steps]
    if "--recompute" in extra:  # every model step carries --recompute and --threads
        model_steps = [line for line, (_, s) in zip(lines, steps) if s.USES_MODEL]
        assert all("--recompute" in line and "--threads 2" in line for line in model_steps)


def test_settings_defaults_are_the_parsers_defaults():
    """A settings object built in Python with a field left out means what the command line means with
    the option left out."""
    from dataclasses import fields as dc_fields

    for _, settings in study_of()[1]:
        cls = type(settings)
        required = {f.name: getattr(settings, f.name) for f in dc_fields(cls)
                    if f.default is MISSING or f.metadata.get("positional") or f.name in ("out", "tasks", "importance",
                                                                                            "scores", "data")}
        argv = cls(**required).argv()
        parsed = build_parser().parse_args(argv)
        for f in fields(cls):
            if f.name in required or "flag" not in f.metadata:
                continue
            want = getattr(parsed, f.name)
            want = tuple(want) if isinstance(want, list) else want
            if f.metadata.get("parse") and want is not None:  # the parser gives text, settings hold its typed value
                want = f.metadata["parse"](want)
            assert f.default == want, (cls.__name__, f.name, f.default, want)


def test_settings_are_immutable_and_comparable():
    from dataclasses import FrozenInstanceError

    from tasks.evaluate import EvalSettings
    from tasks.protocol import PAPER

    a = EvalSettings(tasks=["copa"], shots=[0, 1], out=Path("x"))
    assert a == EvalSettings(tasks=("copa",), shots=(0, 1), out=Path("x")) and a.tasks == ("copa",)
    with pytest.raises(FrozenInstanceError):
        a.limit = 3
    assert a.argv()[:1] == ["eval"] and "--shots" in a.argv() and a.protocol.paper_quirks is False
    b = EvalSettings(tasks=["copa"], protocol="paper", max_memory="cpu=2GiB")  # text parsed once into typed values
    from opt66b.cost import ModelShape

    shape = ModelShape(None, 4, None, processes=1)  # resident: the chunk's records on the host
    assert b.protocol is PAPER and b.max_memory["cpu"] == 2 << 30 and b.chunk_budget(shape) == (2 << 30) // 4
    assert b.chunk_budget(ModelShape(None, 4, None, processes=2)) == (2 << 30) // 8  # the node's host, shared
    assert b.argv()[b.argv().index("--protocol") + 1] == "paper" and "--max-memory" not in b.argv()
