"""The unit store: every resumable result file carries the fingerprint of what produced it.

A long study is cut into units (one task at one shot count, one pruning percentage, one seed, ...);
each unit's result is written atomically (opt66b.runs.results) together with a fingerprint: the model's
identity and dtype, the data files' sha256, the task VERSIONs, and every setting that changes the
numbers, plus CODE_VERSION. A rerun reuses a unit only when its fingerprint is the same; a unit made
under other settings is an error naming the file and the fields that differ (never a silent mix),
unless the caller asks to recompute. Each unit also carries the sha256 of its own numbers (CONTENT_KEY): a unit
that no longer parses, or whose numbers differ from that digest (a file system's crash, a copy cut short, a
flipped bit), is said in one line and computed again, never read as a result.

Identity is by content, never by path spelling, so the same data given by another path, or a run
directory moved elsewhere, still resumes. A checkpoint is identified by all of its bytes: config.json,
every safetensors shard's content hash (opt66b/runs/identity.py: computed once per file and remembered
by path, size, modification time and inode) and the tokenizer files, so two checkpoints that differ
in any one weight are two models.

    store = UnitStore(model_fingerprint(info), recompute=False)
    if not store.done(path, task="copa", shots=1):
        store.write_json(path, {"metrics": ...}, task="copa", shots=1)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from opt66b.fileio import read_json, sha256_file
from opt66b.runs.results import json_default, read_tensors, write_json, write_tensors

# Bump when a code change alters numbers of existing units: their files are then refused, not reused.
CODE_VERSION = 1
# Fields earlier releases put in fingerprints and this one records instead (a batch shape moves only the
# last float bits, and a resumed run may have another memory budget): ignored in stored fingerprints.
RETIRED_FIELDS = ("batch_tokens",)
FINGERPRINT_KEY = "fingerprint"  # JSON key / safetensors metadata key holding a unit's fingerprint
# JSON key / safetensors metadata key holding the sha256 of a unit's numbers, so a unit whose bytes changed after
# it was written (a file system's crash, a copy cut short, a flipped bit) is told from a finished one.
CONTENT_KEY = "content_sha256"


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, remembered per (real path, size, mtime) so the steps of one run hash each
    data file once."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def files_fingerprint(paths: Any) -> dict[str, str]:
    """{"<dir>/<name>": sha256} of files by content; the key keeps only the last directory and the
    file name (e.g. "copa/val.jsonl"), so the same data under another root resumes."""
    return {f"{Path(p).parent.name}/{Path(p).name}": file_sha256(p) for p in sorted(map(str, paths))}


def in_memory_info(model: torch.nn.Module) -> dict[str, Any]:
    """A loader-style info dict for a model built in Python rather than loaded (identity by weights)."""
    dtype = next(model.parameters()).dtype
    return {"model": "in-memory", "dtype": str(dtype).removeprefix("torch."), "identity": weights_identity(model)}


class Work:
    """What an experiment call computed (resumed units count nothing): model passes, tokens fed, and the FLOPs
    of the work units it ran, by the rule the plan prices them with (opt66b/cost.py), so OUT/work.json sets the
    executed FLOPs of each process beside the planned ones."""

    def __init__(self) -> None:
        self.forward_passes = self.backward_passes = self.tokens = 0
        self.flops = 0.0

    def add(self, forward: int = 0, backward: int = 0, tokens: int = 0, flops: float = 0.0) -> None:
        self.forward_passes += forward
        self.backward_passes += backward
        self.tokens += tokens
        self.flops += flops

    def add_unit(self, unit: Any, rule: Any) -> None:
        """A WorkUnit (opt66b.cost) run whole: its passes, tokens and FLOPs."""
        for r in unit.runs:
            self.add(forward=r.times * r.passes.count, backward=r.times * r.passes.count if r.backward else 0,
                     tokens=r.times * r.passes.real)
        self.flops += unit.flops(rule)

    def as_dict(self) -> dict[str, Any]:
        return {"forward_passes": self.forward_passes, "backward_passes": self.backward_passes, "tokens": self.tokens,
                "flops": self.flops}


def _canonical(obj: Any) -> Any:
    """JSON-normal form (tuples -> lists, Paths -> str, dict keys -> str), so equal settings compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(_canonical(obj), sort_keys=True).encode()).hexdigest()


def weights_identity(model: torch.nn.Module) -> dict[str, Any]:
    """Identity of an in-memory model (built in Python, not loaded): sha256 over its parameters'
    names, shapes, dtypes and bytes. Reads every weight: meant for small models."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return {"weights_sha256": h.hexdigest()}


def model_fingerprint(info: dict[str, Any]) -> dict[str, Any]:
    """The model part of every fingerprint: identity (by content) and dtype, from a loader's info dict."""
    return {"model": info["identity"], "dtype": info["dtype"]}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the fields that differ between two fingerprints (model.shards.x.bytes, limit, ...)."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


