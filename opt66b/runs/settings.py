"""Typed settings: one frozen dataclass per step of the study, the one object that goes from the command
line to the library, and one for the model options every model step shares (opt66b.runs.loading.LoadSettings).

A step's settings class names its fields after the command's options (the argparse dest names) and
lives in the module of the experiment it runs, beside its check and its run:

    settings = EvalSettings.from_args(args)       # a sub-command, after its parse (loading.run_step)
    work = settings.execute(loaded)               # the experiment on a loaded model: what it computed
    line = settings.argv(model_flags)             # the command that computes exactly this

`run.py all` builds the settings of every step in Python (study/study.py) and calls `execute` on them:
no argument list is rendered to run a step, none is parsed back. `argv` renders every option that has
a value, so a line of OUT/commands.txt parses back into an equal settings object (tests/test_settings.py)
and does not depend on the defaults of the release that replays it. Lists become tuples, so settings
are immutable and comparable; a path given as text becomes a Path, and a field with a `parse` function
(a protocol name, a memory budget) holds the parsed value, which renders back as the text it came from.

Field metadata: `flag` (the option string, default `--name-with-dashes`), `positional` (rendered as a
command word, e.g. the sweep of `prune SWEEP`), `parse` (text -> typed value). A field made with
`hidden()` is not an option of the step: derived, or a model option the step also needs (--max-memory).
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar


def option(default: Any = MISSING, *, flag: str | None = None, positional: bool = False,
           parse: Callable[[Any], Any] | None = None) -> Any:
    """A settings field that is a command-line option (or a positional word with positional=True)."""
    meta = {"flag": flag, "positional": positional, "parse": parse}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


def hidden(default: Any = None, *, parse: Callable[[Any], Any] | None = None) -> Any:
    """A settings field that is not rendered as one of the step's options."""
    return field(default=default, metadata={"parse": parse})


@dataclass(frozen=True)
class Options:
    """Frozen values of parsed options (module docstring): the base of step and model settings."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            value = tuple(value) if isinstance(value, list) else value
            parse = f.metadata.get("parse")
            if parse is not None and (value is not None or f.default is not None):  # None: the typed default
                value = parse(value)
            elif isinstance(value, str) and str(f.type).startswith("Path"):  # a path given as text, as argparse would
                value = Path(value)
            object.__setattr__(self, f.name, value)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Options":
        """The settings a parsed command line holds (fields its parser does not define keep their default)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def options(self) -> list[str]:
        """Every option with a value, defaults included (a replayed line must not depend on the defaults
        of a later release), in field order; None, an unset flag and hidden fields are left out."""
        out: list[str] = []
        for f in fields(self):
            if f.metadata.get("positional") or "flag" not in f.metadata:
                continue
            value = getattr(self, f.name)
            if value is None or value is False:
                continue
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            if value is True:
                out.append(flag)
            elif isinstance(value, tuple):
                out += [flag, *map(str, value)]
            else:
                out += [flag, str(value)]
        return out


@dataclass(frozen=True)
class StepSettings(Options):
    """Base of every step's settings (module docstring)."""

    COMMAND: ClassVar[tuple[str, ...]] = ()  # run.py words before the options
    USES_MODEL: ClassVar[bool] = True  # model steps take the model options and a loaded model

    def command(self) -> list[str]:
        return [*self.COMMAND, *(str(getattr(self, f.name)) for f in fields(self) if f.metadata.get("positional"))]

    def argv(self, model_flags: list[str] | tuple[str, ...] = ()) -> list[str]:
        """The run.py argument list that computes exactly this step (model flags after the command)."""
        return [*self.command(), *(model_flags if self.USES_MODEL else ()), *self.options()]

    def check(self) -> None:
        """Bad values and missing inputs, each one clear error, before a model is loaded (execute checks too)."""

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, int] | None:
        """Run the step on `loaded` (model, tokenizer, info); returns the model work it computed (passes,
        tokens: what OUT/work.json records), None for steps that only read files."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class ModelStep(StepSettings):
    """What every step that runs the model takes besides the model options: --recompute (replace units
    made under other settings) and --threads (CPU threads; applied once per process)."""

    recompute: bool = option(False)
    threads: int | None = option(None)


def step_class(path: str) -> type[StepSettings]:
    """The settings class named "package.module:Class" (a sub-command's `step`; imported when it runs)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
