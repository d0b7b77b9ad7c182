"""`run.py correlate`: rank correlations between head-importance rankings (Bansal et al. 2023, §6.1-6.2, Figs. 8, 20).

Reads the output of `run.py importance heads`:

    IMPORTANCE_DIR/shots-{K}/{task}.safetensors      tensor "importance" (L, H), one per task
    IMPORTANCE_DIR/shots-{K}/aggregate.safetensors   tensor "importance" (L, H), mean over the seen tasks

and writes OUT/correlations.json with, for every shot K (flat head vectors of length n = L*H). The
matrices hold the paper's seen tasks present, with the aggregate as the last row and column (as the
paper's Fig. 8); unseen tasks and the synthetic copy task are never inside them (other_tasks below):
    spearman.rho / spearman.p      task x task, true Spearman (average ranks, t-test p, n-2 df)
    paper_argsort_pearson          task x task, THE PAPER'S VARIANT (Pearson on argsort vectors, as
                                   the paper's plotting script computes its SRCC; docs/method.md)
    top_overlap                    task x task, share of the top-30% heads in common
    vs_aggregate[task]             the same four numbers against the shot's aggregate ranking
    other_tasks                    the unseen and synthetic tasks: vs_aggregate (the generalisation
                                   question) and vs_seen[task][seen task]
    random_baseline[task]          the same four numbers against a random permutation of 0..n-1 (seeded;
                                   the paper's --random row): what "no agreement" looks like
    denominators[task]             when the file also holds "importance_uniform": Spearman rho between
                                   the paper's and the uniform-denominator rankings, and the share of
                                   last-layer heads in each one's top 30%
and cross_shot["0v1" | "0v5" | "1v5" | ...]: per seen task the same numbers between two shots, plus
their mean and sample variance over the seen tasks (other tasks apart). Input file hashes are recorded. Facts:
docs/method.md ("SRCC" and "Aggregate ranking").
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Sequence

from opt66b.fileio import Progress
from opt66b.runs.results import file_hashes, read_tensors, run_metadata, write_json
from opt66b.runs.layout import SHOTS_PATTERN, shot_files, shots_dir, shots_name
from opt66b.runs.settings import StepSettings, option

from . import stats
from tasks.registry import PAPER_SEEN_TASKS, seen_in

from .masks import IMPORTANCE_KEY, PAPER_DENOMINATOR_KEY, UNIFORM_IMPORTANCE_KEY, aggregate_importance, read_importance

AGGREGATE_NAME = "aggregate"
OUTPUT_NAME = "correlations.json"

DEFINITIONS = {
    "spearman": "true Spearman rank correlation of the flat (L*H) importance vectors: Pearson of "
                "their ranks, ties averaged; p two-sided from Student's t with n-2 df",
    "paper_argsort_pearson": "THE PAPER'S VARIANT, not Spearman: Pearson correlation of the ascending "
                             "argsort vectors (the paper's plotting script spearman_rankings.py); use it "
                             "only to compare with the paper's figure numbers",
    "top_overlap": "|top_k(a) & top_k(b)| / k with k = floor(top_fraction * n) most important heads",
    "variance": "sample variance over tasks (n-1 denominator)",
    "random_baseline": "each task against a random permutation of 0..n-1 drawn by random.Random(random_seed)",
    "denominators": "paper (last layer over target tokens) against uniform (every layer over positions): "
                    "Spearman rho of the two rankings; last_layer_share_top = share of last-layer heads "
                    "among the top_fraction most important heads of each",
}


def discover(importance_dir: Path, shots: Sequence[int] | None = None,
             tasks: Sequence[str] | None = None) -> dict[int, dict[str, Path]]:
    """{shot: {task: file}} in importance_dir's shot directories (opt66b/runs/layout.py); "aggregate" is listed under its own name.

    Raises FileNotFoundError naming the directory when nothing (or a requested shot/task) is there.
    """
    importance_dir = Path(importance_dir)
    if not importance_dir.is_dir():
        raise FileNotFoundError(f"{importance_dir}: importance directory not found "
                                f"(expected the --out of `run.py importance heads`)")
    found = {k: {f.stem: f for f in files} for k, files in shot_files(importance_dir, ".safetensors").items()}
    if not found:
        raise FileNotFoundError(f"{importance_dir}: no {SHOTS_PATTERN}/*.safetensors importance files found")
    if shots is not None:
        missing = [k for k in shots if k not in found]
        if missing:
            raise FileNotFoundError(f"{importance_dir}: no importance files for shots {missing}; "
                                    f"found shots {sorted(found)}")
        found = {k: found[k] for k in shots}
    if tasks is not None:
        for k, files in found.items():
            missing = [t for t in tasks if t not in files]
            if missing:
                raise FileNotFoundError(f"{shots_dir(importance_dir, k)}: no importance file for tasks "
                                        f"{missing}; found {sorted(t for t in files if t != AGGREGATE_NAME)}")
            found[k] = {t: files[t] for t in [*tasks, AGGREGATE_NAME] if t in files}
    return found


def pair_stats(a: Sequence[float], b: Sequence[float], top_fraction: float) -> dict[str, float]:
    """All four numbers for one pair of flat score vectors."""
    rho, p = stats.spearman(a, b)
    return {"rho": rho, "p": p, "paper_argsort_pearson": stats.paper_argsort_correlation(a, b),
            "top_overlap": stats.top_fraction_overlap(a, b, top_fraction)}


def last_layer_share(values: Sequence[float], num_heads: int, top_fraction: float) -> float:
    """Share of the top `top_fraction` most important heads of a flat (L*H,) vector that sit in the last layer."""
    k = stats.top_count(top_fraction, len(values))
    first_last = len(values) - num_heads  # flat index of the last layer's head 0
    return sum(i >= first_last for i in stats.argsort(values)[-k:]) / k


def denominator_effect(paper: Sequence[float], uniform: Sequence[float], num_heads: int,
                       top_fraction: float) -> dict[str, Any]:
    """How the paper's last-layer denominator moves a ranking against the uniform one."""
    rho, p = stats.spearman(paper, uniform)
    return {"rho": rho, "p": p, "last_layer_share_top": {
        "paper": last_layer_share(paper, num_heads, top_fraction),
        "uniform": last_layer_share(uniform, num_heads, top_fraction)}}


