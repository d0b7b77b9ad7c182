"""Typed settings of a step: one frozen dataclass per experiment, the one object that goes from the
command line to the library.

A step's settings class names its fields after the command's options (the argparse dest names), so

    settings = EvalSettings.from_args(args)       # a sub-command's handler, after its parse
    work = settings.execute(loaded)               # the experiment, on a loaded model
    line = settings.argv(model_flags)             # the command that computes exactly this

and `run.py all` builds the settings of every step in Python and calls `execute` on them: no argument
list is rendered to run a step, none is parsed back. `argv` renders every option that has a value,
so a line of OUT/commands.txt parses back into an equal settings object (tests/test_settings.py) and
does not depend on the defaults of the release that replays it. Lists become tuples, so settings are
immutable and comparable; a path field given as a string becomes a Path, as the parser makes it.

Field metadata: `flag` (the option string, default `--name-with-dashes`), `positional` (rendered as
a command word, e.g. the sweep of `prune SWEEP`), `hidden` (not rendered: derived or internal).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar


def option(default: Any = MISSING, *, flag: str | None = None, positional: bool = False) -> Any:
    """A settings field that is a command-line option (or a positional word with positional=True)."""
    meta = {"flag": flag, "positional": positional}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class StepSettings:
    """Base of every step's settings (module docstring)."""

    COMMAND: ClassVar[tuple[str, ...]] = ()  # run.py words before the options
    USES_MODEL: ClassVar[bool] = True  # model steps take the model options and a loaded model
    PLAN_STEP: ClassVar[str | None] = None  # the --plan planner (study/planners.py PLANNERS), None: no passes

    def __post_init__(self) -> None:
        for f in fields(self):
            value = _frozen(getattr(self, f.name))
            if isinstance(value, str) and str(f.type).startswith("Path"):  # a path given as text, as argparse would
                value = Path(value)
            object.__setattr__(self, f.name, value)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "StepSettings":
        """The settings a parsed command line holds (fields its parser does not define keep their default)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def command(self) -> list[str]:
        return [*self.COMMAND, *(str(getattr(self, f.name)) for f in fields(self) if f.metadata.get("positional"))]

    def options(self) -> list[str]:
        """Every option with a value, defaults included (a replayed line must not depend on the defaults
        of a later release), in field order; None and an unset flag are left out."""
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

    def argv(self, model_flags: list[str] | tuple[str, ...] = ()) -> list[str]:
        """The run.py argument list that computes exactly this step (model flags after the command)."""
        return [*self.command(), *(model_flags if self.USES_MODEL else ()), *self.options()]

    def plan_step(self) -> str | None:
        """The --plan planner of this step (study/planners.py PLANNERS); None for steps without passes."""
        return self.PLAN_STEP

    def namespace(self, **extra: Any) -> argparse.Namespace:
        """The settings as attributes (with `extra`, e.g. the model options), for code that reads a namespace."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        return argparse.Namespace(**{**extra, **values, "plan_step": self.plan_step()})

    @classmethod
    def handle(cls, args: argparse.Namespace, loaded: Any = None) -> int:
        """A sub-command's handler: its parsed options -> settings -> check -> the model loaded (unless
        given) -> execute; returns the exit status. `run.py all` calls `execute` on its own settings."""
        settings = cls.from_args(args)
        settings.check()  # before the model loads
        if not cls.USES_MODEL:
            return settings.execute()["code"]
        if loaded is None:
            from opt66b.runs.loading import load_from_args

            loaded = load_from_args(args)
        return settings.execute(loaded)["code"]

    def check(self) -> None:
        """Bad values and missing inputs, each one clear error, before a model is loaded (execute checks too)."""

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, Any]:
        """Run the step on `loaded` (model, tokenizer, info): {"code": exit status, "work": what it computed}."""
        raise NotImplementedError

