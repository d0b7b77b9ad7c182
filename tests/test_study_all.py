"""`run.py all` on the embedded defaults (tiny OPT + bundled samples), reduced, end to end.

Checks that every artefact of the study exists and is well-formed, that the organism's top
prefix-matching head is a real induction head, that figures are non-empty PNGs of the expected
size when matplotlib is present, and that a rerun resumes instead of recomputing.
"""

from __future__ import annotations

import json
import re
import struct
import zlib

import pytest

import run
from opt66b.runs.results import read_tensors
from study import figures

TASKS = ["copa", "boolq", "piqa"]


LOADS: dict[str, int] = {}  # model loads counted during the fixture's `run.py all`


def counted_run(argv: list[str]) -> dict[str, int]:
    """run.main(argv) == 0, counting model loads three ways: calls of opt66b.load, checkpoint reads
    (weights.load_model) and stderr lines starting with "loading" (what a user sees)."""
    import contextlib
    import io

    import opt66b.runs.loading as runtime

    import argparse

    counts = {"load_calls": 0, "checkpoint_reads": 0, "parses": 0}
    real_load, real_read = runtime.load_from, runtime.load_model  # every load goes through load_from
    real_parse = argparse.ArgumentParser.parse_args

    def parse(self, *args, **kwargs):  # run.main's own parse, and any other
        counts["parses"] += 1
        return real_parse(self, *args, **kwargs)

    def load(*args, **kwargs):
        counts["load_calls"] += 1
        return real_load(*args, **kwargs)

    def read(*args, **kwargs):
        counts["checkpoint_reads"] += 1
        return real_read(*args, **kwargs)

    err = io.StringIO()
    runtime.load_from, runtime.load_model = load, read
    argparse.ArgumentParser.parse_args = parse
    try:
        with contextlib.redirect_stderr(err):
            assert run.main(argv) == 0, err.getvalue()[-3000:]
    finally:
        runtime.load_from, runtime.load_model = real_load, real_read
        argparse.ArgumentParser.parse_args = real_parse
    counts["announced"] = sum(line.startswith("loading") for line in err.getvalue().splitlines())
    return counts


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "run"
    argv = ["all", "--tasks", *TASKS, "--shots", "0", "1", "--limit", "6", "--n-docs", "4", "--seeds", "3",
            "--out", str(out)]
    LOADS.update(counted_run(argv))
    return out, argv


def test_the_whole_study_loads_the_model_once(study_run):
    counts = {k: v for k, v in LOADS.items() if k != "parses"}
    assert counts == {"load_calls": 1, "checkpoint_reads": 1, "announced": 1}  # every model step shares it


def test_all_parses_its_command_line_once_and_no_step_argv(study_run):
    """`all` hands each step's typed settings to its experiment: after run.main's own parse, no
    argument list is parsed (nor rendered to be run: commands.txt is written for replay only)."""
    assert LOADS["parses"] == 1


