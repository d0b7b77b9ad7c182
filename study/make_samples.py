"""Cut the bundled data samples (tasks/samples) from the full release files (docs/data.md).

Every sample file keeps its source's name and release format, so the task loaders read
tasks/samples exactly as they read the full data directory (layout `<data>/<task dir>/<file>`):

    jsonl      the first N lines, byte for byte
    .lst       the first N label lines (PIQA, WinoGrande), aligned with the cut records
    json       the first N objects of the JSON array, re-serialised as released (indent 4, ASCII escapes)
    .txt.bz2   the first N six-line HellaSwag tasks, re-compressed (bz2 has no timestamp: deterministic)
    .md        copied whole (WinoGrande's release README carries its license)

Stand-ins, for the two splits the full data lacks (named standin_*, each loader lists them last, and
`run.py data check` reports them as "stand-in"): ReCoRD's eval docs are the FewGLUE train queries
after the ones kept as its few-shot pool, and PIQA's few-shot pool is the validation records after
the ones kept as its eval docs. Each is cut from the lines *after* the sample of its source file, so
a stand-in never shares a record with the split it sits beside.

Deterministic: no randomness, the output depends on the input bytes only. Usage:

    python -m study.make_samples --data FULL_DATA --out tasks/samples
"""

from __future__ import annotations

import argparse
import bz2
import json
import re
import sys
from pathlib import Path

from opt66b.fileio import atomic_write_bytes, atomic_write_text, sha256_file

DEFAULT_RECORDS = 40  # per file: enough for 5-shot prompts plus a few dozen docs to evaluate
# Files whose records are large get fewer, to keep the whole bundle well under 1.5 MB.
RECORDS = {
    "multirc/train.jsonl": 4,  # one paragraph per line with ~11 questions x ~5 answers each
    "multirc/val.jsonl": 4,
    "boolq/val.jsonl": 30,
    "hellaswag/hellaswag_train.jsonl.head3368.jsonl": 30,
    "record/fewglue_train.jsonl": 16,  # 32 queries in all: 16 for the few-shot pool, 16 for the stand-in eval
}
# stand-in file -> (source file, records); cut from the source lines after records_for(source)
STANDINS = {
    "record/standin_val_from_fewglue_train.jsonl": ("record/fewglue_train.jsonl", 16),
    "piqa/standin_train_from_valid.jsonl": ("piqa/valid.jsonl", 40),
    "piqa/standin_train_from_valid-labels.lst": ("piqa/valid-labels.lst", 40),
}
STANDIN_ROLE = {
    "record/standin_val_from_fewglue_train.jsonl": "ReCoRD eval docs (the validation split is missing)",
    "piqa/standin_train_from_valid.jsonl": "PIQA few-shot pool (the train split is missing)",
    "piqa/standin_train_from_valid-labels.lst": "labels of the PIQA few-shot stand-in",
}
SKIP = {"SHA256SUMS", "SOURCES.md"}  # index files of the full data; the samples get their own SOURCES.md


def cut_jsonl(data: bytes, n: int, start: int = 0) -> bytes:
    """Non-empty lines start .. start+n-1 (the first n by default; fewer if the file is shorter), byte
    for byte. A stand-in (start > 0) must get all n."""
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    if start and start + n > len(lines):
        raise ValueError(f"asked for lines {start}..{start + n - 1} of a file with {len(lines)} records")
    return b"".join(ln + b"\n" for ln in lines[start:start + n])