def random_vector(n: int, seed: int) -> list[float]:
    """A random permutation of 0..n-1 as floats (random.Random(seed)): a ranking with no relation to any task."""
    import random

    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [float(i) for i in order]


def correlate_shot(vectors: dict[str, list[float]], aggregate: list[float] | None,
                   top_fraction: float, random_seed: int | None = 0,
                   seen: Sequence[str] = PAPER_SEEN_TASKS) -> dict[str, Any]:
    """One shot's statistics, as the paper draws them (Figs. 8, 20): the matrices over the seen tasks
    with the aggregate as the last row and column ("tasks" names them in that order), every seen task
    against the aggregate, and a random row. The other tasks (the paper's unseen ones, the synthetic
    copy task) never enter those numbers: "other_tasks" holds their correlation with the aggregate
    (the paper's generalisation question) and with each seen task. Without any seen task the matrices
    fall back to all tasks ("matrix_tasks": "all", said in the report)."""
    matrix_tasks = seen_in(vectors, seen) or list(vectors)
    others = [t for t in vectors if t not in matrix_tasks]
    rows = {t: vectors[t] for t in matrix_tasks}
    if aggregate is not None:
        rows[AGGREGATE_NAME] = aggregate
    rho, p = stats.spearman_matrix(rows)
    out: dict[str, Any] = {
        "tasks": list(rows),
        "matrix_tasks": "seen" if seen_in(vectors, seen) else "all",
        "n_heads": len(next(iter(vectors.values()))),
        "spearman": {"rho": rho, "p": p},
        "paper_argsort_pearson": stats.paper_argsort_matrix(rows),
        "top_overlap": stats.overlap_matrix(rows, top_fraction),
    }
    if aggregate is not None:
        out["vs_aggregate"] = {t: pair_stats(vectors[t], aggregate, top_fraction) for t in matrix_tasks}
    if random_seed is not None:
        rand = random_vector(out["n_heads"], random_seed)
        out["random_seed"] = random_seed
        out["random_baseline"] = {t: pair_stats(v, rand, top_fraction) for t, v in rows.items()}
    if others:
        out["other_tasks"] = {
            "tasks": others,
            "vs_aggregate": {t: pair_stats(vectors[t], aggregate, top_fraction) for t in others} if aggregate else {},
            "vs_seen": {t: {s: pair_stats(vectors[t], vectors[s], top_fraction) for s in matrix_tasks} for t in others},
        }
    return out


