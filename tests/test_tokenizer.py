"""The OPT tokenizer (opt66b/tokenizer.py) against transformers' GPT2Tokenizer on the real OPT files
(when present) for a few hundred strings taken from the full data, plus edge cases:
leading spaces, newlines, unicode, empty strings and special-token text. BOS (`</s>`, id 2) is
prepended only when asked, as transformers does with add_special_tokens=True for OPT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, SHARED_TOKENIZER, needs_shared_data, needs_shared_tokenizer

from opt66b import load_tokenizer

EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n", " \n ", "\t", "hello\n\nhello", " hello", "  hello", "hello ", "Hello World",
    "Question: Is it? Answer: yes", " yes", " no", "naïve café", "日本語のテキスト", "emoji 😀 test", "Ünïcödé  ",
    "</s>", " </s>", "a</s>b", "</s></s>", "<pad>", "x<pad>y", "<s>", "<unk>", "<mask>", "\u00a0nbsp", "tab\tsep",
    "line1\r\nline2", "1234567890", "3.14159", "$100,000", "don't won't", "A" * 300, "the the the the",
]
RECORDS_PER_FILE = 6
STRINGS_PER_RECORD = 4


def _string_leaves(obj, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _string_leaves(value, out)
    elif isinstance(obj, list):
        for value in obj:
            _string_leaves(value, out)


def dataset_strings(root: Path = SHARED_DATA) -> list[str]:
    """Deterministic sample: the first string fields of the first records of every .jsonl / .json
    file, each also with a leading space and joined with newlines (the few-shot prompt shapes)."""
    texts: list[str] = []
    for path in sorted(root.rglob("*.json*")):
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                records = [json.loads(line) for _, line in zip(range(RECORDS_PER_FILE), f) if line.strip()]
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            records = data[:RECORDS_PER_FILE] if isinstance(data, list) else [data]
        else:
            continue
        for record in records:
            leaves: list[str] = []
            _string_leaves(record, leaves)
            leaves = [s for s in leaves if len(s) < 3000][:STRINGS_PER_RECORD]
            texts += leaves + [" " + s for s in leaves[:1]] + ["\n\n".join(leaves)]
    return texts


@pytest.fixture(scope="module")
def both():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2Tokenizer.from_pretrained(str(SHARED_TOKENIZER))
    return load_tokenizer(SHARED_TOKENIZER), hf


@needs_shared_tokenizer
@needs_shared_data
def test_ids_equal_transformers_on_dataset_strings(both):
    ours, hf = both
    texts = dataset_strings()
    assert len(texts) >= 300, f"only {len(texts)} strings found under {SHARED_DATA}"
    mismatches = []
    for text in texts:
        want = hf(text, add_special_tokens=False)["input_ids"]
        if ours.encode(text) != want:
            mismatches.append(text[:60])
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]}"
    batch = ours.encode_batch(texts[:50])
    assert batch == [hf(t, add_special_tokens=False)["input_ids"] for t in texts[:50]]


@needs_shared_tokenizer
@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_with_and_without_bos(both, text):
    ours, hf = both
    assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
    with_bos = hf(text)["input_ids"]  # OPT's tokenizer_config sets add_bos_token: `</s>` first
    assert with_bos[0] == 2
    assert ours.encode(text, bos=True) == with_bos


@needs_shared_tokenizer
def test_hand_checked_ids_and_decode():
    tok = load_tokenizer(SHARED_TOKENIZER)
    assert tok.encode("hello\n\nhello") == [42891, 50118, 50118, 42891]  # the canary, from HF's tokenizer
    assert tok.encode("") == [] and tok.encode("", bos=True) == [2]
    assert tok.encode("a</s>b")[1] == 2  # special-token text is matched atomically
    text = " naïve café\n日本"
    assert tok.decode(tok.encode(text)) == text


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_tokenizer(tmp_path)