def cut_json_array(data: bytes, n: int, where: str) -> bytes:
    records = json.loads(data.decode("utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{where}: expected a JSON array of records, got {type(records).__name__}")
    return json.dumps(records[:n], indent=4).encode("ascii")  # MathQA's release layout, no trailing newline


def cut_hellaswag_bz2(data: bytes, n: int) -> bytes:
    """klosax's dump: 6 lines per task (context, gold, four endings)."""
    lines = bz2.decompress(data).decode("utf-8").split("\n")
    return bz2.compress("".join(ln + "\n" for ln in lines[: 6 * n]).encode("utf-8"), 9)


def cut_file(src: Path, rel: str, n: int) -> bytes:
    data = src.read_bytes()
    if rel.endswith(".jsonl") or rel.endswith(".lst"):
        return cut_jsonl(data, n)
    if rel.endswith(".json"):
        return cut_json_array(data, n, str(src))
    if rel.endswith(".txt.bz2"):
        return cut_hellaswag_bz2(data, n)
    if rel.endswith(".md"):
        return data
    raise ValueError(f"{src}: no rule to cut a {src.suffix} file; add one to study/make_samples.py")


def records_for(rel: str) -> int:
    """Records kept for a file; a label file follows its records file (PIQA, WinoGrande)."""
    base = re.sub(r"-labels\.lst$", ".jsonl", rel)
    return RECORDS.get(base, DEFAULT_RECORDS)


def source_sections(sources_md: str) -> dict[str, str]:
    """SOURCES.md of the full data, split into {"task/file": its bullet list}."""
    out: dict[str, str] = {}
    for block in re.split(r"^### ", sources_md, flags=re.M)[1:]:
        head, _, body = block.partition("\n")
        out[head.strip().strip("`")] = body.strip()
    return out


def make_samples(data: Path, out: Path) -> dict[str, dict[str, int | str]]:
    """Write every sample file and tasks/samples/SOURCES.md; returns {file: {records, bytes, sha256}}."""
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: the full data directory is missing (the directory the samples are cut from)")
    sources_path = data / "SOURCES.md"
    if not sources_path.is_file():
        raise FileNotFoundError(f"{sources_path}: missing; it names the source and license of each file")
    sections = source_sections(sources_path.read_text(encoding="utf-8"))
    made: dict[str, dict[str, int | str]] = {}
    for src in sorted(p for p in data.rglob("*") if p.is_file() and p.name not in SKIP):
        rel = src.relative_to(data).as_posix()
        n = records_for(rel)
        path = atomic_write_bytes(out / rel, cut_file(src, rel, n))
        made[rel] = {"records": n if not rel.endswith(".md") else 0, "bytes": path.stat().st_size,
                     "sha256": sha256_file(path), "source_sha256": sha256_file(src)}
    for rel, (source, n) in STANDINS.items():
        src = data / source
        path = atomic_write_bytes(out / rel, cut_jsonl(src.read_bytes(), n, start=records_for(source)))
        made[rel] = {"records": n, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                     "source_sha256": sha256_file(src), "standin_of": source, "start": records_for(source)}
    path = write_synthetic_copy(out)
    made[path.relative_to(out).as_posix()] = {"records": COPY_DOCS, "bytes": path.stat().st_size,
                                              "sha256": sha256_file(path), "generated": True}
    atomic_write_text(out / "SOURCES.md", sources_text(made, sections))
    return made


def sources_text(made: dict[str, dict[str, int | str]], sections: dict[str, str]) -> str:
    lines = ["# Bundled data samples", "",
             "Small cuts of the real evaluation data, so the whole study runs on a fresh clone",
             "(`python run.py all` with no --data). Each file keeps the name and format of the file it was",
             "cut from in the full data directory (docs/data.md; its SOURCES.md describes the full files);",
             "the loaders read this folder exactly as they read the full data. Regenerate with",
             "`python -m study.make_samples --data FULL_DATA --out tasks/samples` (deterministic).",
             "",
             "How each file was cut: jsonl and .lst label files keep their first N lines byte for byte",
             "(label files stay aligned with their records); MathQA's JSON arrays keep their first N",
             "objects (re-serialised with indent 4, as released); HellaSwag's derived bz2 text dump keeps",
             "its first N six-line tasks, re-compressed. The source, record count and license notes below",
             "are those of the full file the sample was cut from.", "",
             "Two files are STAND-INS, marked below, for splits the full data lacks: ReCoRD's eval docs",
             "(FewGLUE train queries 17-32; queries 1-16 are its few-shot pool) and PIQA's few-shot pool",
             "(validation records 41-80 and their labels; records 1-40 are its eval docs). Each is disjoint",
             "from the split it sits beside; `python run.py data check --data tasks/samples` lists them as",
             "\"stand-in\". Numbers from them are not comparable with the paper's.", "",
             f"Total: {sum(int(m['bytes']) for m in made.values())} bytes in {len(made)} files.", ""]
    for rel, m in made.items():
        if m.get("generated"):
            lines += [f"## `{rel}` (GENERATED, not one of the paper's tasks)", "",
                      f"- the synthetic copy task (tasks/synthetic_copy.py): {m['records']} docs of {COPY_WORDS} "
                      f"distinct single-token words written twice, drawn with random.Random({COPY_SEED}) from the "
                      "OPT merge pool; generated by `study.make_samples` with the bundled tokenizer, no source data",
                      f"- {m['bytes']} bytes, sha256 `{m['sha256']}`", ""]
            continue
        if "standin_of" in m:
            first = int(m["start"]) + 1
            lines += [f"## `{rel}` (STAND-IN)", "",
                      f"- role: {STANDIN_ROLE[rel]}; not the split its loader uses it for",
                      f"- sample: records {first}..{first + int(m['records']) - 1} of full data `{m['standin_of']}` "
                      f"(the sample of that file keeps records 1..{first - 1}, so the two are disjoint), "
                      f"{m['bytes']} bytes, sha256 `{m['sha256']}`",
                      f"- source and license: as `{m['standin_of']}` above", ""]
            continue
        lines += [f"## `{rel}`", "",
                  f"- sample: first {m['records']} records, {m['bytes']} bytes, sha256 `{m['sha256']}`"
                  if m["records"] else f"- sample: whole file, {m['bytes']} bytes, sha256 `{m['sha256']}`",
                  f"- cut from: full data `{rel}` (sha256 `{m['source_sha256']}`)"]
        body = sections.get(rel)
        lines += ["- full file, per the full data's SOURCES.md:", *("  " + ln for ln in body.splitlines())] if body \
            else ["- full file: not described in the full data's SOURCES.md"]
        lines.append("")
    return "\n".join(lines)


COPY_DOCS, COPY_WORDS, COPY_SEED = 40, 10, 0  # the synthetic copy task: docs, words per repeat, seed


def synthetic_copy_docs(tokenizer, n_docs: int = COPY_DOCS, words: int = COPY_WORDS, seed: int = COPY_SEED) -> bytes:
    """copy.jsonl of the synthetic copy task (tasks/synthetic_copy.py): per line {"text": "w1 .. wL w1 .. wL"}.

    Words: merge-pool tokens (study.copy_task.token_pool: the paper's 4% cut at each end) that decode
    to a space and 3+ lowercase letters and encode back to themselves, so the text is the token
    sequence; each doc draws L distinct ones with random.Random(seed)."""
    import random

    from induction.sequences import token_pool

    vocab = [i for i in token_pool(tokenizer)
             if re.fullmatch(r" [a-z]{3,}", text := tokenizer.decode([i])) and tokenizer.encode(text) == [i]]
    rng = random.Random(seed)
    lines = []
    for _ in range(n_docs):
        seq = [tokenizer.decode([i]).strip() for i in rng.sample(vocab, words)]
        lines.append(json.dumps({"text": " ".join(seq + seq)}) + "\n")
    return "".join(lines).encode("utf-8")


def write_synthetic_copy(out: Path) -> Path:
    """Write out/synthetic_copy/copy.jsonl with the bundled OPT tokenizer (deterministic)."""
    from opt66b import load_tokenizer

    root = Path(__file__).resolve().parents[1]
    return atomic_write_bytes(out / "synthetic_copy" / "copy.jsonl",
                              synthetic_copy_docs(load_tokenizer(root / "opt66b" / "assets" / "tiny-opt")))


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=root.parent / "shared" / "data", help="full data directory")
    ap.add_argument("--out", type=Path, default=root / "tasks" / "samples", help="output directory")
    args = ap.parse_args(argv)
    made = make_samples(args.data, args.out)
    total = sum(int(m["bytes"]) for m in made.values())
    print(f"wrote {len(made)} sample files ({total} bytes) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