def png_size(path) -> tuple[int, int]:
    """(width, height) of a well-formed PNG: signature, every chunk's CRC, IHDR first, IEND last."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, kinds = 8, []
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body, (crc,) = data[pos + 8:pos + 8 + length], struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in chunk {kind!r}"
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds, (path, kinds[:3])
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_every_artefact_exists_and_is_well_formed(study_run):
    out, _ = study_run
    ran = TASKS  # piqa's few-shot pool is the samples' labelled stand-in
    for k in (0, 1):
        res = json.loads((out / f"eval/shots-{k}/results.json").read_text())
        assert set(res["results"]) == set(ran) and all(0 <= res["results"][t]["acc"] <= 1 for t in ran)
        agg, _ = read_tensors(out / f"importance/shots-{k}/aggregate.safetensors")
        assert agg["importance"].shape == (2, 4) and bool((agg["importance"] >= 0).all())
        ffn = json.loads((out / f"ffn_importance/shots-{k}/aggregate.json").read_text())
        assert sorted(ffn["ranking"]) == [0, 1]
    for name in ("heads-own", "heads-aggregate", "ffn-own", "grid-own"):
        table = json.loads((out / f"prune/{name}.json").read_text())
        assert not table["missing_units"] and set(table["results"]) == set(ran), name
    corr = json.loads((out / "correlate/correlations.json").read_text())
    assert set(corr["shots"]) == {"0", "1"} and "0v1" in corr["cross_shot"]
    for kind, variants in (("prefix_matching", ("paper", "corrected", "text")),
                           ("copying", ("paper", "index_fix", "attended_logits", "text", "residual"))):
        for variant in variants:
            t, _ = read_tensors(out / f"induction/{kind}_{variant}.safetensors")
            assert t["mean"].shape == (2, 4) and t["tokens"].shape[0] == 3
    cap = json.loads((out / "capacity/capacity.json").read_text())
    assert any("random_expected" in k for k in cap["retained_at_pruned_percent"])
    copy = json.loads((out / "copytask/copytask.json").read_text())
    assert 0 <= copy["accuracy_full"] <= 1
    report = (out / "report.md").read_text()
    for heading in ("Accuracy per task and shot", "Head importance", "Pruning sweeps", "Spearman",
                    "Induction heads", "Capacity retained", "piqa"):
        assert heading in report, heading
    # 14 steps + piqa's importance under the paper's targets (its target loses the leading space there)
    commands = (out / "commands.txt").read_text()
    assert commands.count("python run.py ") == 15
    other = [line for line in commands.splitlines() if "--tasks piqa --shots 0 1 --protocol paper --out" in line]
    assert len(other) == 1 and "--n-docs 4" in other[0]
    assert commands.count("--protocol corrected") == 8  # eval, importance, FFN oracle, 4 sweeps, transfer


def test_work_json_counts_what_each_step_computed_by_hand(study_run):
    """work.json against counts derived from the settings alone (--n-docs 4, --seeds 3, shots 0 1)."""
    out, _ = study_run
    work = json.loads((out / "work.json").read_text())
    pm_tokens = sum(1 + 4 * (25 + 2 * s) for s in range(3))  # BOS + 4 repeats of 25 + 2s tokens: 101+109+117
    assert pm_tokens == 327
    expected = {
        # one forward + one backward per importance doc: 3 tasks x 2 shot counts x 4 docs
        "head importance": {"forward_passes": 24, "backward_passes": 24},
        # one forward per seed
        "prefix matching": {"forward_passes": 3, "backward_passes": 0, "tokens": pm_tokens},
        # one model pass per seed (the residual variant) on BOS + 4 (25 + 2s) tokens; the direct-path
        # variants (paper, index_fix, attended_logits, text) run layer pieces on the embeddings, not the model
        "copying": {"forward_passes": 3, "backward_passes": 0, "tokens": pm_tokens},
        # prefix matching (3 seeds), importance (3 rows of 2 x 25 tokens fed, forward + backward),
        # four accuracy passes on the (3, 1 + 2 x 25) batch
        "synthetic copy task": {"forward_passes": 3 + 3 + 4, "backward_passes": 3,
                                "tokens": pm_tokens + 3 * 50 + 4 * 3 * 51},
    }
    for step, counts in expected.items():
        for key, value in counts.items():
            assert work[step][key] == value, (step, key, work[step])
    for step in ("evaluation", "FFN oracle", "head pruning (own ranking)", "combined grid"):
        assert work[step]["forward_passes"] > 0 and work[step]["backward_passes"] == 0, step
    # planned (the plan `all --plan` prints) beside measured time, per step: what the overall ETA runs on
    for step, row in work.items():
        assert row["measured_seconds"] >= 0 and row["planned_flops"] is not None, step
        assert row["planned_seconds"] is not None and row["planned_seconds"] >= 0, step


def test_all_plan_counts_the_passes_the_run_made(study_run, tmp_path, capsys):
    """`all --plan` follows the evaluation cache the steps share: equal to work.json wherever the
    masks are known before the run, an upper bound where two rankings may mask the same heads."""
    out, argv = study_run
    path = tmp_path / "plan.json"
    assert run.main([*argv, "--plan", "--throughput", "1", "--plan-json", str(path)]) == 0
    capsys.readouterr()
    planned = {s["step"]: s for s in json.loads(path.read_text())["steps"]}
    work = json.loads((out / "work.json").read_text())
    upper_bound = {"head pruning (aggregate ranking)", "cross-task transfer (highest / lowest correlated partners)"}
    assert set(work) <= set(planned) and "combined grid" in work and upper_bound <= set(work)
    for step, done in work.items():
        for key in ("forward_passes", "backward_passes", "tokens"):
            if step in upper_bound:
                assert done[key] <= planned[step][key], (step, key)
            else:
                assert done[key] == planned[step][key], (step, key, done[key], planned[step][key])


def test_organism_has_an_induction_head(study_run):
    out, _ = study_run
    summary = json.loads((out / "induction/prefix_matching_paper.json").read_text())
    assert summary["top_heads"][0]["score"] >= 0.5


@pytest.mark.skipif(not figures.have_matplotlib(), reason="matplotlib (the `plots` extra) is not installed")
def test_every_figure_is_a_well_formed_png_and_the_index_matches_the_files(study_run):
    out, _ = study_run
    pngs = {p.relative_to(out).as_posix() for p in (out / "figures").glob("*.png")}
    for p in pngs:
        w, h = png_size(out / p)
        assert w >= 300 and h >= 200 and (out / p).stat().st_size > 5000, p
    report = (out / "report.md").read_text()
    _check_the_papers_reading(out, report)
    index = report.split("## Figure index", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| Fig\. (\d+) \| [^|]* \| ([^\n]*) \|$", index, re.M))
    assert sorted(map(int, rows)) == list(range(3, 25))  # every figure of the paper from 3 to 24, once
    linked = set(re.findall(r"\]\(([^)]+\.png)\)", index))
    assert linked == pngs  # no file unlisted or missing
    drawn = {n for n, files in rows.items() if ".png" in files}
    # this run (shots 0 and 1; copa, boolq, piqa) draws the paper's figures at those shot counts only:
    # 3, 4, 5, 7, 8, 9 and 16 are 5-shot figures
    assert drawn == {"6", "10", "11", "12", "13", "14", "15", "17", "18", "19", "20", "21", "22", "23", "24"}, \
        sorted(drawn, key=int)
    from study.report_kit import figure_shots

    for n, files in rows.items():  # every row lists only its own shot counts, readable in the file names
        for k in map(int, re.findall(r"shots-(\d+)", files)):
            assert k in figure_shots(int(n)), (n, files)
    assert "grid-own-shots-0.png" in rows["19"] and "not drawn" in rows["7"]  # Fig. 7 is the 5-shot grid
    assert "prune-heads-own-shots-0.png" in rows["17"] and "prune-ffn-own-shots-0.png" in rows["6"]
    assert "prune-ffn-own-shots-1.png" in rows["18"] and "shots-0" not in rows["18"]
    assert "transfer-shots-0.png" in rows["21"] and "shots-1" not in rows["21"] and "shots-0" not in rows["22"]
    assert rows["10"].count("](") == 2 and "prefix_matching_paper.png" in rows["10"] and "copying_paper.png" in rows["10"]
    assert "residual" not in rows["10"] + rows["11"]  # the project's own variants are not the paper's figures
    assert "prefix_matching" in rows["23"] and "copying" not in rows["23"] and "prefix" not in rows["24"]
    # Figs. 3/12 are the paper's denominator; the other one is the erratum figure, not the paper's
    assert "importance-aggregate-shots-0.png" in rows["12"] and "uniform" not in rows["12"]
    extra = index.split("Not in the paper:", 1)[1]
    assert "importance-aggregate-uniform-shots-0.png" in extra and "copying_residual.png" in extra
    assert "importance-other-tasks-shots-0.png" not in pngs  # copa, boolq, piqa are all seen tasks
    for p in pngs:
        assert f"]({p})" in report.split("## Figure index", 1)[1]  # drawn in its section too


def test_report_lists_all_tasks_and_the_protocol(study_run):
    out, _ = study_run
    report = (out / "report.md").read_text()
    tasks_table = report.split("## Tasks", 1)[1].split("\n## ", 1)[0]
    from tasks.registry import PAPER_SEEN_TASKS, PAPER_UNSEEN_TASKS

    for t in (*PAPER_SEEN_TASKS, *PAPER_UNSEEN_TASKS, "synthetic_copy"):
        assert f"| {t} |" in tasks_table, t
    assert "NOT the paper's" in tasks_table
    headline = json.loads((out / "headline.json").read_text())
    assert headline["rule"] == "knee" and headline["tolerance_points"] == 1.0
    assert set(headline["shots"]["shots-0"]["heads"]) == {"knee", "tolerance", "against_paper"}
    assert set(verdict := headline["shots"]["shots-0"]["both"]["against_paper"]) == {"heads location", "ffn location", "drop"}
    assert all(v.split(" (")[0] in ("consistent", "differs", "too imprecise to tell", "not measured")
               for v in verdict.values())
    assert headline["paper_opt66b"]["shots-0"]["both"] == {"head_percent": 70, "ffn_percent": 20, "drop_points": 5}
    assert report.split("\n## ", 1)[0].count("**Protocol: corrected**") == 1  # said before any section
    targets = report.split("## What the importance targets change", 1)[1].split("\n## ", 1)[0]
    assert "| shots-0 | piqa |" in targets and "aggregate (1 of 3 tasks change)" in targets
    corr = json.loads((out / "correlate/correlations.json").read_text())
    assert corr["shots"]["0"]["tasks"] == ["piqa", "boolq", "copa", "aggregate"]  # seen tasks + aggregate row
    assert set(corr["targets"]["shots"]["0"]["tasks"]) == {"piqa"}
    transfer = json.loads((out / "prune/transfer.json").read_text())
    assert transfer["paper_choice_variant"] == "paper_argsort_pearson"
    chosen = transfer["shots"]["0"]["chosen"]
    # winogrande and record are not in this run: the first seen tasks left stand in, and say so
    assert [c["task"] for c in chosen] == ["copa", "piqa", "boolq"] and chosen[1]["instead_of"] == "winogrande"
    assert all(c["curves"]["own"] and c["curves"]["high:paper_argsort_pearson"] for c in chosen)


def test_rerun_resumes_without_recomputing(study_run):
    out, argv = study_run
    unit_files = sorted((out / "prune").rglob("h*_f*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in unit_files}
    assert run.main(argv) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_report_redraws_from_a_finished_run(study_run, capsys):
    out, _ = study_run
    (out / "report.md").unlink()
    assert run.main(["report", "--out", str(out)]) == 0
    assert (out / "report.md").is_file()


def test_protocol_paper_runs_the_papers_choices(tmp_path, capsys):
    """`all --protocol paper`: the published transfer partners, the paper's importance targets and
    denominator; the corrected targets computed beside them; the plan prices the same steps."""
    from prune.paper import PAPER_TRANSFER_PARTNERS

    out = tmp_path / "paper"
    argv = ["all", "--protocol", "paper", "--tasks", "copa", "winogrande", "record", "rte", "openbookqa",
            "--shots", "0", "--limit", "2", "--n-docs", "2", "--seeds", "2", "--out", str(out)]
    plan = tmp_path / "plan.json"
    assert run.main([*argv, "--plan", "--throughput", "1", "--plan-json", str(plan)]) == 0
    planned = [s["step"] for s in json.loads(plan.read_text())["steps"]]
    assert "head importance under the corrected protocol's targets (openbookqa)" in planned
    assert run.main(argv) == 0
    capsys.readouterr()
    transfer = json.loads((out / "prune/transfer.json").read_text())
    assert transfer["variants"] == ["published", "paper_argsort_pearson"]
    for entry in transfer["shots"]["0"]["chosen"]:
        got = {side: entry["partners"]["published"][side]["task"] for side in ("high", "low")}
        assert got == PAPER_TRANSFER_PARTNERS[0][entry["task"]], entry["task"]
        assert entry["curves"]["high:published"] and entry["curves"]["low:published"]
    meta = read_tensors(out / "importance/shots-0/openbookqa.safetensors")[1]
    assert json.loads(meta["paper_quirks"]) is True and meta["importance_is"] == "importance_paper_denominator"
    other = read_tensors(out / "importance-corrected/shots-0/openbookqa.safetensors")[1]
    assert json.loads(other["paper_quirks"]) is False
    assert not (out / "importance-corrected/shots-0/copa.safetensors").exists()  # copa's examples do not differ
    report = (out / "report.md").read_text()
    assert "**Protocol: paper**" in report.split("\n## ", 1)[0]
    assert "| shots-0 | openbookqa |" in report.split("## What the importance targets change", 1)[1]
    _check_the_papers_reading(out, report, record=True)


def _check_the_papers_reading(out, report: str, record: bool = False) -> None:
    """What a reader holding the paper checks first: no knee with a gain as its drop, every figure row with
    only its own shot counts, the paper's numbers set beside the run's."""
    from study.report_kit import figure_shots

    headline = json.loads((out / "headline.json").read_text())
    for shot, reading in headline["shots"].items():
        for axis in ("heads", "ffn", "both"):
            point = (reading.get(axis) or {}).get("knee")
            assert point is None or point["drop_points"] is None or point["drop_points"] >= 0, (shot, axis, point)
    index = report.split("## Figure index", 1)[1].split("\n## ", 1)[0]
    for n, files in re.findall(r"^\| Fig\. (\d+) \| [^|]* \| ([^\n]*) \|$", index, re.M):
        assert all(int(k) in figure_shots(int(n)) for k in re.findall(r"shots-(\d+)", files)), (n, files)
    section = report.split("## The paper's numbers beside this run's", 1)[1].split("\n## ", 1)[0]
    if not record:  # ReCoRD, COPA and Winogrande are not all in this run
        assert "(ReCoRD and COPA or Winogrande are not both in this run)" in section
        return
    assert "| shots-0 | SRCC ReCoRD-copa (paper's statistic) | 0.130 |" in section
    assert "| shots-0 | top-30% overlap ReCoRD-winogrande | 0.760 |" in section


def test_every_number_carries_its_uncertainty(study_run):
    """results.json: <metric>_stderr and <metric>_ci95 beside every metric (the interval inside [0, 1], never
    zero width); sweep tables: each cell's stderr and paired drop interval against the unpruned cell, the
    seen-task mean's interval; headline: knee intervals; transfer: the partner curves' paired gap to the
    task's own ranking; the report: intervals, no zero-width one."""

    out, _ = study_run
    for k in (0, 1):
        res = json.loads((out / f"eval/shots-{k}/results.json").read_text())
        for task, metrics in res["results"].items():
            for m in [m for m in metrics if not m.endswith(("_stderr", "_ci95"))]:
                assert metrics[f"{m}_stderr"] is not None and metrics[f"{m}_stderr"] >= 0, (task, m)
                low, high = metrics[f"{m}_ci95"]
                assert 0.0 <= low <= metrics[m] <= high <= 1.0 and high > low, (task, m)
    for name in ("heads-own", "ffn-own", "grid-own"):
        table = json.loads((out / f"prune/{name}.json").read_text())
        for task, shots in table["results"].items():
            for shot, rows in shots.items():
                for h, row in rows.items():
                    for f in row:
                        paired = table["paired"][task][shot][h][f]
                        low, high = paired["drop_ci95"]
                        assert low <= paired["drop"] <= high and high > low and paired["n"] == 6, (name, task, h, f)
                        assert len(table["per_doc"][task][shot][h][f]) == 6
                assert table["paired"][task][shot]["0"]["0"]["drop"] == 0.0
        mean0 = table["mean_over_tasks_ci"]["shots-0"]["0"]["0"]
        assert mean0["se"] is not None and mean0["drop_ci95"][0] < 0.0 < mean0["drop_ci95"][1]
    headline = json.loads((out / "headline.json").read_text())
    knee = headline["shots"]["shots-0"]["heads"]["knee"]
    if knee is not None and knee.get("interval"):
        assert knee["interval"]["lo"] <= knee["head_percent"] <= knee["interval"]["hi"]
    transfer = json.loads((out / "prune/transfer.json").read_text())
    gap = transfer["shots"]["0"]["chosen"][0]["vs_own"]["aggregate"]["0"]
    assert gap["drop"] == 0.0 and gap["se"] == 0.0  # the unpruned cell is the same evaluation
    report = (out / "report.md").read_text()
    accuracy = report.split("## Accuracy per task and shot", 1)[1].split("\n## ", 1)[0]
    spans = [(float(a), float(b)) for a, b in re.findall(r"\[(-?[0-9.]+), (-?[0-9.]+)\]", accuracy)]
    assert spans and all(0.0 <= a < b <= 1.0 for a, b in spans)
    assert "± 0.0" not in report and "0.000 ±" not in report