class UnitStore:
    """Fingerprinted result files for one experiment. `common` holds what every unit shares (model,
    dtype, ...); each call adds the unit's own fields. recompute=True replaces units whose
    fingerprint differs instead of refusing them (the CLI's --recompute)."""

    def __init__(self, common: dict[str, Any], recompute: bool = False):
        self.common = _canonical({"code_version": CODE_VERSION, **common})
        self.recompute = recompute

    def fingerprint(self, **fields: Any) -> dict[str, Any]:
        return _canonical({**self.common, **fields})

    def done(self, path: str | Path, **fields: Any) -> bool:
        """True if `path` holds this unit made by the same fingerprint (skip it); False if absent, damaged (said
        in one line: it is computed again and replaced) or different and recompute is on. A different
        fingerprint is a ValueError naming the file and the fields that changed."""
        path = Path(path)
        if not path.is_file():
            return False
        damage = unit_damage(path)
        if damage:
            print(f"[store] {path}: damaged unit ({damage}); computing it again", file=sys.stderr, flush=True)
            return False
        old = read_fingerprint(path)
        new = self.fingerprint(**fields)
        if isinstance(old, dict):
            old = {k: v for k, v in old.items() if k not in RETIRED_FIELDS or k in new}
        if old == new:
            return True
        if self.recompute:
            return False
        if old is None:
            raise ValueError(f"{path}: has no fingerprint (written by older code); rerun with --recompute to "
                             "replace it, or use another --out")
        diff = fingerprint_diff(old, new)
        shown = "; ".join(f"{k}: was {_short(_flatten(old).get(k))}, now {_short(_flatten(new).get(k))}"
                          for k in diff[:4])
        more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
        raise ValueError(f"{path}: made with different settings ({', '.join(diff)}): {shown}{more}; rerun with "
                         "--recompute to replace it, or use another --out")

    def write_json(self, path: str | Path, obj: dict[str, Any], **fields: Any) -> Path:
        return write_json(path, sealed_json(obj, self.fingerprint(**fields)))

    def write_tensors(self, path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None,
                      **fields: Any) -> Path:
        meta = {**(metadata or {}), FINGERPRINT_KEY: self.fingerprint(**fields), CONTENT_KEY: tensors_sha256(tensors)}
        return write_tensors(path, tensors, meta)


def json_sha256(obj: dict[str, Any]) -> str:
    """sha256 of a JSON result's content as its file gives it back (keys sorted; tuples and lists alike)."""
    body = {k: v for k, v in obj.items() if k not in (FINGERPRINT_KEY, CONTENT_KEY)}
    text = json.dumps(json.loads(json.dumps(body, default=json_default)), sort_keys=True)  # int keys: as read back
    return hashlib.sha256(text.encode()).hexdigest()


def sealed_json(obj: dict[str, Any], fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A JSON result as written: its content, the fingerprint of what made it, and the digest of its content."""
    return {**obj, FINGERPRINT_KEY: fingerprint, CONTENT_KEY: json_sha256(obj)}


def json_intact(data: dict[str, Any]) -> bool:
    """True when a parsed JSON result's content matches the digest written with it (or it carries none: older code)."""
    digest = data.get(CONTENT_KEY)
    return digest is None or digest == json_sha256(data)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over a safetensors unit's tensors: names, dtypes, shapes and bytes, by name."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def unit_damage(path: Path) -> str | None:
    """Why a unit file cannot be a finished unit (it does not parse; its numbers differ from the digest written with
    them), None when intact. A file without a digest (older code) is judged by parsing alone."""
    try:
        if path.suffix == ".safetensors":
            tensors, meta = read_tensors(path)
            intact = meta.get(CONTENT_KEY) in (None, tensors_sha256(tensors))
        else:
            intact = json_intact(read_json(path, want=dict))
    except ValueError as err:
        return _one_line(str(err).removeprefix(f"{path}: ").split("; ")[0])
    return None if intact else "its numbers differ from the digest written with them"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:160]


def read_fingerprint(path: str | Path) -> dict[str, Any] | None:
    """The fingerprint stored in a unit file (JSON key or safetensors metadata), None if it has none."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:  # the header only: no tensor is read
                raw = (f.metadata() or {}).get(FINGERPRINT_KEY)
            return None if raw is None else json.loads(raw)
        except Exception as err:  # SafetensorError for a corrupt or truncated file, JSONDecodeError
            raise ValueError(f"{path}: not a readable result file ({type(err).__name__}: {err}); delete it to "
                             "recompute") from err
    data = read_json(path)
    return data.get(FINGERPRINT_KEY) if isinstance(data, dict) else None


def fingerprint_sha256(fields: dict[str, Any]) -> str:
    """A short content id of any settings (e.g. a ranking file's content in a sweep unit's fingerprint)."""
    return _sha256_json(fields)


def code_identity() -> dict[str, Any]:
    """The code that made a run: the package version, CODE_VERSION of the units, and the git commit of the checkout
    (read from .git without running git; None outside a checkout)."""
    from importlib import metadata

    try:
        version = metadata.version("opt66b")
    except metadata.PackageNotFoundError:
        version = None
    return {"opt66b": version, "unit code version": CODE_VERSION, "git commit": _git_commit(Path(__file__).parents[2])}


def _git_commit(root: Path) -> str | None:
    try:
        head = (root / ".git" / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (root / ".git" / ref).is_file():
            return (root / ".git" / ref).read_text().strip()[:12]
        for line in (root / ".git" / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        return None
    return None
