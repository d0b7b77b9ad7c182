"""Compare two `run.py all` output directories: every JSON value and every safetensors tensor.

    python tests/compare_runs.py RUN_A RUN_B [--alias /old/root /new/root] [--ignore-dir copytask]

Numbers must be identical (bit for bit: JSON floats as written, tensors by torch.equal with NaN ==
NaN). Provenance that legitimately differs between two runs is reported apart and not counted as a
difference: timestamps, argv, software versions, the run directory's own path, and fingerprints
(safetensors metadata and the JSON keys listed in PROVENANCE). Exit 0 when no number differs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Keys whose values describe how/when/where a file was made, not what was computed (input_sha256: hashes
# of input files whose own metadata holds timestamps; their numbers are compared file by file).
PROVENANCE = {"created", "argv", "python", "torch", "platform", "fingerprint", "model", "meta", "config",
              "data_sha256", "data_files", "head_importance", "importance", "ffn_importance", "scores_dir",
              "importance_dir", "merges_sha256", "model_id", "model_config_sha256", "missing_units", "dtype",
              "device", "device_map", "layers", "heads", "max_memory_gib", "offload", "identity", "config_sha256",
              "random_weights_seed", "sources", "input_sha256", "content_sha256", "started", "machine", "code"}


def _norm(value, run: Path, aliases: dict[str, str]):
    if isinstance(value, str):
        value = value.replace(str(run.resolve()), "RUN").replace(str(run), "RUN")
        for old, new in aliases.items():
            value = value.replace(old, new)
    return value


def diff_json(a, b, run_a: Path, run_b: Path, where: str, numbers: list, provenance: list,
              aliases: dict[str, str] | None = None) -> None:
    aliases = aliases or {}
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{where}.{k}"
            if k not in a or k not in b:
                (provenance if k in PROVENANCE else numbers).append(f"{sub}: only in {'B' if k not in a else 'A'}")
            elif k in PROVENANCE:
                if json.dumps(a[k], sort_keys=True, default=str) != json.dumps(b[k], sort_keys=True, default=str):
                    provenance.append(sub)
            else:
                diff_json(a[k], b[k], run_a, run_b, sub, numbers, provenance, aliases)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff_json(x, y, run_a, run_b, f"{where}[{i}]", numbers, provenance, aliases)
    else:
        x, y = _norm(a, run_a, {}), _norm(b, run_b, aliases)
        same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        if not same:
            numbers.append(f"{where}: {json.dumps(a)[:60]} vs {json.dumps(b)[:60]}")


# What one invocation computed and how long it took (work.json, OUT/work/rank-R.json): records of the run, not
# results; two runs of the same study differ there by design (times, and each process's share).
RECORDS = {"work.json", "work"}


def compare(run_a: Path, run_b: Path, ignore_dirs: set[str] = frozenset(), aliases: dict[str, str] | None = None) -> dict:
    """{files only in either, counts, number_diffs {file: [...]}, provenance_diffs {file: [keys]}}, the
    records of the invocations (RECORDS) left out. aliases: {text in B: text in A} replaced in B's strings
    (e.g. another checkout's root)."""
    ignore_dirs = set(ignore_dirs) | RECORDS
    import torch

    from opt66b.runs.results import read_tensors

    def files(run: Path) -> set[str]:
        return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors",
                ".jsonl") and p.name != "fingerprint.json" and p.relative_to(run).parts[0] not in ignore_dirs}

    fa, fb = files(run_a), files(run_b)
    report = {"only_in_a": sorted(fa - fb), "only_in_b": sorted(fb - fa), "json_files": 0, "tensor_files": 0,
              "tensors": 0, "json_values": 0, "number_diffs": {}, "provenance_diffs": {}}
    for rel in sorted(fa & fb):
        pa, pb = run_a / rel, run_b / rel
        numbers: list[str] = []
        provenance: list[str] = []
        if rel.endswith(".safetensors"):
            ta, _ = read_tensors(pa)
            tb, _ = read_tensors(pb)
            report["tensor_files"] += 1
            for k in sorted(set(ta) | set(tb)):
                report["tensors"] += 1
                if k not in ta or k not in tb:
                    numbers.append(f"{k}: only in {'B' if k not in ta else 'A'}")
                elif ta[k].shape != tb[k].shape or ta[k].dtype != tb[k].dtype or not torch.equal(
                        torch.nan_to_num(ta[k], nan=1234.5), torch.nan_to_num(tb[k], nan=1234.5)):
                    numbers.append(f"{k}: max |diff| {float((ta[k].double() - tb[k].double()).abs().max()):.3g}"
                                   if ta[k].shape == tb[k].shape else f"{k}: shape {tuple(ta[k].shape)} vs {tuple(tb[k].shape)}")
        else:
            report["json_files"] += 1
            if rel.endswith(".jsonl"):
                la = [json.loads(x) for x in pa.read_text().splitlines()]
                lb = [json.loads(x) for x in pb.read_text().splitlines()]
                diff_json(la, lb, run_a, run_b, "", numbers, provenance, aliases)
            else:
                diff_json(json.loads(pa.read_text()), json.loads(pb.read_text()), run_a, run_b, "", numbers, provenance,
                          aliases)
        if numbers:
            report["number_diffs"][rel] = numbers
        if provenance:
            report["provenance_diffs"][rel] = sorted(set(p.split("[")[0] for p in provenance))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--ignore-dir", nargs="*", default=[], help="top-level directories to leave out")
    p.add_argument("--alias", nargs=2, action="append", default=[], metavar=("IN_A", "IN_B"),
                   help="text of A's strings (e.g. its checkout root) that B spells otherwise")
    args = p.parse_args(argv)
    rep = compare(args.run_a, args.run_b, set(args.ignore_dir), {b: a for a, b in args.alias})
    print(f"compared {rep['json_files']} JSON/JSONL files and {rep['tensor_files']} safetensors files "
          f"({rep['tensors']} tensors)")
    for key in ("only_in_a", "only_in_b"):
        if rep[key]:
            print(f"{key}: {len(rep[key])} files, e.g. {rep[key][:5]}")
    print(f"files with differing numbers: {len(rep['number_diffs'])}")
    for rel, diffs in list(rep["number_diffs"].items())[:30]:
        print(f"  {rel}: {len(diffs)} values, e.g. {diffs[:3]}")
    kinds = sorted({k for v in rep["provenance_diffs"].values() for k in v})
    print(f"files differing only in provenance fields: {len(rep['provenance_diffs'])} ({', '.join(kinds[:12])})")
    return 1 if rep["number_diffs"] or rep["only_in_a"] or rep["only_in_b"] else 0


if __name__ == "__main__":
    sys.exit(main())
