"""Cross-task transfer as the paper runs it (Bansal et al. 2023, §6.1, Figs. 9, 21, 22).

For each chosen task (COPA, Winogrande, ReCoRD in the paper) and each shot count, the task is pruned
with four head rankings: its own, the aggregate (mean over the seen tasks, prune/aggregate.py), and
the rankings of the two other seen tasks whose importance correlates highest and lowest with its own.
The unseen tasks (MathQA, LAMBADA) are pruned with their own ranking and the aggregate's; both curves
come from the ordinary `prune heads --ranking own|aggregate` sweeps.

Partners come from one or more of (`prune transfer --partners`, default by --protocol):
    "published"              (--partners paper) the paper's own pairs, as its plotting script
                             hard-codes them (prune/paper.py)
    "paper_argsort_pearson"  (--partners argsort) the highest / lowest partner under the paper's SRCC as
                             its code computes it (Pearson of argsort vectors), from correlations.json
    "spearman"               (--partners spearman) the same under the true Spearman rho
The paper's published partners were picked from its own SRCC figures, i.e. from the argsort
variant; the "spearman" partners say which tasks really share important heads. --protocol paper
runs published + argsort, --protocol corrected spearman + argsort.

Candidates are the seen tasks with importance at that shot, the task itself excluded. Ties: the
task listed first in correlations.json wins (its order is the importance files' sorted order).

Substitutes: a chosen task without importance at a shot (its data is missing, e.g. no ReCoRD eval
split) is replaced by the first seen task, in PAPER_SEEN_TASKS order, that has importance, is not
chosen already and is not itself a substitute; the substitution is recorded in the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from opt66b.runs.layout import shots_name
from opt66b.runs.settings import option
from tasks.settings import EvaluatingStep

from tasks.registry import PAPER_SEEN_TASKS, PAPER_UNSEEN_TASKS
from .paper import PAPER_TRANSFER_PARTNERS, PAPER_TRANSFER_TASKS

# How partners are chosen: the CLI name (`prune transfer --partners`) -> the variant name in transfer.json.
PARTNER_CHOICES = {"paper": "published", "argsort": "paper_argsort_pearson", "spearman": "spearman"}
VARIANTS = ("paper_argsort_pearson", "spearman")  # computed from correlations.json
PAPER_CHOICE_VARIANT = "paper_argsort_pearson"
DEFAULT_PERCENTS = (0, 10, 30, 50, 70, 90)  # the paper's transfer points, plus the unpruned model


def _matrix(block: dict[str, Any], variant: str) -> list[list[float | None]]:
    if variant == "spearman":
        return block["spearman"]["rho"]
    if variant == "paper_argsort_pearson":
        return block["paper_argsort_pearson"]
    raise ValueError(f"unknown correlation variant {variant!r}; choose from {VARIANTS}")


def published_partners(shots: int, task: str, candidates: Sequence[str]) -> dict[str, Any] | None:
    """The paper's hard-coded high / low partners of `task` at `shots` (prune/paper.py), as partners()
    returns them (value None: the paper gives the pair, not the statistic); None when the paper has
    no pair for it, or a partner has no importance in this run (the report says which)."""
    pair = PAPER_TRANSFER_PARTNERS.get(shots, {}).get(task)
    if pair is None or any(pair[side] not in candidates for side in ("high", "low")):
        return None
    return {side: {"task": pair[side], "value": None} for side in ("high", "low")}


def partners(block: dict[str, Any], task: str, variant: str, candidates: Sequence[str]) -> dict[str, Any]:
    """{"high": (task, value), "low": (task, value)} for `task` in one shot's correlation block.

    block: correlations.json["shots"][K] ({"tasks": [...], "spearman": {"rho": M}, "paper_argsort_pearson": M}).
    candidates: tasks allowed as partners (e.g. the seen tasks); `task` itself is never its own partner.
    """
    names = block["tasks"]
    if task not in names:
        raise KeyError(f"{task!r} has no importance at this shot (correlated tasks: {', '.join(names)})")
    row = _matrix(block, variant)[names.index(task)]
    pool = [(n, row[i]) for i, n in enumerate(names) if n != task and n in candidates and row[i] is not None]
    if not pool:
        raise ValueError(f"no partner candidates for {task!r} among {list(candidates)}")
    high = max(pool, key=lambda p: p[1])  # max/min keep the first of equal values: listed order
    low = min(pool, key=lambda p: p[1])
    return {"high": {"task": high[0], "value": high[1]}, "low": {"task": low[0], "value": low[1]}}


def choose_tasks(available: Sequence[str], wanted: Sequence[str] = PAPER_TRANSFER_TASKS,
                 seen: Sequence[str] = PAPER_SEEN_TASKS) -> list[dict[str, str]]:
    """[{"task", "instead_of"?}] for `wanted`, with the substitution rule in the module docstring."""
    chosen: list[dict[str, str]] = []
    used = set(w for w in wanted if w in available)
    for w in wanted:
        if w in available:
            chosen.append({"task": w})
            continue
        sub = next((t for t in seen if t in available and t not in used), None)
        if sub is not None:
            used.add(sub)
            chosen.append({"task": sub, "instead_of": w})
    return chosen


def transfer_design(correlations: dict[str, Any], wanted: Sequence[str] = PAPER_TRANSFER_TASKS,
                  seen: Sequence[str] = PAPER_SEEN_TASKS, unseen: Sequence[str] = PAPER_UNSEEN_TASKS,
                  variants: Sequence[str] = VARIANTS) -> dict[str, Any]:
    """The whole transfer protocol from correlations.json: per shot, the chosen tasks with their
    rankings (own, aggregate, and the high / low partner under each variant: "published" = the
    paper's pairs, else a statistic of correlations.json), and the unseen tasks
    with own and aggregate. `runs` lists the distinct (shot, target, source) pruning runs the
    partners need (own and aggregate come from the ordinary sweeps)."""
    shots: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    for key, block in sorted(correlations["shots"].items(), key=lambda kv: int(kv[0])):
        available = [t for t in block["tasks"] if t in seen]
        entries = []
        for choice in choose_tasks(available, wanted, seen):
            task = choice["task"]
            entry: dict[str, Any] = {**choice, "rankings": {"own": task, "aggregate": "aggregate"}, "partners": {}}
            for variant in variants:
                if variant == "published":
                    found = published_partners(int(key), task, available)
                    if found is None:
                        entry.setdefault("notes", []).append(
                            f"no published partners of {task} at {key} shots usable here (the paper names "
                            f"{PAPER_TRANSFER_PARTNERS.get(int(key), {}).get(task)}; a partner without importance "
                            "in this run is not used)")
                        continue
                    entry["partners"][variant] = found
                else:
                    entry["partners"][variant] = partners(block, task, variant, available)
                for side in ("high", "low"):
                    source = entry["partners"][variant][side]["task"]
                    if not any(r["shots"] == int(key) and r["task"] == task and r["ranking"] == source for r in runs):
                        runs.append({"shots": int(key), "task": task, "ranking": source})
            entries.append(entry)
        present = set(block["tasks"]) | set(block.get("other_tasks", {}).get("tasks", []))
        shots[key] = {"chosen": entries,
                      "unseen": [{"task": t, "rankings": {"own": t, "aggregate": "aggregate"}}
                                 for t in unseen if t in present]}
    return {"paper_choice_variant": PAPER_CHOICE_VARIANT, "variants": list(variants), "shots": shots, "runs": runs}


def run_transfer(design: dict[str, Any], prune_dir: Any, sweep: Any, percents: Sequence[float] = DEFAULT_PERCENTS,
                 log: Any = None) -> Any:
    """Run the partner pruning of `design` (transfer_design) and write PRUNE_DIR/transfer.json with every curve.

    sweep(task, ranking, shots, out_dir, percents) -> table path runs one ordinary head sweep
    (prune/sweeps.run_sweep bound to a loaded model); each (task, partner) pair gets its own
    out_dir PRUNE_DIR/transfer/<task>/ so its units resume like any sweep's. Own and aggregate curves
    are read from PRUNE_DIR/heads-own.json and heads-aggregate.json (the ordinary sweeps).
    """
    from pathlib import Path

    from opt66b.fileio import read_json
    from opt66b.runs.results import write_json

    from opt66b.runs.distributed import barrier, is_main

    prune_dir = Path(prune_dir)
    pairs: dict[tuple[str, str], list[int]] = {}
    for r in design["runs"]:
        pairs.setdefault((r["task"], r["ranking"]), []).append(r["shots"])
    paths = {}
    for (task, source), shots in pairs.items():  # every torchrun process runs its share of each sweep
        paths[(task, source)] = sweep(task, source, sorted(shots), prune_dir / "transfer" / task, list(percents))
    barrier()  # rank 0 merged each sweep's table after its units; the others are done here
    if not is_main():
        return None
    tables = {key: read_json(path) for key, path in paths.items()}
    base = {name: read_json(prune_dir / f"heads-{name}.json") for name in ("own", "aggregate")
            if (prune_dir / f"heads-{name}.json").is_file()}
    out = {k: v for k, v in design.items() if k != "runs"}
    for key, block in out["shots"].items():
        for entry in block["chosen"] + block["unseen"]:
            _curves(entry, shots_name(key), base, tables)
    path = write_json(prune_dir / "transfer.json", out)
    if log:
        log(f"wrote {path}")
    return path


def _curves(entry: dict[str, Any], shot: str, base: dict[str, Any], tables: dict[tuple, Any]) -> None:
    """One chosen (or unseen) task's curves at one shot: own and aggregate from the ordinary sweeps, each
    partner's from its sweep, and every curve's difference to own, paired on the same documents
    (prune/intervals.py): a curve is told apart from the task's own ranking only where the 95% interval
    excludes 0."""
    from .inflection import sweep_curve
    from .intervals import paired_drop

    def curve(table: dict | None) -> dict[str, float] | None:
        cells = (table or {}).get("results", {}).get(task, {}).get(shot)
        return None if cells is None else {f"{x:g}": y for x, y in sweep_curve(cells, "heads").items()}

    def vectors(table: dict | None) -> dict[str, str | None]:
        rows = (table or {}).get("per_doc", {}).get(task, {}).get(shot, {})
        return {h: row.get("0") for h, row in rows.items()}

    task = entry["task"]
    entry["curves"] = {"own": curve(base.get("own")), "aggregate": curve(base.get("aggregate"))}
    rankings = {"aggregate": base.get("aggregate")}
    for variant, sides in entry.get("partners", {}).items():
        for side, partner in sides.items():
            entry["curves"][f"{side}:{variant}"] = curve(tables.get((task, partner["task"])))
            rankings[f"{side}:{variant}"] = tables.get((task, partner["task"]))
    own = vectors(base.get("own"))
    entry["vs_own"] = {name: {h: paired_drop(own.get(h), bits) for h, bits in vectors(table).items()}
                       for name, table in rankings.items() if table is not None}


@dataclass(frozen=True, kw_only=True)
class TransferSettings(EvaluatingStep):
    """`run.py prune transfer`: the chosen tasks pruned with their partners' head rankings (module docstring)."""

    COMMAND = ("prune", "transfer")
    importance: Path | None = option(None)
    head_percents: tuple[float, ...] | None = option(None)
    correlations: Path | None = option(None)
    transfer_tasks: tuple[str, ...] = option(PAPER_TRANSFER_TASKS)
    partners: tuple[str, ...] | None = option(None)

    def check(self) -> None:
        self.check_tasks(self.limit)
        if self.correlations is None or self.importance is None:
            raise ValueError("prune transfer needs --correlations FILE (from `run.py correlate`) and --importance DIR")
        if not Path(self.correlations).is_file():
            raise FileNotFoundError(f"{self.correlations}: not found; run `run.py correlate` first")
        unknown = [p for p in self.partners or () if p not in PARTNER_CHOICES]
        if unknown:
            raise ValueError(f"--partners must be among {', '.join(PARTNER_CHOICES)}, got {unknown}")

    def units(self, shape: Any, tokenizer: Any, done: Any = None) -> list[Any]:
        """The plan's work units: the partners are read from correlations.json at run time, so this prices the
        upper bound, two partners per statistic (at most 4 rankings) for each chosen task (with substitutes)
        and shot, each an ordinary head sweep (PruneSettings.units, sharing `done`). The run splits each
        partner sweep's own units (prune/sweeps.run_sweep)."""
        from .sweeps import PruneSettings

        available = [t for t in self.tasks if t in PAPER_SEEN_TASKS]  # the seen tasks that will have importance
        planned: set = set()
        seen = lambda key: key in planned or (done is not None and done(key))  # noqa: E731
        common = {f: getattr(self, f) for f in ("data", "protocol", "limit", "batch_tokens", "seed", "importance",
                                                 "max_memory", "shots")}
        units = []
        for name in [c["task"] for c in choose_tasks(available, self.transfer_tasks)]:
            for partner in range(min(4, len(available) - 1)):
                sweep = PruneSettings(**common, sweep="heads", ranking=f"partner {partner}", tasks=(name,),
                                      head_percents=tuple(self.head_percents or DEFAULT_PERCENTS))
                for unit in sweep.units(shape, tokenizer, seen):
                    units.append(unit)
                    planned.update(unit.provides)
        return units

    def execute(self, loaded: Any = None, cache: Any = None) -> dict[str, int]:
        res = run_transfer_study(*loaded, self, cache)
        if res["table"] is not None:  # torchrun: rank 0 writes the table
            print(res["table"])
        return res["work"]


def run_transfer_study(model: Any, tokenizer: Any, info: dict[str, Any] | None, s: TransferSettings,
                       cache: Any = None, evaluations: Any = None) -> dict[str, Any]:
    """Cross-task transfer as the paper runs it (Fig. 9): for each chosen task and shot, head sweeps with the
    rankings of its highest- and lowest-SRCC partners, picked from s.correlations (correlations.json;
    transfer_design); own and aggregate come from the ordinary sweeps. Each (task, partner) sweep is
    prune/sweeps.run_sweep on one SweepRun (its store, cache and work), so the partner sweeps' shared 0%
    cells are one evaluation. Writes s.out/transfer.json (returned as "table")."""
    from opt66b.fileio import read_json

    from .sweeps import PruneSettings, run_sweep, sweep_run

    s.check()
    correlations = read_json(s.correlations)
    corr = {**correlations, "shots": {k: v for k, v in correlations.get("shots", {}).items() if int(k) in s.shots}}
    design = transfer_design(corr, s.transfer_tasks, variants=[PARTNER_CHOICES[p] for p in s.partners or s.protocol.partners])
    missing = sorted({r["task"] for r in design["runs"]} - set(s.tasks))
    if missing:
        raise ValueError(f"--tasks must include the transfer targets {missing} (their data is needed)")
    objects, run = sweep_run(model, tokenizer, info, s, cache, evaluations)
    common = {f: getattr(s, f) for f in ("data", "protocol", "limit", "batch_tokens", "seed", "importance",
                                         "max_memory", "recompute", "threads")}

    def sweep(task: str, source: str, shots: list[int], out_dir: Any, percents: list[float]) -> Any:
        partner = PruneSettings(**common, sweep="heads", ranking=source, tasks=(task,), shots=tuple(shots),
                                out=out_dir, head_percents=tuple(percents))
        return run_sweep(partner, {task: objects[task]}, run)

    table = run_transfer(design, s.out, sweep, list(s.head_percents or DEFAULT_PERCENTS))
    return {"out": s.out, "table": table, "work": run.work.as_dict()}
