#!/usr/bin/env python3
"""Regenerate the golden parity files of tests/test_golden.py with transformers' OPTForCausalLM.

Run once (needs transformers; the outputs are committed):  python tests/golden/make_golden.py

For each tiny config it writes tests/golden/<name>/ (config.json + model.safetensors as
`save_pretrained` writes them, a few KB each) and tests/golden/<name>/reference.safetensors with
    input_ids (B, T) int64, left-padded with id 1;  attention_mask (B, T) int64
    head_mask (L, H), ffn_mask (L,) float32 (values 0, 0.5, 1)
    logits (B, T, V), logits_masked (B, T, V) float32: HF logits without / with the masks
        (head mask applied on out_proj's input columns, FFN block scaled at fc2's output)
    heads.{l} (B, H, T, Dh): out_proj's input in HF, per head (the paper's context_layer_val)
    probs.{l} (B, H, T, S): HF eager attention probabilities
Padded positions hold whatever HF computed there; the test reads real positions only.

`python tests/golden/make_golden.py --extra` adds tests/golden/<name>/extra.safetensors, cases the
reference file cannot tell a wrong port from a right one with (same model and batch):
    ffn_mask_fractional (L,), logits_ffn_fractional: layer 0's FFN block scaled by 0.5 (fc2's weight and bias)
    small_scale (), logits_small: embed_tokens, embed_positions and every parameter of layer 0's
        self_attn (q, k, v, out_proj: weights and biases) multiplied by small_scale (1e-3), so the
        first layer norm's input (pre-LN: the embeddings; post-LN: embeddings + attention) has a
        variance far below eps and eps decides the result (the logits are small too, the output head
        being the tied embedding: compare relatively)
    kv_split (), logits_continuation (B, T - kv_split, V): HF's logits of the last columns fed on
        the cache (past_key_values) of the first kv_split columns, the whole mask given
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from opt66b import OPTConfig  # noqa: E402
from opt66b.runs.results import write_tensors  # noqa: E402

SEED = 20230701
CONFIGS = {
    "pre_ln": OPTConfig(hidden_size=16, num_layers=2, num_heads=4, ffn_dim=32, vocab_size=64, max_positions=16),
    "post_ln_350m": OPTConfig(hidden_size=16, num_layers=2, num_heads=2, ffn_dim=24, vocab_size=64,
                              max_positions=16, word_embed_proj_dim=8, do_layer_norm_before=False),
}


def build(name: str, cfg: OPTConfig, seed: int) -> None:
    import transformers

    gen = torch.Generator().manual_seed(seed)
    hc = transformers.OPTConfig(**cfg.to_hf_dict())
    hc._attn_implementation = "eager"  # output_attentions needs the eager path
    model = transformers.OPTForCausalLM(hc).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():  # std 0.3 so attention is far from uniform
            if pname.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            elif "layer_norm" in pname:
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    out_dir = HERE / name
    model.save_pretrained(out_dir)
    (out_dir / "generation_config.json").unlink(missing_ok=True)

    lengths = (7, 5, 2)
    ids = torch.ones(len(lengths), 7, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, 7 - n:] = torch.randint(3, cfg.vocab_size, (n,), generator=gen)
        mask[row, 7 - n:] = 1
    head_mask = torch.tensor([0.0, 0.5, 1.0])[torch.randint(0, 3, (cfg.num_layers, cfg.num_heads), generator=gen)]
    head_mask[0, 0] = 0.0
    ffn_mask = torch.ones(cfg.num_layers)
    ffn_mask[0] = 0.0

    seen: dict[int, torch.Tensor] = {}
    layers = model.model.decoder.layers
    hooks = [layer.self_attn.out_proj.register_forward_pre_hook(
        lambda mod, args, i=i: seen.__setitem__(i, args[0].detach().clone())) for i, layer in enumerate(layers)]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    for h in hooks:
        h.remove()
    b, t = ids.shape
    tensors = {"input_ids": ids, "attention_mask": mask, "head_mask": head_mask, "ffn_mask": ffn_mask,
               "logits": out.logits}
    for i in range(cfg.num_layers):
        tensors[f"heads.{i}"] = seen[i].view(b, t, cfg.num_heads, cfg.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        tensors[f"probs.{i}"] = out.attentions[i]
    dh = cfg.head_dim
    with torch.no_grad():
        for i, layer in enumerate(layers):
            w = layer.self_attn.out_proj.weight  # (D, H*Dh): head h reads columns h*Dh:(h+1)*Dh
            for head in range(cfg.num_heads):
                w[:, head * dh:(head + 1) * dh] *= head_mask[i, head]
            layer.fc2.weight *= ffn_mask[i]  # scaling fc2 (weight and bias) scales the whole FFN block;
            layer.fc2.bias *= ffn_mask[i]  # the post-LN trailing layer norm still runs, as in the paper
        tensors["logits_masked"] = model(input_ids=ids, attention_mask=mask).logits
    meta = {"seed": seed, "transformers": transformers.__version__, "torch": torch.__version__,
            "config": name, "script": "tests/golden/make_golden.py"}
    write_tensors(out_dir / "reference.safetensors", tensors, metadata=meta)
    print(f"wrote {out_dir}")


SMALL_SCALE = 1e-3


def build_extra(name: str) -> None:
    """extra.safetensors beside an existing reference (module docstring); reference.safetensors untouched."""
    import transformers

    from opt66b.runs.results import read_tensors

    out_dir = HERE / name
    ref, _ = read_tensors(out_dir / "reference.safetensors")
    ids, mask = ref["input_ids"], ref["attention_mask"]

    def fresh():
        model = transformers.OPTForCausalLM.from_pretrained(out_dir, attn_implementation="eager").eval()
        return model

    tensors = {}
    with torch.no_grad():
        model = fresh()
        frac = torch.ones(model.config.num_hidden_layers)
        frac[0] = 0.5
        layer = model.model.decoder.layers[0]
        layer.fc2.weight *= 0.5
        layer.fc2.bias *= 0.5
        tensors["ffn_mask_fractional"] = frac
        tensors["logits_ffn_fractional"] = model(input_ids=ids, attention_mask=mask).logits

        model = fresh()
        decoder = model.model.decoder
        for p in [decoder.embed_tokens.weight, decoder.embed_positions.weight, *decoder.layers[0].self_attn.parameters()]:
            p *= SMALL_SCALE
        tensors["small_scale"] = torch.tensor(SMALL_SCALE)
        tensors["logits_small"] = model(input_ids=ids, attention_mask=mask).logits

        model = fresh()
        split = ids.shape[1] - 2  # every row has >= 2 real tokens: the last 2 columns are real
        ctx = model(input_ids=ids[:, :split], attention_mask=mask[:, :split], use_cache=True)
        cont = model(input_ids=ids[:, split:], attention_mask=mask, past_key_values=ctx.past_key_values)
        tensors["kv_split"] = torch.tensor(split)
        tensors["logits_continuation"] = cont.logits
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "config": name,
            "script": "tests/golden/make_golden.py --extra"}
    write_tensors(out_dir / "extra.safetensors", tensors, metadata=meta)
    print(f"wrote {out_dir / 'extra.safetensors'}")


def main() -> None:
    for k, (name, cfg) in enumerate(CONFIGS.items()):
        if "--extra" in sys.argv:
            build_extra(name)
        else:
            build(name, cfg, SEED + k)


if __name__ == "__main__":
    main()
