"""OPT model configuration: a plain dataclass, the exact-name size table, and an HF config.json reader.

Reference: transformers' `OPTConfig` (configuration_opt.py) and the per-size values of the official
facebook/opt-* configs (docs/porting.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class OPTConfig:
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    vocab_size: int = 50272  # the tokenizer has 50265 entries; metaseq padded the table to a multiple of 8
    max_positions: int = 2048  # the position table has max_positions + 2 rows (offset 2, see model.py)
    word_embed_proj_dim: int | None = None  # None means hidden_size; 350m uses 512 with project_in/out
    do_layer_norm_before: bool = True  # False only for 350m (post-LN, and no decoder.final_layer_norm)
    remove_final_layer_norm: bool = False  # old fine-tunes saved before transformers 4.20.1
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    layer_norm_eps: float = 1e-5  # never in OPT configs; nn.LayerNorm's default, as HF uses
    tie_word_embeddings: bool = True
    pad_token_id: int = 1
    bos_token_id: int = 2
    eos_token_id: int = 2
    tokenizer_vocab_size: int = 50265  # real token ids; rows 50265..50271 of the embedding are padding
    # Physically pruned checkpoints (export.py). Head ids keep the ORIGINAL numbering 0..num_heads-1:
    # num_heads stays the unpruned count, masks and scores stay (layers, num_heads), and a removed
    # head reads as absent (zero output). layer -> removed head ids; layers whose FFN is removed.
    pruned_heads: dict[int, tuple[int, ...]] = field(default_factory=dict)
    pruned_ffn: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.word_embed_proj_dim is None:
            self.word_embed_proj_dim = self.hidden_size
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        for name in ("hidden_size", "num_layers", "num_heads", "ffn_dim", "vocab_size", "max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"OPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.tokenizer_vocab_size > self.vocab_size:
            self.tokenizer_vocab_size = self.vocab_size
        self.pruned_heads = {int(layer): tuple(sorted({int(h) for h in heads}))
                             for layer, heads in sorted(self.pruned_heads.items(), key=lambda kv: int(kv[0])) if heads}
        self.pruned_ffn = tuple(sorted({int(layer) for layer in self.pruned_ffn}))
        for layer, heads in self.pruned_heads.items():
            if not 0 <= layer < self.num_layers or not all(0 <= h < self.num_heads for h in heads):
                raise ValueError(f"pruned_heads {{{layer}: {list(heads)}}} is outside the model's "
                                 f"{self.num_layers} layers x {self.num_heads} heads")
        if any(not 0 <= layer < self.num_layers for layer in self.pruned_ffn):
            raise ValueError(f"{PRUNED_FFN_KEY} {list(self.pruned_ffn)} names layers outside 0..{self.num_layers - 1}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def has_projection(self) -> bool:
        return self.word_embed_proj_dim != self.hidden_size

    @property
    def has_final_layer_norm(self) -> bool:
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    def kept_heads(self, layer: int) -> list[int]:
        """Original ids of the heads layer `layer` still has (all of 0..num_heads-1 unless pruned)."""
        removed = set(self.pruned_heads.get(layer, ()))
        return [h for h in range(self.num_heads) if h not in removed]

    def has_ffn(self, layer: int) -> bool:
        return layer not in self.pruned_ffn

    @property
    def is_pruned(self) -> bool:
        return bool(self.pruned_heads or self.pruned_ffn)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json transformers' OPTConfig reads (used when we write tiny checkpoints)."""
        return {
            "model_type": "opt",
            "architectures": ["OPTForCausalLM"],
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "ffn_dim": self.ffn_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_positions,
            "word_embed_proj_dim": self.word_embed_proj_dim,
            "do_layer_norm_before": self.do_layer_norm_before,
            "_remove_final_layer_norm": self.remove_final_layer_norm,
            "enable_bias": self.enable_bias,
            "layer_norm_elementwise_affine": self.layer_norm_elementwise_affine,
            "tie_word_embeddings": self.tie_word_embeddings,
            "activation_function": "relu",
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "layerdrop": 0.0,
            **self.pruned_hf_dict(),
        }

    def pruned_hf_dict(self) -> dict[str, Any]:
        """What was physically removed, as config.json records it: transformers' `pruned_heads`
        convention ({"layer": [heads]}, string keys as json writes them) plus the removed FFNs."""
        out: dict[str, Any] = {}
        if self.pruned_heads:
            out[PRUNED_HEADS_KEY] = {str(layer): list(heads) for layer, heads in self.pruned_heads.items()}
        if self.pruned_ffn:
            out[PRUNED_FFN_KEY] = list(self.pruned_ffn)
        return out


