""""Capacity retained": the share of total prefix-matching / copying score kept as heads are pruned
least-important-first (Bansal et al. 2023, Fig. 11).

Mirrors amazon-science/llm-interpret scripts/plotting/prefix_copying_pruning.py and
prefix_copying_task_specific.py (docs/method.md, "Capacity retained"):

    retained(i) = 100 * sum_{h in pi[i:]} S_h / sum_h S_h ,   x(i) = 100 i / N ,   i = 0 .. N-1

S is a flattened (L*H,) score `mean`; pi the ascending argsort of a head importance (L, H) (ties
broken by flat index, stable). With non-negative scores the curve is non-increasing, starts at 100 and
ends at the least-pruned head's share. The paper draws no random reference; here the expected random
curve 100 - x(i) is added, plus optional seeded random-permutation curves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from opt66b.runs.results import check_finite_heads, read_tensors, run_metadata, write_json, write_tensors
from opt66b.runs.layout import SHOTS_PATTERN, shot_files
from opt66b.runs.settings import StepSettings, option


def retained_curve(scores: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """(N,) float64 percent of total score kept after pruning the i least important heads, i = 0..N-1.

    scores, importance: same shape, (L, H) or flat (N,)."""
    if scores.shape != importance.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and importance {tuple(importance.shape)} differ in shape; "
                         "were they computed on the same model?")
    order = torch.argsort(importance.flatten().double(), stable=True)  # (N,) least important first
    return _curve(scores.flatten().double()[order])


def random_curve(scores: torch.Tensor, seed: int) -> torch.Tensor:
    """(N,) retained curve for one random pruning order drawn by torch.Generator().manual_seed(seed)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(scores.numel(), generator=gen)
    return _curve(scores.flatten().double()[order])


def expected_random(n: int) -> torch.Tensor:
    """(N,) the expectation of `random_curve`: 100 - x(i) = 100 (N - i) / N."""
    return 100.0 * (n - torch.arange(n, dtype=torch.float64)) / n


def pruned_percent(n: int) -> torch.Tensor:
    """(N,) x(i) = 100 i / N, the percentage of heads pruned."""
    return 100.0 * torch.arange(n, dtype=torch.float64) / n


def _curve(ordered: torch.Tensor) -> torch.Tensor:
    total = ordered.sum()
    if not torch.isfinite(total) or total <= 0:
        raise ValueError(f"total score is {float(total)}; capacity retained needs a positive finite total")
    if (ordered < 0).any():
        raise ValueError("scores must be non-negative (prefix-matching and copying scores are in [0, 1])")
    suffix = torch.flip(torch.cumsum(torch.flip(ordered, [0]), 0), [0])  # (N,) sum of ordered[i:]
    return 100.0 * suffix / total


def find_importances(directory: str | Path) -> dict[str, Path]:
    """{"<shot dir>/name": path} for every importance file (tasks and aggregate) in DIR's shot directories."""
    directory = Path(directory)
    found = {f"{p.parent.name}/{p.stem}": p for files in shot_files(directory, ".safetensors").values() for p in files}
    if not found:
        raise FileNotFoundError(f"{directory}: no {SHOTS_PATTERN}/*.safetensors importance files "
                                "(written by `run.py importance heads`)")
    return found


def find_scores(directory: str | Path) -> dict[str, Path]:
    """{"prefix_matching_paper": path, ...} for the score files of `run.py induction prefix/copying`."""
    directory = Path(directory)
    found = {p.stem: p for kind in ("prefix_matching", "copying")
             for p in sorted(directory.glob(f"{kind}_*.safetensors"))}
    if not found:
        raise FileNotFoundError(f"{directory}: no prefix_matching_*.safetensors or copying_*.safetensors "
                                "(written by `run.py induction prefix` / `copying`)")
    return found


@dataclass(frozen=True, kw_only=True)
class CapacitySettings(StepSettings):
    """`run.py induction capacity`: the share of induction score kept as heads are pruned (no model)."""

    COMMAND = ("induction", "capacity")
    USES_MODEL = False
    scores: Path = option(None)
    importance: Path = option(None)
    out: Path = option(None)
    random_seeds: tuple[int, ...] = option((0,))

    def execute(self, loaded: Any = None, cache: Any = None) -> None:
        run_capacity(self)
        print(f"capacity curves -> {self.out}/capacity.safetensors, {self.out}/capacity.json")


def run_capacity(s: CapacitySettings) -> dict[str, Any]:
    """Curves for every (score file, importance file) pair; writes s.out/capacity.safetensors with
    "x" (N,), "{score}|{shots-K/name}" (N,), "{score}|random_expected" and "{score}|random_seed_{s}",
    and s.out/capacity.json with retained at 10%, 20%, ..., 90% pruned per curve."""
    scores_dir, importance_dir, out, random_seeds = s.scores, s.importance, s.out, s.random_seeds
    scores = {}
    for name, path in find_scores(scores_dir).items():
        tensors, _ = read_tensors(path)
        if "mean" not in tensors:
            raise KeyError(f"{path}: no 'mean' tensor; is this a `run.py induction` output?")
        check_finite_heads(tensors["mean"], f"{path}: 'mean'")
        if bool((tensors["mean"] < 0).any()):
            raise ValueError(f"{path}: 'mean' has negative scores (min {float(tensors['mean'].min()):.4g}); prefix-"
                             "matching and copying scores lie in [0, 1]: rerun `run.py induction` to rewrite it")
        scores[name] = tensors["mean"]
    importances = {}
    for name, path in find_importances(importance_dir).items():
        tensors, _ = read_tensors(path)
        if "importance" not in tensors:
            raise KeyError(f"{path}: no 'importance' tensor (found {sorted(tensors)}); expected (L, H) importance")
        check_finite_heads(tensors["importance"], f"{path}: 'importance'")
        importances[name] = tensors["importance"]
    n = next(iter(scores.values())).numel()
    curves = {"x": pruned_percent(n)}
    for sname, s in scores.items():
        curves[f"{sname}|random_expected"] = expected_random(n)
        for seed in random_seeds:
            curves[f"{sname}|random_seed_{seed}"] = random_curve(s, seed)
        for iname, imp in importances.items():
            try:
                curves[f"{sname}|{iname}"] = retained_curve(s, imp)
            except ValueError as err:
                raise ValueError(f"{scores_dir}/{sname} vs {importance_dir}/{iname}: {err}") from err
    steps = [min(round(n * p / 100), n - 1) for p in range(10, 100, 10)]  # head count nearest p% pruned
    table = {k: {f"{p}%": float(c[i]) for p, i in zip(range(10, 100, 10), steps)} for k, c in curves.items() if k != "x"}
    meta = run_metadata(scores=str(scores_dir), importance=str(importance_dir), random_seeds=list(random_seeds),
                        heads=n)
    write_tensors(Path(out) / "capacity.safetensors", curves, meta)
    heads_at = {f"{p}%": k for p, k in zip(range(10, 100, 10), steps)}  # what each column removes, of n heads
    write_json(Path(out) / "capacity.json", {**meta, "retained_at_pruned_percent": table, "heads_at_percent": heads_at})
    return curves