def test_plan_prices_precision_from_the_run_it_would_resume(study_run, tmp_path, capsys):
    """--plan's half-widths: from the stated prior before anything ran, from the run's own accuracies and
    paired differences at the paper's points once it has; --target-halfwidth allocates the mean's documents."""
    import math

    from prune.intervals import Z95
    from study.precision import PRIOR_SD

    out, argv = study_run
    fresh, seen = tmp_path / "fresh.json", tmp_path / "seen.json"
    base = [a for a in argv if a != str(out)][:-1]  # without --out OUT
    assert run.main([*base, "--plan", "--throughput", "1", "--target-halfwidth", "20", "--plan-json", str(fresh)]) == 0
    assert run.main([*argv, "--plan", "--throughput", "1", "--plan-json", str(seen)]) == 0
    printed = capsys.readouterr().out
    plan = json.loads(fresh.read_text())
    rows = {r["task"]: r for r in plan["precision"]["rows"]}
    assert set(rows) == {"copa", "boolq", "piqa"}
    copa = rows["copa"]
    assert copa["units"] == 6 and copa["acc_halfwidth"] == pytest.approx(100 * Z95 * 0.5 / math.sqrt(6))
    assert copa["drop_halfwidth"] == pytest.approx(Z95 * PRIOR_SD / math.sqrt(6))
    # the FLOPs per unit come from the plan's own work units of that task
    assert copa["flops"] == pytest.approx(sum(r["doc_flops"].get("copa", 0) for r in plan["steps"])) and copa["flops"] > 0
    target = plan["precision"]["target"]
    assert target["reached"] == (target["achieved_halfwidth"] <= 20 + 1e-9)
    prev = {r["task"]: r for r in json.loads(seen.read_text())["precision"]["rows"]}["copa"]
    accs = [json.loads((out / f"eval/shots-{k}/results.json").read_text())["results"]["copa"]["acc"] for k in (0, 1)]
    assert prev["p"] == pytest.approx(min(max(sum(accs) / 2, 1e-3), 1 - 1e-3))
    assert prev["source"].startswith("earlier run") and prev["sd_points"] != PRIOR_SD
    assert "knee location: not priced" in printed