PRUNED_HEADS_KEY = "pruned_heads"  # transformers' PretrainedConfig name and layout
PRUNED_FFN_KEY = "opt66b_pruned_ffn"  # no transformers equivalent: our own, prefixed so it cannot clash


# Exact-name size table (the Hub's facebook/opt-* config.json values). Looked up by exact name only.
OPT_CONFIGS: dict[str, dict[str, Any]] = {
    "opt-125m": dict(hidden_size=768, num_layers=12, num_heads=12, ffn_dim=3072),
    "opt-350m": dict(hidden_size=1024, num_layers=24, num_heads=16, ffn_dim=4096,
                     word_embed_proj_dim=512, do_layer_norm_before=False),
    "opt-1.3b": dict(hidden_size=2048, num_layers=24, num_heads=32, ffn_dim=8192),
    "opt-2.7b": dict(hidden_size=2560, num_layers=32, num_heads=32, ffn_dim=10240),  # head_dim 80
    "opt-6.7b": dict(hidden_size=4096, num_layers=32, num_heads=32, ffn_dim=16384),
    "opt-13b": dict(hidden_size=5120, num_layers=40, num_heads=40, ffn_dim=20480),
    "opt-30b": dict(hidden_size=7168, num_layers=48, num_heads=56, ffn_dim=28672),
    "opt-66b": dict(hidden_size=9216, num_layers=64, num_heads=72, ffn_dim=36864),
}


def config_for_size(name: str) -> OPTConfig:
    """OPTConfig of an official size; `name` is e.g. "opt-66b" (the "facebook/" prefix is accepted)."""
    key = name.removeprefix("facebook/")
    if key not in OPT_CONFIGS:
        raise KeyError(f"unknown OPT size {name!r}; valid names: {', '.join(OPT_CONFIGS)}")
    return OPTConfig(**OPT_CONFIGS[key])


# HF config.json key -> OPTConfig field. Keys in _HF_IGNORED are known and have no effect at eval time.
_HF_KEYS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "ffn_dim": "ffn_dim",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_positions",
    "word_embed_proj_dim": "word_embed_proj_dim",
    "do_layer_norm_before": "do_layer_norm_before",
    "_remove_final_layer_norm": "remove_final_layer_norm",
    "enable_bias": "enable_bias",
    "layer_norm_elementwise_affine": "layer_norm_elementwise_affine",
    "tie_word_embeddings": "tie_word_embeddings",
    "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
}
_HF_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim")


# Types of the config.json values this reader uses (HF key -> JSON type); anything else is an error
# naming the key. Booleans must be JSON booleans: the string "false" is truthy in Python and would
# silently select the other architecture.
_HF_INT_POSITIVE = ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim", "vocab_size",
                    "max_position_embeddings", "word_embed_proj_dim")
_HF_INT_TOKEN = ("pad_token_id", "bos_token_id", "eos_token_id")
_HF_BOOL = ("do_layer_norm_before", "_remove_final_layer_norm", "enable_bias", "layer_norm_elementwise_affine",
            "tie_word_embeddings")
