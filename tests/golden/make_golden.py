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
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from opt66b import OPTConfig  # noqa: E402
from opt66b.io import write_tensors  # noqa: E402

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


def main() -> None:
    for k, (name, cfg) in enumerate(CONFIGS.items()):
        build(name, cfg, SEED + k)


if __name__ == "__main__":
    main()
