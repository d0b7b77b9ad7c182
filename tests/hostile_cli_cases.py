"""The hostile-input table, second half: options, output paths, resume, study commands and tokenizer
files (tests/hostile_cases.py has the model, data and mask groups and gathers both halves)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from hostile_kit import TINY, FIXTURES, Case, Kit, ev


def option_cases() -> list[Case]:
    def o(name, argv, words):
        return Case("options", name, lambda kit, out, argv=argv: [a.replace("OUT", str(out)) for a in argv], words)

    e = ["eval", "--data", str(FIXTURES), "--tasks", "copa", "--limit", "1", "--out", "OUT"]
    imp = ["importance", "heads", "--data", str(FIXTURES), "--tasks", "copa", "--shots", "0", "--out", "OUT"]
    return [
        o("device-tpu", e + ["--device", "tpu"], ("--device", "tpu")),
        o("device-cuda", e + ["--device", "cuda:0"], ("--device", "cuda", "use --device cpu")),
        o("device-cuda-7", e + ["--device", "cuda:7"], ("--device", "cuda")),
        o("device-empty", e + ["--device", ""], ("--device",)),
        o("device-garbage", e + ["--device", "foo:1"], ("--device", "foo:1")),
        o("device-meta", e + ["--device", "meta"], ("--device", "meta")),
        o("device-map-tpu", e + ["--device-map", "0-1:tpu"], ("--device-map", "tpu")),
        o("device-map-cuda", e + ["--device-map", "0-1:cuda:0"], ("--device-map", "cuda")),
        o("device-map-gap", e + ["--device-map", "0-0:cpu"], ("--device-map",)),
        o("device-map-file-missing", e + ["--device-map", "nope.json"], ("nope.json", "not found")),
        o("max-memory-device", e + ["--device-map", "auto", "--max-memory", "tpu=1GiB"], ("--max-memory", "tpu")),
        o("max-memory-size", e + ["--device-map", "auto", "--max-memory", "cpu=lots"], ("lots",)),
        o("reserve-entry", e + ["--device-map", "auto", "--max-memory", "cpu=1GiB", "--reserve", "cuda:0"],
          ("--reserve", "DEVICE=SIZE")),
        o("threads-zero", e + ["--threads", "0"], ("--threads",)),
        o("threads-negative", e + ["--threads", "-3"], ("--threads",)),
        o("shots-negative", e + ["--shots", "-1"], ("--shots",)),
        o("limit-zero", e + ["--limit", "0"], ("--limit",)),
        o("batch-tokens-zero", e + ["--batch-tokens", "0"], ("--batch-tokens",)),
        o("mmap-random", e + ["--offload", "mmap", "--random-weights", "opt-125m"], ("--offload mmap",)),
        o("random-size", e + ["--random-weights", "opt-999b"], ("opt-999b",)),
        o("n-docs-zero", imp + ["--n-docs", "0"], ("--n-docs",)),
        o("ranking-unknown", ["prune", "heads", "--data", str(FIXTURES), "--tasks", "copa", "--shots", "0",
                              "--importance", "OUT", "--ranking", "nope", "--out", "OUT"], ("--ranking", "nope")),
        o("head-percents", ["prune", "heads", "--data", str(FIXTURES), "--tasks", "copa", "--shots", "0",
                            "--importance", "OUT", "--head-percents", "150", "--out", "OUT"], ("--head-percents",)),
        o("prune-without-importance", ["prune", "heads", "--data", str(FIXTURES), "--tasks", "copa", "--out", "OUT"],
          ("--importance",)),
        o("top-fraction", ["correlate", "--importance", "OUT", "--top-fraction", "2", "--out", "OUT"], ("--top-fraction",)),
        o("induction-seeds-zero", ["induction", "prefix", "--seeds", "0", "--out", "OUT"], ("--seeds",)),
        o("induction-start-length", ["induction", "copying", "--start-length", "0", "--out", "OUT"], ("--start-length",)),
        o("induction-too-long", ["induction", "prefix", "--seeds", "3", "--start-length", "600", "--out", "OUT"],
          ("positions",)),
        o("copytask-length", ["copytask", "--length", "1", "--out", "OUT"], ("--length",)),
        o("all-limit-zero", ["all", "--limit", "0", "--out", "OUT"], ("--limit",)),
        # checked before any step runs (0 once passed as "not given": a budget of 0 was silently 4096)
        o("all-batch-tokens-zero", ["all", "--batch-tokens", "0", "--out", "OUT"], ("--batch-tokens",)),
        o("all-seed-negative", ["all", "--seed", "-1", "--out", "OUT"], ("--seed",)),
        o("copytask-seed-negative", ["copytask", "--seed", "-1", "--out", "OUT"], ("--seed",)),
        o("max-length-zero", e + ["--max-length", "0"], ("--max-length", "got 0")),
        o("importance-max-length-zero", imp + ["--n-docs", "1", "--max-length", "0"], ("--max-length", "got 0")),
        o("copytask-threshold", ["copytask", "--threshold", "2", "--out", "OUT"], ("--threshold", "[0, 1]")),
        o("copytask-threshold-zero", ["copytask", "--threshold", "0", "--out", "OUT"], ("--threshold",)),
        o("dtype-choice", e + ["--dtype", "float8"], ("--dtype", "float8")),
        o("shots-not-int", e + ["--shots", "one"], ("--shots", "one")),
        o("unknown-option", e + ["--frobnicate"], ("--frobnicate",)),
    ]


def output_cases() -> list[Case]:
    commands = {
        "eval": lambda out: ev(out),
        "importance-heads": lambda out: ["importance", "heads", "--data", str(FIXTURES), "--tasks", "copa", "--out", str(out)],
        "importance-ffn": lambda out: ["importance", "ffn", "--data", str(FIXTURES), "--tasks", "copa", "--out", str(out)],
        "induction-prefix": lambda out: ["induction", "prefix", "--seeds", "1", "--out", str(out)],
        "induction-capacity": lambda out: ["induction", "capacity", "--scores", str(FIXTURES), "--importance",
                                           str(FIXTURES), "--out", str(out)],
        "correlate": lambda out: ["correlate", "--importance", str(FIXTURES), "--out", str(out)],
        "copytask": lambda out: ["copytask", "--seeds", "1", "--out", str(out)],
        "all": lambda out: ["all", "--out", str(out)],
        "convert": lambda out: ["convert", str(TINY), "--out", str(out)],
    }
    cases = []
    for name, make in commands.items():
        cases.append(Case("output paths", f"{name}-out-is-file", lambda kit, out, make=make: make(out.parent / "file"),
                          ("file", "not a directory")))
        cases.append(Case("output paths", f"{name}-out-under-file", lambda kit, out, make=make:
                          make(out.parent / "file" / "sub"), ("file", "cannot be created")))
    # /proc refuses new entries even to root: the check must try, not trust permission bits
    cases.append(Case("output paths", "eval-out-under-proc", lambda kit, out: ev(Path("/proc/opt66b-nope")),
                      ("/proc/opt66b-nope", "cannot be created")))
    cases.append(Case("output paths", "report-run-is-file", lambda kit, out: ["report", "--out", str(out.parent / "file")],
                      ("--out", "not a directory")))
    return cases


def prefilled_out(files: dict[str, bytes], argv: Callable[[Path], list[str]]):
    """A case whose output directory already holds `files` (relative path -> bytes) before it runs."""
    def make(kit: Kit, out: Path) -> list[str]:
        for rel, content in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(content)
        return argv(out)
    return make


def resume_cases() -> list[Case]:
    """A unit file of an earlier run in --out made with other settings, and damaged inputs a step cannot recompute
    (a damaged unit of the step's own is computed again: tests/test_faults.py)."""
    from safetensors.torch import save

    task_json = "shots-0/tasks/copa.json"
    other = json.dumps({"results": {"acc": 0.5}, "version": 0, "config": {"task": "copa", "limit": 999}}).encode()
    limit_999 = json.dumps({"results": {"acc": 0.5}, "fingerprint": {"code_version": 1, "limit": 999}}).encode()
    unfingerprinted = save({"importance": torch.zeros(2, 4)})  # whole and readable, but no fingerprint: not ours
    imp = lambda out: ["importance", "heads", "--data", str(FIXTURES), "--tasks", "copa", "--shots", "0",
                       "--n-docs", "1", "--out", str(out)]
    ffn = lambda out: ["importance", "ffn", "--data", str(FIXTURES), "--tasks", "copa", "--shots", "0", "--limit", "1",
                       "--out", str(out)]
    prune_aggregate = lambda out: ["prune", "heads", "--ranking", "aggregate", "--data", str(FIXTURES), "--tasks", "copa",
                                   "--shots", "0", "--limit", "1", "--importance", str(out / "imp"), "--out", str(out)]
    return [
        Case("resume", "eval-unit-other-settings", prefilled_out({task_json: other}, ev), ("copa.json", "--recompute")),
        Case("resume", "eval-unit-other-limit", prefilled_out({task_json: limit_999}, ev), ("copa.json", "limit")),
        Case("resume", "importance-unit-unfingerprinted", prefilled_out({"shots-0/copa.safetensors": unfingerprinted}, imp),
             ("copa.safetensors", "--recompute")),
        Case("resume", "induction-seed-unfingerprinted", prefilled_out(
            {"seeds/prefix_matching_paper_seed_0.safetensors": unfingerprinted},
            lambda out: ["induction", "prefix", "--seeds", "1", "--out", str(out)]), ("seed_0.safetensors", "--recompute")),
        Case("resume", "ffn-unit-other-limit", prefilled_out({"shots-0/copa.json": limit_999}, ffn), ("copa.json", "limit")),
        Case("resume", "prune-aggregate-corrupt", prefilled_out(
            {"imp/shots-0/aggregate.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{}"}, prune_aggregate),
             ("aggregate.safetensors",)),
        Case("resume", "correlate-importance-corrupt", prefilled_out(
            {"imp/shots-0/copa.safetensors": b"garbage", "imp/shots-0/rte.safetensors": b"garbage"},
            lambda out: ["correlate", "--importance", str(out / "imp"), "--out", str(out)]), ("copa.safetensors",)),
        Case("resume", "prune-importance-corrupt", prefilled_out(
            {"imp/shots-0/copa.safetensors": b"garbage", "imp/shots-0/aggregate.safetensors": b"garbage"},
            lambda out: ["prune", "heads", "--data", str(FIXTURES), "--tasks", "copa", "--shots", "0", "--limit", "1",
                         "--importance", str(out / "imp"), "--out", str(out)]), ("copa.safetensors",)),
    ]


def study_cases() -> list[Case]:
    return [
        Case("study commands", "report-empty", prefilled_out({"README": b""}, lambda out: ["report", "--out", str(out)]),
             ("nothing to report", "eval/shots-K/results.json")),
        Case("study commands", "report-eval-only", prefilled_out({"shots-0/results.json": b"{}"}, lambda out: ["report", "--out", str(out)]),
             ("nothing to report", "single command")),
        Case("study commands", "report-missing", lambda kit, out: ["report", "--out", str(out)], ("not found",)),
        Case("study commands", "all-unknown-task", lambda kit, out: ["all", "--tasks", "nosuchtask", "--out", str(out)],
             ("nosuchtask",)),
        Case("study commands", "all-no-data", lambda kit, out: ["all", "--data", str(kit.once("empty-data", lambda d: None)),
                                                                "--out", str(out)], ("none of the requested tasks",)),
        Case("study commands", "correlate-missing", lambda kit, out: ["correlate", "--importance", str(kit.root / "nope"),
                                                                      "--out", str(out)], ("nope",)),
        Case("study commands", "correlate-empty", lambda kit, out: ["correlate", "--importance",
                                                                    str(kit.once("empty-imp", lambda d: None)), "--out", str(out)],
             ("empty-imp",)),
        Case("study commands", "capacity-empty", lambda kit, out: ["induction", "capacity", "--scores",
                                                                   str(kit.once("empty-scores", lambda d: None)), "--importance",
                                                                   str(kit.once("empty-imp", lambda d: None)), "--out", str(out)],
             ("empty-scores",)),
        Case("study commands", "prune-importance-empty", lambda kit, out: [
            "prune", "heads", "--data", str(FIXTURES), "--tasks", "copa", "--shots", "0", "--limit", "1", "--importance",
            str(kit.once("empty-imp", lambda d: None)), "--out", str(out)], ("empty-imp",)),
        Case("study commands", "ffn-importance-unknown-task", lambda kit, out: [
            "importance", "ffn", "--data", str(FIXTURES), "--tasks", "nosuchtask", "--out", str(out)], ("nosuchtask",)),
        Case("study commands", "importance-nan-weights", lambda kit, out: [
            "importance", "heads", "--model", str(kit.nan_model()), "--data", str(FIXTURES), "--tasks", "copa",
            "--shots", "0", "--n-docs", "1", "--out", str(out)], ("layers.0.self_attn.q_proj.weight", "NaN", "weights")),
        Case("study commands", "all-named-task-malformed", lambda kit, out: [
            "all", "--data", str(copa_and_bad_cb(kit)), "--tasks", "copa", "cb", "--shots", "0", "--out", str(out)],
             ("--tasks cb", "val.jsonl:1")),
        Case("study commands", "report-results-truncated", prefilled_out(
            {"eval/shots-0/results.json": b'{"results": {"copa": {"acc": 0.'}, lambda out: ["report", "--out", str(out)]),
             ("results.json", "not valid JSON")),
        Case("study commands", "capacity-negative-scores", lambda kit, out: [
            "induction", "capacity", "--scores", str(score_dir(kit, "neg", -0.25)), "--importance",
            str(importance_dir(kit)), "--out", str(out)], ("prefix_matching_paper.safetensors", "negative")),
        Case("study commands", "capacity-nan-scores", lambda kit, out: [
            "induction", "capacity", "--scores", str(score_dir(kit, "nan", float("nan"))), "--importance",
            str(importance_dir(kit)), "--out", str(out)], ("prefix_matching_paper.safetensors", "nan")),
        Case("study commands", "importance-aggregate-conflict-before-work", aggregate_conflict,
             ("aggregate.safetensors", "['copa']", "adds ['cb']", "--update-aggregate")),
    ]


def copa_and_bad_cb(kit: Kit) -> Path:
    def build(d: Path) -> None:
        shutil.copytree(FIXTURES / "copa", d / "copa")
        shutil.copytree(FIXTURES / "cb", d / "cb")
        (d / "cb" / "val.jsonl").write_text("{oops\n")
    return kit.once("data-copa-bad-cb", build)


def score_dir(kit: Kit, name: str, value: float) -> Path:
    """A scores dir whose prefix_matching_paper 'mean' (2 x 4, the tiny OPT's heads) holds one `value`."""
    from safetensors.torch import save

    mean = torch.full((2, 4), 0.5)
    mean[1, 2] = value
    return kit.once(f"scores-{name}", lambda d: (d / "prefix_matching_paper.safetensors").write_bytes(
        save({"mean": mean, "var": torch.zeros(2, 4)})))


def importance_dir(kit: Kit) -> Path:
    from safetensors.torch import save

    def build(d: Path) -> None:
        (d / "shots-0").mkdir()
        (d / "shots-0" / "copa.safetensors").write_bytes(save({"importance": torch.arange(8.0).view(2, 4)}))
    return kit.once("importance-plain", build)


def aggregate_conflict(kit: Kit, out: Path) -> list[str]:
    """--out already holds importance of copa with an aggregate of copa alone; adding cb would change
    the aggregate, which is knowable (and refused) before any importance is computed."""
    import run

    base = ["importance", "heads", "--data", str(FIXTURES), "--shots", "0", "--n-docs", "1"]
    made = kit.once("imp-copa-only", lambda d: run.main([*base, "--tasks", "copa", "--out", str(d / "imp")]))
    shutil.copytree(made / "imp", out)
    return [*base, "--tasks", "copa", "cb", "--out", str(out)]


def tokenizer_cases() -> list[Case]:
    vocab = (TINY / "vocab.json").read_bytes()
    toks: list[tuple[str, dict[str, bytes | None], tuple[str, ...]]] = [
        ("no-vocab", {"vocab.json": None}, ("vocab.json", "missing")),
        ("no-merges", {"merges.txt": None}, ("merges.txt", "missing")),
        ("vocab-not-json", {"vocab.json": b"{"}, ("vocab.json",)),
        ("vocab-list", {"vocab.json": b"[]"}, ("vocab.json",)),
        ("merges-garbage", {"merges.txt": b"#version: 0.2\na b c\n"}, ("merges.txt",)),
        ("merges-unknown-token", {"merges.txt": b"#version: 0.2\n\xc3\xa9\xc3\xa9 zz\n"}, ("merges.txt",)),
        ("config-not-json", {"tokenizer_config.json": b"{"}, ("tokenizer_config.json", "not valid JSON")),
        ("config-list", {"tokenizer_config.json": b"[]"}, ("tokenizer_config.json", "JSON object")),
        ("tokenizer-json-garbage", {"tokenizer.json": b"{garbage"}, ("tokenizer.json",)),
        ("vocab-invalid-utf8", {"vocab.json": vocab[:100] + b"\xff" + vocab[100:]}, ("vocab.json",)),
        ("vocab-without-eos", {"vocab.json": vocab.replace(b'"</s>": 2, ', b"")}, ("vocab.json", "'</s>'")),
        ("vocab-without-pad", {"vocab.json": vocab.replace(b'"<pad>": 1, ', b"")}, ("vocab.json", "'<pad>'")),
    ]
    cases = [Case("tokenizer files", name, lambda kit, out, name=name, files=files:
                  ev(out, "--tokenizer", kit.tokenizer(name, files)), words) for name, files, words in toks]
    cases += [
        Case("tokenizer files", "dir-missing", lambda kit, out: ev(out, "--tokenizer", kit.root / "nope"), ("nope",)),
        Case("tokenizer files", "induction-merge-missing-from-vocab", lambda kit, out: [
            "induction", "prefix", "--seeds", "1", "--tokenizer",
            str(kit.tokenizer("merge-missing", {"merges.txt": (TINY / "merges.txt").read_bytes() + b"zzq qqz\n"})),
            "--out", str(out)], ("merges.txt", "zzq")),
    ]
    return cases
