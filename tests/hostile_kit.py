"""The hostile-input kit: the `Case` record, the `Kit` of cached corrupt copies, and small builders of
corrupt configs, safetensors headers, shard indexes, data files and command lines.

tests/hostile_cases.py builds the table from these; tests/test_hostile.py runs it.
"""

from __future__ import annotations

import bz2
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "opt66b" / "assets" / "tiny-opt"
FIXTURES = ROOT / "tests" / "fixtures" / "data"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    argv: Callable[["Kit", Path], list[str]]  # (kit, out dir that must stay untouched) -> argv
    expect: tuple[str, ...]  # substrings of the error line that name the culprit

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


class Kit:
    """Builds corrupted inputs once per test module, each in its own directory under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, Path] = {}

    def once(self, name: str, build: Callable[[Path], None]) -> Path:
        if name not in self._built:
            path = self.root / name
            path.mkdir(parents=True)
            build(path)
            self._built[name] = path
        return self._built[name]

    # -- models ---------------------------------------------------------------------------------
    def model(self, name: str, config: Any = None, weights: bytes | None = None,
              index: Any = None, extra: Callable[[Path], None] | None = None) -> Path:
        """The tiny model with config.json replaced (object, or raw str/bytes), model.safetensors
        replaced, and/or a shard index added; untouched files are links to the real ones."""
        def build(d: Path) -> None:
            cfg = (TINY / "config.json").read_text() if config is None else config
            if isinstance(cfg, str):
                cfg = cfg.encode()
            (d / "config.json").write_bytes(cfg if isinstance(cfg, bytes) else json.dumps(cfg).encode())
            if weights is None:
                (d / "model.safetensors").symlink_to(TINY / "model.safetensors")
            else:
                (d / "model.safetensors").write_bytes(weights)
            for f in TOKENIZER_FILES:
                (d / f).symlink_to(TINY / f)
            if index is not None:
                (d / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))
            if extra is not None:
                extra(d)
        return self.once("model-" + name, build)

    def tokenizer(self, name: str, files: dict[str, bytes | None]) -> Path:
        """A tokenizer directory: the tiny model's files, with `files` replacing (bytes) or removing (None)."""
        def build(d: Path) -> None:
            for f in TOKENIZER_FILES:
                if f not in files:
                    (d / f).symlink_to(TINY / f)
            for f, content in files.items():
                if content is not None:
                    (d / f).write_bytes(content)
        return self.once("tok-" + name, build)

    def data(self, name: str, task: str, files: dict[str, bytes | None]) -> Path:
        """A data directory holding one fixture task, with `files` of it replaced or removed."""
        def build(d: Path) -> None:
            shutil.copytree(FIXTURES / task, d / task)
            for f, content in files.items():
                if content is None:
                    (d / task / f).unlink()
                else:
                    (d / task / f).write_bytes(content)
        return self.once("data-" + name, build)

    def mask(self, name: str, tensors: dict[str, torch.Tensor] | None = None, raw: bytes | None = None) -> Path:
        from safetensors.torch import save

        def build(d: Path) -> None:
            (d / "mask.safetensors").write_bytes(raw if raw is not None else save(tensors or {}))
        return self.once("mask-" + name, build) / "mask.safetensors"

    def edited_model(self, name: str, key_part: str, edit: Callable[[torch.Tensor], torch.Tensor]) -> Path:
        """The tiny model with the tensor whose key contains `key_part` replaced by edit(copy of it)."""
        from safetensors.torch import load_file, save

        def weights() -> bytes:
            state = load_file(str(TINY / "model.safetensors"))
            key = next(k for k in state if key_part in k)
            state[key] = edit(state[key].clone())
            return save(state, metadata={"format": "pt"})
        return self.model(name, weights=weights()) if "model-" + name not in self._built else self._built["model-" + name]

    def nan_model(self) -> Path:
        """The tiny model with one NaN in the first layer's q_proj weight."""
        def edit(t: torch.Tensor) -> torch.Tensor:
            t[0, 0] = float("nan")
            return t
        return self.edited_model("nan", "layers.0.self_attn.q_proj.weight", edit)


# -- corrupt copies of real files ------------------------------------------------------------------
def tiny_config() -> dict[str, Any]:
    return json.loads((TINY / "config.json").read_text())


def with_config(**changes: Any) -> dict[str, Any]:
    cfg = tiny_config()
    for k, v in changes.items():
        if v is _DROP:
            cfg.pop(k)
        else:
            cfg[k] = v
    return cfg


_DROP = object()


def tiny_header() -> tuple[dict[str, Any], bytes]:
    raw = (TINY / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def safetensors_bytes(header: Any, data: bytes, header_text: bytes | None = None) -> bytes:
    text = header_text if header_text is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@dataclass(frozen=True)
class Replace:
    """Returned by a header edit: use this value as the whole header."""

    value: Any


def header_edit(edit: Callable[[dict[str, Any]], Any]) -> bytes:
    """The tiny model's safetensors with its header changed in place by `edit` (or replaced, if it
    returns a `Replace`)."""
    header, data = tiny_header()
    new = edit(header)
    return safetensors_bytes(new.value if isinstance(new, Replace) else header, data)


def first_key() -> str:
    return next(k for k in tiny_header()[0] if k != "__metadata__")


def index_of(mapping: Callable[[str], Any]) -> dict[str, Any]:
    """A shard index mapping every stored key through `mapping(key)` (default target model.safetensors)."""
    keys = [k for k in tiny_header()[0] if k != "__metadata__"]
    return {"metadata": {"total_size": 0}, "weight_map": {k: mapping(k) for k in keys}}


def fixture_bytes(task: str, name: str) -> bytes:
    return (FIXTURES / task / name).read_bytes()


def bz2_lines(lines: list[str]) -> bytes:
    return bz2.compress("\n".join(lines).encode())


# -- command lines ----------------------------------------------------------------------------------
def ev(out: Path, *extra: Any, model: Path | None = None, data: Path = FIXTURES, tasks: tuple[str, ...] = ("copa",)) -> list[str]:
    argv = ["eval", "--data", str(data), "--tasks", *tasks, "--limit", "1", "--out", str(out)]
    return argv + (["--model", str(model)] if model is not None else []) + [str(x) for x in extra]


def check(data: Path, *tasks: str) -> list[str]:
    return ["data", "check", "--data", str(data), *(["--tasks", *tasks] if tasks else [])]