def cross_shot(by_shot: dict[int, dict[str, list[float]]], top_fraction: float,
               seen: Sequence[str] = PAPER_SEEN_TASKS) -> dict[str, Any]:
    """Per task, the same task's rankings at two shot counts (0v1, 0v5, 1v5, ...); the mean and
    variance over the seen tasks (the paper's cross-shot numbers, §6.2), the other tasks listed apart."""
    out: dict[str, Any] = {}
    for s1, s2 in combinations(sorted(by_shot), 2):
        common = [t for t in by_shot[s1] if t in by_shot[s2]]
        over = seen_in(common, seen) or common
        per_task = {t: pair_stats(by_shot[s1][t], by_shot[s2][t], top_fraction) for t in over}
        summary: dict[str, dict[str, float]] = {"mean": {}, "variance": {}}
        for key in ("rho", "paper_argsort_pearson", "top_overlap"):
            mean, var = stats.mean_and_variance([v[key] for v in per_task.values()])
            summary["mean"][key], summary["variance"][key] = mean, var
        other = {t: pair_stats(by_shot[s1][t], by_shot[s2][t], top_fraction) for t in common if t not in over}
        out[f"{s1}v{s2}"] = {"tasks": over, "per_task": per_task, **summary, "other_tasks": other}
    return out


def _finite_or_none(obj: Any) -> Any:
    """nan/inf -> None so the JSON stays standard (json.dumps would write bare NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


@dataclass(frozen=True, kw_only=True)
class CorrelateSettings(StepSettings):
    """`run.py correlate`: Spearman matrices of the head-importance rankings (no model)."""

    COMMAND = ("correlate",)
    USES_MODEL = False
    importance: Path = option(None)
    out: Path = option(None)
    shots: tuple[int, ...] | None = option(None)
    tasks: tuple[str, ...] | None = option(None)
    top_fraction: float = option(0.3)
    compare_importance: Path | None = option(None)

    def check(self) -> None:
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"--top-fraction must be in (0, 1], got {self.top_fraction}")
        if self.compare_importance is not None and not Path(self.compare_importance).is_dir():
            raise FileNotFoundError(f"--compare-importance {self.compare_importance}: directory not found")

    def execute(self, loaded: Any = None, cache: Any = None) -> None:
        run_correlate(self)


def run_correlate(s: CorrelateSettings, log: Callable[[str], None] | None = None, random_seed: int | None = 0) -> Path:
    """Compute everything above and write s.out/correlations.json atomically; returns its path.
    s.compare_importance: the importance of some tasks under the other protocol's targets (what `run.py all`
    writes to OUT/importance-<other>); adds "targets" (prune/targets.py). random_seed: the random-permutation
    row's seed."""
    s.check()
    importance_dir = Path(s.importance)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    found = discover(importance_dir, s.shots, s.tasks)
    shots, shape = {}, None
    for k, files in found.items():
        shots[k] = _read_shot(importance_dir, k, files, s.top_fraction, log, shape)
        shape = shots[k][4]
    by_shot = {k: vectors for k, (vectors, *_) in shots.items()}
    progress = Progress(len(by_shot) + 1, "correlate")
    per_shot = {}
    for k, (vectors, aggregate, source, denominators, _) in shots.items():
        per_shot[str(k)] = {**correlate_shot(vectors, aggregate, s.top_fraction, random_seed),
                            "aggregate_source": source, "denominators": denominators}
        progress.update()
    crossed = cross_shot(by_shot, s.top_fraction)
    progress.update()
    all_files = [p for files in found.values() for p in files.values()]
    result = {
        "metadata": run_metadata(importance_dir=str(importance_dir), shots=sorted(by_shot), top_fraction=s.top_fraction,
                                 random_seed=random_seed, layers_heads=list(shape or ()),
                                 # keyed relative to the importance dir: a moved run records the same
                                 input_sha256={str(Path(f).relative_to(importance_dir)): h
                                               for f, h in file_hashes(all_files).items()}),
        "definitions": DEFINITIONS,
        "shots": per_shot,
        "cross_shot": crossed,
    }
    if s.compare_importance is not None:
        from .targets import compare_targets

        result["targets"] = compare_targets(importance_dir, Path(s.compare_importance), sorted(by_shot), s.top_fraction)
    path = write_json(Path(s.out) / OUTPUT_NAME, _finite_or_none(result))
    log(f"wrote {path}")
    return path


