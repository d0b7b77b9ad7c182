"""Typed step settings (opt66b/runs/settings.py): every step `run.py all` builds renders a command line
that the step's own parser turns back into equal settings, and the settings' defaults are the
parsers' defaults, so the library, the CLI and commands.txt mean the same thing."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from study.commands import build_parser
from study.pipeline import model_flags, plan_steps
from study.run_cli import all_defaults

TASKS = ["copa", "piqa", "rte"]


def all_args(*extra: str):
    return all_defaults(build_parser().parse_args(["all", "--tasks", *TASKS, "--out", "OUT", *extra]))


def settings_class_of(argv: list[str]):
    """The settings class a sub-command's handler builds, by parsing the line as run.py would."""
    from induction.settings import CapacitySettings, CopyingSettings, PrefixSettings
    from prune.settings import CorrelateSettings, FFNOracleSettings, HeadImportanceSettings, PruneSettings
    from study.settings import CopyTaskSettings
    from tasks.settings import DataCheckSettings, EvalSettings

    words = tuple(argv[:2])
    return {("data", "check"): DataCheckSettings, ("eval",): EvalSettings, ("importance", "heads"): HeadImportanceSettings,
            ("importance", "ffn"): FFNOracleSettings, ("prune",): PruneSettings, ("correlate",): CorrelateSettings,
            ("induction", "prefix"): PrefixSettings, ("induction", "copying"): CopyingSettings,
            ("induction", "capacity"): CapacitySettings, ("copytask",): CopyTaskSettings}.get(words) or \
        {"eval": EvalSettings, "prune": PruneSettings, "correlate": CorrelateSettings,
         "copytask": CopyTaskSettings}[argv[0]]


@pytest.mark.parametrize("extra", [[], ["--seed", "0", "--batch-tokens", "512", "--protocol", "paper", "--recompute",
                                        "--threads", "2", "--limit", "5", "--n-docs", "3", "--seeds", "2"],
                                   ["--random-weights", "opt-125m", "--max-memory", "cpu=8GiB", "--dtype", "bfloat16"]])
def test_every_step_line_parses_back_into_its_settings(extra):
    args = all_args(*extra)
    steps = plan_steps(args, TASKS)
    assert len(steps) == 15
    for label, settings in steps:
        argv = settings.argv(model_flags(args))
        parsed = build_parser().parse_args(argv)
        assert type(settings) is settings_class_of(argv), label
        assert type(settings).from_args(parsed) == settings, (label, argv)
        if settings.USES_MODEL:  # the line loads the model `all` loaded
            from opt66b.runs.loading import LOAD_OPTIONS

            assert {o: getattr(parsed, o) for o in LOAD_OPTIONS} == {o: getattr(args, o) for o in LOAD_OPTIONS}, label
    lines = [" ".join(s.argv(model_flags(args))) for _, s in steps]
    if "--recompute" in extra:  # every model step carries --recompute and --threads
        model_steps = [line for line, (_, s) in zip(lines, steps) if s.USES_MODEL]
        assert all("--recompute" in line and "--threads 2" in line for line in model_steps)


def test_settings_defaults_are_the_parsers_defaults():
    """A settings object built in Python with a field left out means what the command line means with
    the option left out."""
    from dataclasses import fields as dc_fields

    for _, settings in plan_steps(all_args(), TASKS):
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
            assert f.default == want, (cls.__name__, f.name, f.default, want)


def test_settings_are_immutable_and_comparable():
    from dataclasses import FrozenInstanceError

    from tasks.settings import EvalSettings

    a = EvalSettings(tasks=["copa"], shots=[0, 1], out=Path("x"))
    assert a == EvalSettings(tasks=("copa",), shots=(0, 1), out=Path("x")) and a.tasks == ("copa",)
    with pytest.raises(FrozenInstanceError):
        a.limit = 3
    assert a.argv()[:1] == ["eval"] and "--shots" in a.argv() and a.paper_quirks is False
