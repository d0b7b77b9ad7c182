"""The aggregate head-importance ranking: the mean over the *seen* tasks (Bansal et al. 2023, §4.1 and §6.1, Figs. 3, 9).

The paper computes head importance for 14 tasks ("seen") and ranks heads by the arithmetic mean of
those 14 raw (L, H) tensors, with no per-task normalisation (prune/masks.aggregate_importance).
MathQA and LAMBADA are "unseen": their own importance may be computed, but they are never averaged
into the aggregate; the aggregate is tested on them (pruned with their own ranking against the
aggregate's). The seen set is settable (`seen`), the paper's 14 by default.

The aggregate file records which tasks it averages and the digest of each input's numbers. Writing it is
a pure function of the seen-task files present in the shot directory, never of which tasks one
invocation computed, and an existing aggregate is never changed silently: when the members or their
files differ from what it records, `write_aggregate` refuses (ValueError naming both lists) unless
the caller passes update=True, and then says on stderr what changed.

Every importance file holds the paper's scores under "importance" and the uniform-denominator
variant under "importance_uniform" (prune/importance.py); the aggregate averages each key present
in every member.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from opt66b.fileio import sha256_file
from opt66b.runs.results import read_tensors, run_metadata, write_tensors
from opt66b.runs.store import CONTENT_KEY
from tasks.registry import PAPER_SEEN_TASKS

from .masks import IMPORTANCE_KEY, aggregate_importance

AGGREGATE_FILE = "aggregate.safetensors"


def aggregate_members(shot_dir: Path, seen: Sequence[str] = PAPER_SEEN_TASKS) -> list[str]:
    """The seen tasks (in `seen` order) whose importance file exists in shot_dir."""
    return [t for t in seen if (Path(shot_dir) / f"{t}.safetensors").is_file()]


def recorded_members(path: Path) -> dict[str, str] | None:
    """{task: input sha256} an aggregate file records, or None for a file without that record."""
    meta = read_tensors(path)[1]
    if "aggregate_inputs" not in meta:
        return None
    return json.loads(meta["aggregate_inputs"])


def input_id(path: Path) -> str:
    """What an aggregate records of one member: the digest of its numbers (a member computed again to the same numbers,
    with another time stamp, is the same member), or the file's sha256 for a file written without one."""
    return read_tensors(path)[1].get(CONTENT_KEY) or sha256_file(path)


def intact_aggregate(path: Path, log: Callable[[str], None] | None = None) -> bool:
    """True when an aggregate file exists and reads; a damaged one (cut short, not safetensors) is said in one line
    (with `log`) and counts as absent: it is rebuilt from the task files it averages."""
    if not path.is_file():
        return False
    try:
        read_tensors(path)
    except ValueError as err:
        if log:
            log(f"{path}: damaged ({str(err).removeprefix(f'{path}: ').split(';')[0]}); rebuilt from the task files")
        return False
    return True


def check_aggregate_before(shot_dir: Path, tasks: Sequence[str], seen: Sequence[str] = PAPER_SEEN_TASKS,
                           update: bool = False) -> None:
    """Refuse, before any work, a run whose seen tasks would change the members of an existing
    aggregate (the same refusal write_aggregate makes at the end, once it is knowable up front)."""
    path = Path(shot_dir) / AGGREGATE_FILE
    if update or not intact_aggregate(path):
        return
    old = recorded_members(path)
    after = set(aggregate_members(shot_dir, seen)) | {t for t in tasks if t in seen}
    if old is not None and set(old) != after:
        added, removed = sorted(after - set(old)), sorted(set(old) - after)
        change = "; ".join(p for p in (f"adds {added}" if added else "", f"removes {removed}" if removed else "") if p)
        raise ValueError(f"{path}: averages {sorted(old)}, and this run {change}; pass --update-aggregate to "
                         "replace it (rankings made from the old one go stale) or write to another --out")


def write_aggregate(shot_dir: Path, seen: Sequence[str] = PAPER_SEEN_TASKS, update: bool = False,
                    settings: dict | None = None, log: Callable[[str], None] | None = None) -> Path | None:
    """(Re)write shot_dir/aggregate.safetensors as the mean over the seen tasks present there.

    Returns its path, or None when no seen task has a file yet. Raises ValueError when an existing
    aggregate averages other tasks (or other versions of their files) and update is False.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    shot_dir = Path(shot_dir)
    members = aggregate_members(shot_dir, seen)
    path = shot_dir / AGGREGATE_FILE
    if not members:
        return None
    inputs = {t: input_id(shot_dir / f"{t}.safetensors") for t in members}
    if intact_aggregate(path, log):
        old = recorded_members(path)
        if old is not None and set(old) == set(inputs) and all(
                old[t] in (inputs[t], sha256_file(shot_dir / f"{t}.safetensors")) for t in old):  # or, by older code
            return path
        change = _describe_change(old, inputs)
        if not update:
            raise ValueError(f"{path}: exists and averages {sorted(old) if old else 'an unrecorded task set'}, but "
                             f"the seen-task files here now give {change}; pass --update-aggregate to replace it "
                             "(rankings made from the old one go stale) or write to another --out")
        log(f"{path}: replacing the aggregate ({change})")
    loaded = {t: read_tensors(shot_dir / f"{t}.safetensors")[0] for t in members}
    keys = [k for k in loaded[members[0]] if k.startswith(IMPORTANCE_KEY) and all(k in v for v in loaded.values())]
    tensors = {k: aggregate_importance([loaded[t][k] for t in members]) for k in keys}
    return write_tensors(path, tensors, run_metadata(**{**(settings or {}), "aggregate_of": members,
                                                        "aggregate_inputs": inputs, "seen_tasks": list(seen)}))


def _describe_change(old: dict[str, str] | None, new: dict[str, str]) -> str:
    if old is None:
        return f"the mean of {sorted(new)} (the old file does not record its members)"
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    changed = sorted(t for t in set(new) & set(old) if new[t] != old[t])
    parts = [f"added {added}" if added else "", f"removed {removed}" if removed else "",
             f"changed files of {changed}" if changed else ""]
    return "; ".join(p for p in parts if p)


def aggregate_of(path: Path) -> list[str] | None:
    """The task list an aggregate file says it averages (None when it does not say)."""
    meta = read_tensors(path)[1]
    return json.loads(meta["aggregate_of"]) if "aggregate_of" in meta else None