def _read_shot(importance_dir: Path, k: int, files: dict[str, Path], top_fraction: float,
               log: Callable[[str], None], shape: tuple | None = None
               ) -> tuple[dict[str, list[float]], list[float], str, dict[str, Any], tuple]:
    """One shot's (flat (L*H,) layer-major vector per task, the aggregate's, where the aggregate comes from,
    the denominator effect per task, the (L, H) shape, which every file must share with `shape`, the earlier
    shots'). Without an aggregate file the aggregate is the paper's definition: the mean of the seen tasks'
    raw tensors (all the tasks when none is seen), never an unseen or synthetic task beside seen ones."""
    vectors, denominators = {}, {}
    for name, path in files.items():
        imp = read_importance(path)
        stored = read_tensors(path)[0]
        if UNIFORM_IMPORTANCE_KEY in stored:
            # the paper's denominator under its own name; older files held it under "importance"
            paper = read_importance(path, key=PAPER_DENOMINATOR_KEY if PAPER_DENOMINATOR_KEY in stored else IMPORTANCE_KEY)
            uniform = read_importance(path, key=UNIFORM_IMPORTANCE_KEY)
            denominators[name] = denominator_effect(paper.reshape(-1).tolist(), uniform.reshape(-1).tolist(),
                                                    imp.shape[1], top_fraction)  # (L*H,) layer-major
        if shape is not None and tuple(imp.shape) != shape:
            raise ValueError(f"{path}: importance has shape {tuple(imp.shape)} but earlier files have {shape}; were "
                             "they computed on different models?")
        shape = tuple(imp.shape)
        vectors[name] = imp
    agg = vectors.pop(AGGREGATE_NAME, None)
    if not vectors:
        raise FileNotFoundError(f"{shots_dir(importance_dir, k)}: only an aggregate file, no task files")
    source = "file"
    if agg is None:  # not written (yet): the paper's definition, the mean of the seen tasks' raw tensors
        members = seen_in(vectors) or sorted(vectors)
        agg = aggregate_importance([vectors[t] for t in members]).double()
        source = "mean of the seen task files" if seen_in(vectors) else "mean of the task files"
        log(f"{shots_name(k)}: no {AGGREGATE_NAME}.safetensors, using the {source[:-6]} ({', '.join(members)})")
    flat = {t: v.reshape(-1).tolist() for t, v in vectors.items()}  # (L*H,) layer-major
    return flat, agg.reshape(-1).tolist(), source, denominators, shape
