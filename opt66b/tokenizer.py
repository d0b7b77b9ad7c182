"""The OPT tokenizer (GPT-2 byte-level BPE with RoBERTa/fairseq ids), built with `tokenizers`.

Reproduces transformers' GPT2Tokenizer as configured for OPT (docs/porting.md):
byte-level pre-tokenizer without prefix space, the BPE model from vocab.json + merges.txt, and the
special tokens of tokenizer_config.json (`</s>` 2 and `<pad>` 1 for OPT) matched atomically in
text; `<s>` and `<unk>` are ordinary text to OPT's tokenizer, as in transformers.

BOS is an explicit choice, never implicit: `encode(text, bos=False)` is what the study's scoring
uses (lm-eval passes add_special_tokens=False); `bos=True` prepends `</s>` (id 2) once, as OPT was
trained and as the induction sequences start.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from .fileio import read_json

SPECIAL_TOKENS = ("</s>", "<pad>")  # what OPT's tokenizer_config.json registers (bos=eos=unk="</s>", pad)
CANARY = ("hello\n\nhello", [42891, 50118, 50118, 42891])  # GPT-2 ids remapped to OPT's, from HF's tokenizer


class OPTTokenizer:
    def __init__(self, tokenizer: Tokenizer, merges_path: Path | None = None):
        self._tok = tokenizer
        self.merges_path = merges_path
        self.bos_id = self._tok.token_to_id("</s>")
        self.eos_id = self.bos_id
        self.pad_id = self._tok.token_to_id("<pad>")
        if self.bos_id is None or self.pad_id is None:
            raise ValueError("tokenizer vocabulary lacks </s> or <pad>; is this an OPT vocab.json?")

    @classmethod
    def from_dir(cls, directory: str | Path) -> "OPTTokenizer":
        """Build from `tokenizer.json` when present, else from `vocab.json` + `merges.txt`."""
        d = Path(directory).expanduser()
        vocab, merges = d / "vocab.json", d / "merges.txt"
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: tokenizer directory not found")
        if (d / "tokenizer.json").is_file():
            try:
                tok = Tokenizer.from_file(str(d / "tokenizer.json"))
            except Exception as err:  # the tokenizers library raises its own exception type
                raise ValueError(f"{d / 'tokenizer.json'}: not a readable tokenizer file ({err}); "
                                 "re-download it") from err
            tok.post_processor = None  # BOS is added explicitly by encode(), never by the template
            return cls(tok, merges if merges.is_file() else None)
        for path in (vocab, merges):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; an OPT tokenizer needs vocab.json and merges.txt "
                                        "(or tokenizer.json) in the checkpoint directory")
        try:
            model = BPE.from_file(str(vocab), str(merges), fuse_unk=False)
        except Exception as err:
            raise ValueError(f"{d}: could not read vocab.json/merges.txt ({err}); re-download them") from err
        for token in SPECIAL_TOKENS:  # added later, a missing one would silently get a new id
            if model.token_to_id(token) is None:
                raise ValueError(f"{vocab}: lacks OPT's special token {token!r} (</s> is id 2, <pad> id 1 in OPT); "
                                 "is this an OPT vocab.json? re-download it")
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special_tokens(d)])
        return cls(tok, merges)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids if text else []
        return [self.bos_id, *ids] if bos else ids

    def encode_batch(self, texts: list[str], bos: bool = False) -> list[list[int]]:
        encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [([self.bos_id] if bos else []) + (e.ids if t else []) for t, e in zip(texts, encs)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self._tok.id_to_token(idx)

    def merge_ranked_ids(self) -> list[int]:
        """Vocabulary ids of the merged tokens in merge-rank order (rank 0 first), i.e. the token each
        line of merges.txt produces. Merge rank is the frequency proxy of the induction token pool."""
        if self.merges_path is None:
            raise ValueError("merge ranks need merges.txt next to the tokenizer")
        ids = []
        with open(self.merges_path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.startswith("#version") or not line.strip():
                    continue
                parts = line.rstrip("\n").split(" ")
                if len(parts) != 2:
                    raise ValueError(f"{self.merges_path}:{n}: expected two tokens separated by one space, "
                                     f"got {line.strip()!r:.60}; re-download merges.txt")
                a, b = parts
                idx = self._tok.token_to_id(a + b)
                if idx is None:
                    raise ValueError(f"{self.merges_path}: merge {line.strip()!r} produces a token missing from vocab.json")
                ids.append(idx)
        return ids

    def check_canary(self) -> None:
        text, want = CANARY
        got = self.encode(text)
        if got != want:
            raise ValueError(f"tokenizer canary failed: {text!r} -> {got}, expected {want}; wrong vocab/merges files?")


def special_tokens(directory: Path) -> list[str]:
    """Special tokens named in tokenizer_config.json (bos/eos/unk/pad), else OPT's defaults."""
    cfg_path = directory / "tokenizer_config.json"
    if not cfg_path.is_file():
        return list(SPECIAL_TOKENS)
    cfg = read_json(cfg_path, "fix or re-download it", want=dict)
    found = []
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = cfg.get(key)
        content = value.get("content") if isinstance(value, dict) else value
        if isinstance(content, str) and content not in found:
            found.append(content)
    return found or list(SPECIAL_TOKENS)


def load_tokenizer(directory: str | Path, check: bool = True) -> OPTTokenizer:
    tok = OPTTokenizer.from_dir(directory)
    if check and tok.vocab_size >= 50265:  # the canary only applies to the full OPT vocabulary
        tok.check_canary()
    return tok
