"""The hostile-input table: small corruptions of the tiny model, the test fixtures and mask files.

Each `Case` names a group, builds its inputs (shared, cached builds under one module temp dir, see
`Kit`) and returns the run.py argv plus the words its one-line error must contain (the culprit:
file, key, record or option). tests/test_hostile.py runs every case in-process and asserts exit 2,
those words, no traceback, and an untouched output directory.
"""

from __future__ import annotations

import bz2
import json
import shutil
import struct
from pathlib import Path
from typing import Any, Callable

import torch

from hostile_kit import (_DROP, FIXTURES, TINY, Case, Kit, Replace, bz2_lines, check, ev, first_key, fixture_bytes,
                         header_edit, index_of, safetensors_bytes, tiny_header, with_config)


# -- the table ----------------------------------------------------------------------------------------
def config_cases() -> list[Case]:
    bad_values = [  # (key, value, words the error must contain)
        ("hidden_size", "128", "must be an integer"), ("hidden_size", 128.0, "must be an integer"),
        ("hidden_size", True, "must be an integer"), ("hidden_size", -1, "out of range"),
        ("hidden_size", 0, "out of range"), ("hidden_size", [128], "must be an integer"),
        ("hidden_size", {"v": 128}, "must be an integer"), ("hidden_size", 1 << 40, "out of range"),
        ("num_hidden_layers", 2.0, "must be an integer"), ("num_hidden_layers", "2", "must be an integer"),
        ("num_hidden_layers", 0, "out of range"), ("num_hidden_layers", -2, "out of range"),
        ("num_attention_heads", "4", "must be an integer"), ("num_attention_heads", 3, "not divisible"),
        ("num_attention_heads", 0, "out of range"), ("ffn_dim", "256", "must be an integer"),
        ("ffn_dim", 256.5, "must be an integer"), ("vocab_size", "50272", "must be an integer"),
        ("vocab_size", 0, "out of range"), ("max_position_embeddings", "2048", "must be an integer"),
        ("max_position_embeddings", -1, "out of range"), ("word_embed_proj_dim", "64", "must be an integer"),
        ("do_layer_norm_before", "false", "JSON boolean"), ("do_layer_norm_before", 0, "JSON boolean"),
        ("do_layer_norm_before", "true", "JSON boolean"), ("_remove_final_layer_norm", "no", "JSON boolean"),
        ("enable_bias", 1, "JSON boolean"), ("layer_norm_elementwise_affine", "yes", "JSON boolean"),
        ("tie_word_embeddings", "true", "JSON boolean"), ("pad_token_id", "1", "must be an integer"),
        ("pad_token_id", -1, "out of range"), ("pad_token_id", 60000, "not below vocab_size"),
        ("bos_token_id", 2.5, "must be an integer"), ("eos_token_id", "2", "must be an integer"),
        ("model_type", "gpt2", "only 'opt'"), ("model_type", 5, "must be a string"),
        ("activation_function", "gelu", "not supported"), ("activation_function", ["relu"], "must be a string"),
        ("hidden_size", _DROP, "missing required keys"), ("num_hidden_layers", _DROP, "missing required keys"),
        ("ffn_dim", None, "missing required keys"),
    ]
    cases = []
    for i, (key, value, words) in enumerate(bad_values):
        def argv(kit, out, key=key, value=value, i=i):
            return ev(out, model=kit.model(f"cfg{i}", config=with_config(**{key: value})))
        cases.append(Case("configs", f"{key}={value!r:.20}" if value is not _DROP else f"no-{key}", argv,
                          ("config.json", key, words)))
    raw_texts = [("not-json", "{", "not valid JSON"), ("empty", "", "not valid JSON"),
                 ("list", "[]", "expected a JSON object"), ("string", '"opt"', "expected a JSON object"),
                 ("null", "null", "expected a JSON object"), ("number", "42", "expected a JSON object"),
                 ("latin1", b'{"model_type": "\xe9"}', "not valid JSON")]
    for name, text, words in raw_texts:
        cases.append(Case("configs", name, lambda kit, out, name=name, text=text:
                          ev(out, model=kit.model(f"cfgraw-{name}", config=text)), ("config.json", words)))
    shape_changes = [("hidden-256", {"hidden_size": 256}, "shape"),
                     ("layers-3", {"num_hidden_layers": 3}, "missing keys"),
                     ("layers-1", {"num_hidden_layers": 1}, "unexpected keys"),
                     ("no-projection", {"word_embed_proj_dim": 128}, "unexpected keys")]
    for name, changes, words in shape_changes:
        cases.append(Case("configs", f"mismatch-{name}", lambda kit, out, name=name, changes=changes:
                          ev(out, model=kit.model(f"cfgmis-{name}", config=with_config(**changes))), (words,)))
    return cases