# When and how a file was written, not what it holds: the time, the process's argv, and the sha256 of
# input files (which record their own write times; their numbers are compared file by file here).
VOLATILE = {"created", "argv", "aggregate_inputs", "input_sha256", "content_sha256"}  # the digest covers the first two


def _normalised(path, root) -> object:
    """A result file's content with the run's own directory and the write-time fields taken out."""
    if path.suffix == ".safetensors":
        tensors, meta = read_tensors(path)
        return {k: v.tolist() for k, v in tensors.items()}, _strip(meta, str(root))
    if path.suffix == ".json":
        return _strip(json.loads(path.read_text()), str(root))
    return [_strip(json.loads(line), str(root)) for line in path.read_text().splitlines()]  # .jsonl


def _strip(obj, root: str):
    if isinstance(obj, dict):
        return {k: _strip(v, root) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<run>")
    return obj


def test_replaying_commands_txt_computes_every_result_file_again(study_run, tmp_path, capsys):
    """Every line of commands.txt, run alone (its own parse, its own model load, no shared evaluation
    cache) into a fresh directory, writes the same result files as `all` did, number for number."""
    import shlex

    out, _ = study_run
    replay = tmp_path / "replay"
    lines = (out / "commands.txt").read_text().splitlines()
    for line in lines:
        argv = shlex.split(line.replace(str(out), str(replay)))
        assert argv[:2] == ["python", "run.py"]
        assert run.main(argv[2:]) in (0, None), line
    capsys.readouterr()
    steps = ["eval", "importance", "importance-paper", "ffn_importance", "prune", "correlate", "induction",
             "capacity", "copytask"]
    compared = 0
    for sub in steps:
        for path in sorted((out / sub).rglob("*")):
            if path.is_file() and path.suffix in (".json", ".jsonl", ".safetensors"):
                twin = replay / path.relative_to(out)
                assert twin.is_file(), f"the replay did not write {twin}"
                assert _normalised(path, out) == _normalised(twin, replay), path.relative_to(out)
                compared += 1
    assert compared > 100
