"""The file layout of a run: every directory and file name the study writes, built and parsed here only.

Every writer (tasks.evaluate, prune.experiments, prune.sweeps, induction, study.pipeline) and every
reader (the report, correlate, capacity, transfer, export) takes its paths from this module, so a
name changes in one place. A run of `python run.py all --out OUT` is laid out as:

    OUT/commands.txt                       one `python run.py ...` line per step (replayable)
    OUT/run.lock                           while a run writes here: its host, pid, start (opt66b/runs/lock.py)
    OUT/study.json, work.json, data_check.json, skipped_tasks.json, report.md, figures/
    OUT/eval/shots-K/results.json          lm-eval's layout; tasks/<task>.json units, requests/<task>.jsonl
    OUT/importance/shots-K/<task>.safetensors, aggregate.safetensors
    OUT/importance-<protocol>/shots-K/...  the tasks whose targets differ, under the other protocol
    OUT/ffn_importance/shots-K/<task>.json, aggregate.json; <task>/layer-XXX.json and chunks-C/ units
    OUT/prune/<table>.json                 heads-own, heads-aggregate, ffn-own, grid-own, transfer
    OUT/prune/<table>/shots-K/<task>/hH_fF.json   one sweep unit
    OUT/correlate/correlations.json
    OUT/evaluations/<digest>.json          the evaluation cache every step and process shares
    OUT/induction/, OUT/capacity/, OUT/copytask/

A step run on its own (`run.py eval --out DIR`) writes the same tree under DIR that `all` writes
under OUT/eval; "shots-K" is the one directory name of a shot count, `shots_dir` builds it and
`shot_of` reads it back. The units a step resumes from are named here too (`eval_unit`,
`eval_requests`, `knockout_unit`, `knockout_chunk`, `sweep_unit`, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SHOTS_PATTERN = "shots-K"  # how help texts and docs write a shot directory
_SHOTS = re.compile(r"^shots-(\d+)$")


def shots_name(k: int | str) -> str:
    """'shots-K': the directory of shot count K, also the key of a shot in merged tables."""
    return f"shots-{k}"


def shot_of(name: str) -> int | None:
    """The K of a 'shots-K' name (a directory or a table key), None for any other name."""
    m = _SHOTS.match(name)
    return int(m.group(1)) if m else None


def shots_dir(root: str | Path, k: int) -> Path:
    return Path(root) / shots_name(k)


def shot_dirs(root: str | Path) -> list[Path]:
    """Every root/shots-K directory, by K (none when root is missing)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(shot_of(p.name), p) for p in root.iterdir() if p.is_dir()]
    return [p for k, p in sorted((k, p) for k, p in found if k is not None)]


def shot_files(root: str | Path, suffix: str) -> dict[int, list[Path]]:
    """{K: sorted root/shots-K/*<suffix> files}, shot dirs without such files left out."""
    out = {}
    for d in shot_dirs(root):
        files = sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith(suffix))
        if files:
            out[shot_of(d.name)] = files
    return out


@dataclass(frozen=True)
class RunLayout:
    """The directories and files of one `run.py all` run under `root` (module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def importance(self) -> Path:
        return self.root / "importance"

    def importance_under(self, protocol: str) -> Path:
        """Head importance of the tasks whose targets differ, under the other protocol."""
        return self.root / f"importance-{protocol}"

    @property
    def ffn(self) -> Path:
        return self.root / "ffn_importance"

    @property
    def prune(self) -> Path:
        return self.root / "prune"

    def table(self, name: str) -> Path:
        """A merged sweep table: prune/heads-own.json, prune/grid-own.json, prune/transfer.json, ..."""
        return self.prune / f"{name}.json"

    @property
    def evaluations(self) -> Path:
        """The evaluation cache every step of the run shares, on disk (tasks.evaluation.EvaluationCache)."""
        return self.root / "evaluations"

    @property
    def correlate(self) -> Path:
        return self.root / "correlate"

    @property
    def correlations(self) -> Path:
        return self.correlate / "correlations.json"

    @property
    def induction(self) -> Path:
        return self.root / "induction"

    @property
    def capacity(self) -> Path:
        return self.root / "capacity"

    @property
    def copytask(self) -> Path:
        return self.root / "copytask"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    # the files at the top of the run
    @property
    def commands(self) -> Path:
        return self.root / "commands.txt"

    @property
    def study(self) -> Path:
        return self.root / "study.json"

    @property
    def work(self) -> Path:
        return self.root / "work.json"

    def work_of(self, rank: int) -> Path:
        """What one torchrun process computed per step (work.json gathers them)."""
        return self.root / "work" / f"rank-{rank}.json"

    @property
    def data_check(self) -> Path:
        return self.root / "data_check.json"

    @property
    def skipped_tasks(self) -> Path:
        return self.root / "skipped_tasks.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def headline(self) -> Path:
        return self.root / "headline.json"

    def results(self, k: int) -> Path:
        return eval_results(shots_dir(self.eval, k))


def run_lock(root: str | Path) -> Path:
    """The lock a run holds on its output directory while it writes there (any step's --out, `all`'s OUT)."""
    return Path(root) / "run.lock"


# -- the units inside a step's shot directory: each written by one step, read back when it resumes -----
def eval_results(shot: Path) -> Path:
    """eval's merged results of one shot count, lm-eval's layout."""
    return Path(shot) / "results.json"


def eval_unit(shot: Path, task: str) -> Path:
    """eval's unit of one task: metrics, per-document scores, config; written last, so it marks the task done."""
    return Path(shot) / "tasks" / f"{task}.json"


def eval_requests(shot: Path, task: str) -> Path:
    """eval's per-request log-likelihoods of one task, one JSON line per request."""
    return Path(shot) / "requests" / f"{task}.jsonl"


def knockout_unit(task_dir: Path, layer: int) -> Path:
    """The FFN oracle's unit: the metrics with FFN `layer` knocked out."""
    return Path(task_dir) / f"layer-{layer:03d}.json"


def knockout_base(task_dir: Path) -> Path:
    """The FFN oracle's unpruned metrics of one task and shot."""
    return Path(task_dir) / "base.json"


def knockout_chunk(task_dir: Path, chunk_units: int, first: int) -> Path:
    """The chunked oracle's log-likelihoods of the chunk starting at scoring batch `first`."""
    return Path(task_dir) / f"chunks-{chunk_units}" / f"chunk-{first:06d}.safetensors"


def sweep_unit(root: Path, shots: int, task: str, head_percent: float, ffn_percent: float) -> Path:
    """A pruning sweep's unit: one task, shot and (heads %, FFN %) cell."""
    return shots_dir(root, shots) / task / f"h{head_percent:g}_f{ffn_percent:g}.json"