def checkpoint_cases() -> list[Case]:
    key = first_key()
    edits: list[tuple[str, Callable[[dict], Any], tuple[str, ...]]] = [
        ("header-list", lambda h: Replace([1, 2]), ("model.safetensors", "not an object")),
        ("entry-not-object", lambda h: h.update({key: [0, 1]}), (key, "not an object")),
        ("no-data_offsets", lambda h: h[key].pop("data_offsets"), (key, "lacks 'data_offsets'")),
        ("no-dtype", lambda h: h[key].pop("dtype"), (key, "lacks 'dtype'")),
        ("no-shape", lambda h: h[key].pop("shape"), (key, "lacks 'shape'")),
        ("dtype-unknown", lambda h: h[key].update(dtype="Q99"), (key, "unknown dtype")),
        ("dtype-int", lambda h: h[key].update(dtype=5), (key, "unknown dtype")),
        ("shape-string", lambda h: h[key].update(shape="abc"), (key, "shape")),
        ("shape-negative", lambda h: h[key].update(shape=[-1, 128]), (key, "shape")),
        ("shape-float", lambda h: h[key].update(shape=[2050.0, 128]), (key, "shape")),
        ("offsets-reversed", lambda h: h[key].update(data_offsets=[10, 5]), (key, "data_offsets")),
        ("offsets-strings", lambda h: h[key].update(data_offsets=["0", "524800"]), (key, "data_offsets")),
        ("offsets-one", lambda h: h[key].update(data_offsets=[0]), (key, "data_offsets")),
        ("offsets-past-end", lambda h: h[key].update(data_offsets=[0, 1 << 40]), (key, "truncated")),
        ("offsets-size-mismatch", lambda h: h[key].update(data_offsets=[0, 1000]), (key, "needs")),
        ("metadata-not-strings", lambda h: h.update({"__metadata__": {"format": 1}}), ("__metadata__",)),
        ("int-weights", lambda h: h[key].update(dtype="I16"), (key, "float type")),
        ("renamed-key", lambda h: h.update({"model.decoder.nonsense.weight": h.pop(key)}), ("nonsense",)),
    ]
    cases = [Case("checkpoints", name, lambda kit, out, name=name, edit=edit:
                  ev(out, model=kit.model(f"hdr-{name}", weights=header_edit(edit))), words)
             for name, edit, words in edits]
    header, data = tiny_header()
    raw_files = [("empty", b"", "truncated"), ("four-bytes", b"\x01\x02\x03\x04", "truncated"),
                 ("huge-header-length", struct.pack("<Q", 1 << 50) + b"{}", "header"),
                 ("header-not-json", safetensors_bytes(None, data, b"{not json}"), "corrupt safetensors header"),
                 ("header-not-utf8", safetensors_bytes(None, data, b'{"\xff": 1}'), "corrupt safetensors header"),
                 ("data-truncated", safetensors_bytes(header, data[:len(data) // 2]), "truncated")]
    cases += [Case("checkpoints", name, lambda kit, out, name=name, raw=raw:
                   ev(out, model=kit.model(f"raw-{name}", weights=raw)), ("model.safetensors", words))
              for name, raw, words in raw_files]

    def no_weights(kit, out):
        d = kit.once("model-no-weights", lambda d: (d / "config.json").write_text((TINY / "config.json").read_text()))
        return ev(out, model=d)

    def only_bin(kit, out):
        def build(d):
            (d / "config.json").write_text((TINY / "config.json").read_text())
            (d / "pytorch_model.bin").write_bytes(b"x")
        return ev(out, model=kit.once("model-only-bin", build))

    def no_config(kit, out):
        return ev(out, model=kit.once("model-no-config",
                                      lambda d: (d / "model.safetensors").symlink_to(TINY / "model.safetensors")))

    def model_is_file(kit, out):
        return ev(out, model=TINY / "config.json")

    cases += [Case("checkpoints", "no-weights", no_weights, ("neither model.safetensors",)),
              Case("checkpoints", "only-bin", only_bin, ("run.py convert",)),
              Case("checkpoints", "no-config", no_config, ("config.json",)),
              Case("checkpoints", "model-is-file", model_is_file, ("config.json", "not found")),
              Case("checkpoints", "model-missing", lambda kit, out: ev(out, model=kit.root / "nope"), ("nope", "not found")),
              Case("checkpoints", "nan-weights", lambda kit, out: ev(out, model=kit.nan_model()),
                   ("model.safetensors", "layers.0.self_attn.q_proj.weight", "1 NaN", "re-download"))]
    cases += nonfinite_and_streaming_cases()
    index_cases: list[tuple[str, Any, tuple[str, ...]]] = [
        ("not-json", "{", ("model.safetensors.index.json", "not valid JSON")),
        ("a-list", "[]", ("model.safetensors.index.json", "expected a JSON object")),
        ("weight_map-list", {"weight_map": ["model.safetensors"]}, ("weight_map",)),
        ("weight_map-empty", {"weight_map": {}}, ("weight_map",)),
        ("value-int", index_of(lambda k: 3), ("maps to int",)),
        ("value-null", index_of(lambda k: None), ("maps to NoneType",)),
        ("value-list", index_of(lambda k: ["model.safetensors"]), ("maps to list",)),
        ("absolute-path", index_of(lambda k: str(TINY / "model.safetensors")), ("must be relative",)),
        ("dotdot", index_of(lambda k: "../../elsewhere/x.safetensors"), ("without '..'",)),
        ("dotdot-inside", index_of(lambda k: "sub/../../model.safetensors"), ("without '..'",)),
        ("empty-name", index_of(lambda k: ""), ("must be relative",)),
        ("missing-shard", index_of(lambda k: "model-00001-of-00002.safetensors"), ("does not exist",)),
    ]
    for name, index, words in index_cases:
        cases.append(Case("checkpoints", f"index-{name}", lambda kit, out, name=name, index=index:
                          ev(out, model=kit.model(f"idx-{name}", index=index)), words))

    def link_escape(kit, out):
        outside = kit.once("outside", lambda d: shutil.copyfile(TINY / "model.safetensors", d / "x.safetensors"))
        return ev(out, model=kit.model("idx-link", index=index_of(lambda k: "shard.safetensors"),
                                       extra=lambda d: (d / "shard.safetensors").symlink_to(outside / "x.safetensors")))

    def key_not_in_shard(kit, out):
        def extra(d):
            from safetensors.torch import save
            (d / "other.safetensors").write_bytes(save({"x": torch.zeros(1)}))
            (d / "model.safetensors").unlink()  # a copy: a link out of the directory is refused
            shutil.copyfile(TINY / "model.safetensors", d / "model.safetensors")
        return ev(out, model=kit.model("idx-wrong-shard", index=index_of(
            lambda k: "other.safetensors" if k == first_key() else "model.safetensors"), extra=extra))

    cases += [Case("checkpoints", "index-symlink-escape", link_escape, ("shard.safetensors", "outside")),
              Case("checkpoints", "index-key-not-in-shard", key_not_in_shard, ("other.safetensors", "no such tensor"))]
    return cases


def conversion_cases() -> list[Case]:
    def src(kit: Kit, name: str, files: dict[str, Any]) -> Path:
        def build(d: Path) -> None:
            (d / "config.json").write_text((TINY / "config.json").read_text())
            for f, content in files.items():
                if isinstance(content, bytes):
                    (d / f).write_bytes(content)
                elif isinstance(content, str):
                    (d / f).write_text(content)
                elif content is None:
                    (d / f).unlink()
                else:
                    torch.save(content, d / f)
        return kit.once("bin-" + name, build)

    def conv(name, files, words, dst=None):
        def argv(kit, out):
            return ["convert", str(src(kit, name, files)), "--out", str(dst(out) if dst else out)]
        return Case("conversion", name, argv, words)

    good = {"pytorch_model.bin": {"model.decoder.embed_tokens.weight": torch.zeros(2, 2)}}
    return [
        Case("conversion", "src-missing", lambda kit, out: ["convert", str(kit.root / "nope"), "--out", str(out)], ("nope", "not found")),
        Case("conversion", "src-is-file", lambda kit, out: ["convert", str(TINY / "config.json"), "--out", str(out)], ("config.json", "not found")),
        conv("no-config", {"config.json": None, **good}, ("config.json", "missing")),
        conv("bad-config", {"config.json": json.dumps(with_config(hidden_size="128")), **good}, ("config.json", "hidden_size")),
        conv("no-bin", {}, ("pytorch_model.bin", "neither")),
        conv("bin-garbage", {"pytorch_model.bin": b"not a checkpoint"}, ("pytorch_model.bin", "weights-only")),
        conv("bin-holds-int", {"pytorch_model.bin": {"w": 3}}, ("pytorch_model.bin", "'w'", "not a tensor")),
        conv("bin-holds-list", {"pytorch_model.bin": [torch.zeros(1)]}, ("pytorch_model.bin", "state dict")),
        conv("index-not-json", {"pytorch_model.bin.index.json": "{"}, ("pytorch_model.bin.index.json",)),
        conv("index-no-map", {"pytorch_model.bin.index.json": "{}"}, ("pytorch_model.bin.index.json", "weight_map")),
        conv("index-map-list", {"pytorch_model.bin.index.json": '{"weight_map": []}'}, ("weight_map",)),
        conv("index-missing-shard", {"pytorch_model.bin.index.json": json.dumps({"weight_map": {"a": "p-1.bin"}})},
             ("p-1.bin", "missing")),
        conv("index-dotdot", {"pytorch_model.bin.index.json": json.dumps({"weight_map": {"a": "../x.bin"}})},
             ("../x.bin", "without '..'")),
        conv("index-absolute", {"pytorch_model.bin.index.json": json.dumps({"weight_map": {"a": "/etc/passwd"}})},
             ("/etc/passwd", "must be relative")),
        conv("index-value-int", {"pytorch_model.bin.index.json": json.dumps({"weight_map": {"a": 1}})}, ("'a'", "int")),
        conv("dst-is-file", good, ("--out", "not a directory"), dst=lambda out: out.parent / "file"),
    ]


def nonfinite_and_streaming_cases() -> list[Case]:
    """NaN weights named (file, tensor) by every model step, before it writes anything; a weight that
    overflows the compute dtype; NaN met in a streamed layer (diagnosed by scanning the shards);
    the mmap loader's shape checks."""
    model_steps = {
        "importance-heads": ["importance", "heads", "--data", str(FIXTURES), "--tasks", "copa", "--shots", "0", "--n-docs", "1"],
        "importance-ffn": ["importance", "ffn", "--data", str(FIXTURES), "--tasks", "copa", "--shots", "0", "--limit", "1"],
        "induction-prefix": ["induction", "prefix", "--seeds", "1"],
        "induction-copying": ["induction", "copying", "--seeds", "1"],
        "copytask": ["copytask", "--seeds", "1"],
        "all": ["all", "--tasks", "copa", "--shots", "0", "--limit", "1", "--n-docs", "1", "--seeds", "1"],
    }
    named = ("model.safetensors", "layers.0.self_attn.q_proj.weight", "NaN")
    cases = [Case("checkpoints", f"nan-weights-{name}", lambda kit, out, argv=argv:
                  [*argv, "--model", str(kit.nan_model()), "--out", str(out)], named)
             for name, argv in model_steps.items()]

    def big(t: torch.Tensor) -> torch.Tensor:
        t[0, 0] = 1e6  # finite in float32, inf in float16
        return t

    def wrong_shape(t: torch.Tensor) -> torch.Tensor:
        return t[:-1].clone()

    cases += [
        Case("checkpoints", "float16-overflow-weight", lambda kit, out: ev(
            out, "--dtype", "float16", model=kit.edited_model("big", "layers.1.fc2.weight", big)),
             ("layers.1.fc2.weight", "inf", "float16", "--dtype float32")),
        Case("checkpoints", "nan-weights-streamed", lambda kit, out: ev(out, "--offload", "mmap", model=kit.nan_model()),
             ("copa", "log-likelihood nan", "cause", "model.safetensors", "layers.0.self_attn.q_proj.weight")),
        Case("checkpoints", "mmap-wrong-shape", lambda kit, out: ev(
            out, "--offload", "mmap", model=kit.edited_model("short-fc1", "layers.1.fc1.bias", wrong_shape)),
             ("model.safetensors", "layers.1.fc1.bias", "shape")),
        Case("checkpoints", "mmap-config-mismatch", lambda kit, out: ev(
            out, "--offload", "mmap", model=kit.model("cfgmis-hidden-256", config=with_config(hidden_size=256))),
             ("shape", "config.json")),
    ]
    return cases


def data_cases() -> list[Case]:
    """Corrupt data files, through `eval` (model loaded, then the data read) and `data check`."""
    copa = fixture_bytes("copa", "val.jsonl")
    lines = copa.decode().splitlines()
    hs = bz2.decompress(fixture_bytes("hellaswag", "hellaswag_val_full.txt.bz2")).decode().split("\n")
    corruptions = [  # (name, task, {file: new bytes}, words)
        ("copa-malformed-json", "copa", {"val.jsonl": (lines[0] + "\n{oops\n").encode()}, ("val.jsonl:2", "malformed JSON")),
        ("copa-list-line", "copa", {"val.jsonl": b"[1, 2]\n"}, ("val.jsonl:1", "expected a JSON object")),
        ("copa-invalid-utf8", "copa", {"val.jsonl": copa[:40] + b"\xff\xfe" + copa[40:]}, ("val.jsonl:1", "invalid UTF-8")),
        ("copa-missing-field", "copa", {"val.jsonl": json.dumps({"choice1": "a"}).encode()}, ("val.jsonl:1", "missing field")),
        ("copa-label-out-of-range", "copa",
         {"val.jsonl": json.dumps({**json.loads(lines[0]), "label": 7}).encode()}, ("val.jsonl:1", "label")),
        ("copa-val-missing", "copa", {"val.jsonl": None}, ("copa", "validation")),
        ("hellaswag-bz2-garbage", "hellaswag", {"hellaswag_val_full.txt.bz2": b"BZh91AY&SYgarbage" * 10},
         ("hellaswag_val_full.txt.bz2", "bz2")),
        ("hellaswag-bz2-truncated", "hellaswag",
         {"hellaswag_val_full.txt.bz2": fixture_bytes("hellaswag", "hellaswag_val_full.txt.bz2")[:100]},
         ("hellaswag_val_full.txt.bz2", "bz2")),
        ("hellaswag-bz2-latin1", "hellaswag", {"hellaswag_val_full.txt.bz2": bz2.compress("\n".join(hs).encode("latin-1", "replace") + b"\xe9")},
         ("hellaswag_val_full.txt.bz2", "invalid UTF-8")),
        ("hellaswag-not-6-lines", "hellaswag", {"hellaswag_val_full.txt.bz2": bz2_lines(hs[:7])}, ("not a multiple of 6",)),
        ("hellaswag-bad-label", "hellaswag", {"hellaswag_val_full.txt.bz2": bz2_lines([hs[0], "9", *hs[2:6]])},
         ("hellaswag_val_full.txt.bz2:2", "gold label")),
        ("mathqa-not-array", "mathqa", {"test.json": b'{"a": 1}'}, ("test.json", "JSON array")),
        ("mathqa-record-not-object", "mathqa", {"test.json": b"[1]"}, ("test.json", "record 0")),
        ("mathqa-malformed", "mathqa", {"test.json": b"[{"}, ("test.json", "malformed JSON")),
        ("mathqa-invalid-utf8", "mathqa", {"test.json": b'[{"Problem": "\xff"}]'}, ("test.json", "invalid UTF-8")),
        ("piqa-label-count", "piqa", {"valid-labels.lst": b"0\n1\n"}, ("valid-labels.lst", "labels for")),
        ("piqa-labels-utf8", "piqa", {"valid-labels.lst": b"\xff\n"}, ("valid-labels.lst", "invalid UTF-8")),
        ("piqa-labels-missing", "piqa", {"valid-labels.lst": None}, ("valid-labels.lst", "not found")),
    ]
    cases = []
    for name, task, files, words in corruptions:
        if name != "copa-val-missing":  # a missing split is a finding of `data check`, not a failure
            cases.append(Case("data check", name, lambda kit, out, name=name, task=task, files=files:
                              check(kit.data(name, task, files), task), words))
        cases.append(Case("data", name, lambda kit, out, name=name, task=task, files=files:
                          ev(out, data=kit.data(name, task, files), tasks=(task,)), words))
    cases += [
        Case("data", "data-dir-missing", lambda kit, out: ev(out, data=kit.root / "nope"), ("--data", "nope")),
        Case("data", "data-dir-is-file", lambda kit, out: ev(out, data=TINY / "config.json"), ("--data", "config.json")),
        Case("data", "unknown-task", lambda kit, out: ev(out, tasks=("copa", "nosuchtask")), ("nosuchtask",)),
        Case("data check", "data-dir-missing", lambda kit, out: check(kit.root / "nope"), ("nope", "not found")),
        Case("data check", "unknown-task", lambda kit, out: check(FIXTURES, "nosuchtask"), ("nosuchtask",)),
        Case("data check", "sha256-differs", lambda kit, out: check(kit.once(
            "data-sums", lambda d: (shutil.copytree(FIXTURES / "copa", d / "copa"),
                                    (d / "SHA256SUMS").write_text("0" * 64 + "  copa/val.jsonl\n"))), "copa"),
             ("copa/val.jsonl", "sha256 differs")),
        Case("data check", "json-is-dir", lambda kit, out: [*check(FIXTURES, "copa"), "--json", str(out.parent)],
             ("--json", "is a directory")),
        Case("data check", "json-under-file", lambda kit, out: [*check(FIXTURES, "copa"), "--json",
                                                               str(out.parent / "file" / "r.json")], ("--json", "file")),
    ]
    return cases


def mask_cases() -> list[Case]:
    L, H = 2, 4  # the tiny model's layers and heads
    ones = torch.ones(L, H)

    def head(value, at=(0, 1)):
        t = ones.clone()
        t[at] = value
        return {"head_mask": t}

    masks: list[tuple[str, str, dict | bytes, tuple[str, ...], tuple[str, ...]]] = [
        # (name, flag, tensors or raw bytes, extra options, words)
        ("minus-one", "--head-mask", head(-1.0), (), ("head_mask", "[0, 1]", "= -1.0")),
        ("half", "--head-mask", head(0.5), (), ("head_mask", "--soft-masks")),
        ("two", "--head-mask", head(2.0), (), ("head_mask", "= 2.0")),
        ("two-even-soft", "--head-mask", head(2.0), ("--soft-masks",), ("head_mask", "outside [0, 1]")),
        ("minus-soft", "--head-mask", head(-0.1), ("--soft-masks",), ("head_mask", "outside [0, 1]")),
        ("nan", "--head-mask", head(float("nan")), (), ("head_mask", "nan")),
        ("inf", "--head-mask", head(float("inf")), (), ("head_mask", "inf")),
        ("nan-soft", "--head-mask", head(float("nan")), ("--soft-masks",), ("head_mask", "nan")),
        ("int-two", "--head-mask", {"head_mask": torch.full((L, H), 2, dtype=torch.int32)}, (), ("head_mask", "= 2.0")),
        ("wrong-shape", "--head-mask", {"head_mask": torch.ones(3, 4)}, (), ("head_mask", "shape", "another model")),
        ("one-dim", "--head-mask", {"head_mask": torch.ones(8)}, (), ("head_mask", "shape")),
        ("three-dim", "--head-mask", {"head_mask": torch.ones(2, 4, 1)}, (), ("head_mask", "shape")),
        ("unknown-key", "--head-mask", {"heads": ones}, (), ("mask.safetensors", "found keys")),
        ("empty-file-of-tensors", "--head-mask", {}, (), ("mask.safetensors", "found keys")),
        ("ffn-as-head", "--head-mask", {"ffn_mask": torch.ones(L)}, (), ("mask.safetensors", "no 'head_mask'")),
        ("ffn-half", "--ffn-mask", {"ffn_mask": torch.tensor([1.0, 0.5])}, (), ("ffn_mask", "--soft-masks")),
        ("ffn-two", "--ffn-mask", {"ffn_mask": torch.tensor([1.0, 2.0])}, (), ("ffn_mask", "= 2.0")),
        ("ffn-wrong-length", "--ffn-mask", {"ffn_mask": torch.ones(3)}, (), ("ffn_mask", "shape")),
        ("head-as-ffn", "--ffn-mask", {"head_mask": ones}, (), ("mask.safetensors", "no 'ffn_mask'")),
        ("garbage", "--head-mask", b"this is not safetensors at all", (), ("mask.safetensors", "safetensors")),
        ("empty-bytes", "--head-mask", b"", (), ("mask.safetensors", "safetensors")),
        ("truncated", "--head-mask", None, (), ("mask.safetensors", "safetensors")),
    ]
    cases = []
    for name, flag, content, extra, words in masks:
        def argv(kit, out, name=name, flag=flag, content=content, extra=extra):
            if content is None:  # a real mask file cut in half
                from safetensors.torch import save
                content = save({"head_mask": ones})[:60]
            path = kit.mask(name, raw=content) if isinstance(content, bytes) else kit.mask(name, tensors=content)
            return ev(out, flag, path, *extra)
        cases.append(Case("masks", name, argv, words))
    cases += [
        Case("masks", "missing", lambda kit, out: ev(out, "--head-mask", kit.root / "nope.safetensors"), ("--head-mask", "not found")),
        Case("masks", "a-directory", lambda kit, out: ev(out, "--head-mask", kit.root), ("--head-mask", "not found")),
    ]
    return cases


def all_cases() -> list[Case]:
    from hostile_cli_cases import option_cases, output_cases, resume_cases, study_cases, tokenizer_cases

    return (config_cases() + checkpoint_cases() + conversion_cases() + data_cases() + mask_cases() + option_cases()
            + output_cases() + resume_cases() + study_cases() + tokenizer_cases())