_MAX_DIM = 1 << 24  # far above any OPT (66b: hidden 9216, ffn 36864, vocab 50272); catches byte garbage


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def check_hf_config(raw: Any, where: str) -> None:
    """Types and ranges of every config.json value the reader uses; ValueError naming the key."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object of config keys, got {_json_type(raw)}; "
                         "is this an HF config.json?")
    for key in ("model_type", "activation_function"):
        if key in raw and not isinstance(raw[key], str):
            raise ValueError(f"{where}: '{key}' must be a string, got {_json_type(raw[key])} {raw[key]!r:.40}")
    for key in _HF_INT_POSITIVE + _HF_INT_TOKEN:
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: '{key}' must be an integer, got {_json_type(value)} {value!r:.40}; "
                             f"write it as a bare number, e.g. \"{key}\": {_example(value)}")
        low = 1 if key in _HF_INT_POSITIVE else 0
        if not low <= value <= _MAX_DIM:
            raise ValueError(f"{where}: '{key}' = {value} is out of range [{low}, {_MAX_DIM}]")
    for key in _HF_BOOL:
        value = raw.get(key)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{where}: '{key}' must be a JSON boolean (true or false), got {_json_type(value)} "
                             f"{value!r:.40}")
    vocab = raw.get("vocab_size")
    for key in _HF_INT_TOKEN:
        if isinstance(vocab, int) and isinstance(raw.get(key), int) and raw[key] >= vocab:
            raise ValueError(f"{where}: '{key}' = {raw[key]} is not below vocab_size {vocab}")
    hidden, heads = raw.get("hidden_size"), raw.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and hidden % heads:
        raise ValueError(f"{where}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")


def _example(value: Any) -> str:
    try:
        return str(int(float(value)))
    except (TypeError, ValueError):
        return "128"


def config_from_hf(source: str | Path | dict[str, Any]) -> OPTConfig:
    """Read an HF OPT config.json (a path, a checkpoint directory or an already-parsed dict).

    Missing optional keys take transformers' defaults; wrongly typed or out-of-range values and
    values this decoder does not implement (another model type, another activation) are a
    ValueError naming the file and key.
    """
    where = "config dict"
    if not isinstance(source, dict):
        path = Path(source)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no config.json; a checkpoint directory needs one (HF OPT format)")
        where = str(path)
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err}); fix or re-download it") from err
    raw = source
    check_hf_config(raw, where)
    if raw.get("model_type", "opt") != "opt":
        raise ValueError(f"{where}: model_type is {raw['model_type']!r}, only 'opt' is supported")
    act = raw.get("activation_function", "relu")
    if act != "relu":
        raise ValueError(f"{where}: activation_function {act!r} is not supported (OPT uses 'relu')")
    missing = [k for k in _HF_REQUIRED if raw.get(k) is None]
    if missing:
        raise ValueError(f"{where}: missing required keys {missing}")
    kwargs = {ours: raw[theirs] for theirs, ours in _HF_KEYS.items() if theirs in raw and raw[theirs] is not None}
    kwargs.update(_pruned_from_hf(raw, where))
    return OPTConfig(**kwargs)


def _pruned_from_hf(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """OPTConfig's pruned_heads / pruned_ffn from config.json's `pruned_heads` and `opt66b_pruned_ffn`."""
    out: dict[str, Any] = {}
    heads = raw.get(PRUNED_HEADS_KEY) or {}
    ok = isinstance(heads, dict) and all(str(k).isdigit() and isinstance(v, list) and
                                         all(isinstance(h, int) and not isinstance(h, bool) for h in v)
                                         for k, v in heads.items())
    if not ok:
        raise ValueError(f'{where}: {PRUNED_HEADS_KEY} must map layer ids to lists of head ids, e.g. {{"3": [0, 5]}}')
    if heads:
        out["pruned_heads"] = {int(k): v for k, v in heads.items()}
    ffn = raw.get(PRUNED_FFN_KEY) or []
    if not isinstance(ffn, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ffn):
        raise ValueError(f"{where}: {PRUNED_FFN_KEY} must be a list of layer ids, e.g. [2, 7]")
    if ffn:
        out["pruned_ffn"] = ffn
    return out


def config_field_names() -> list[str]:
    return [f.name for f in fields(OPTConfig)]
