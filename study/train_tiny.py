"""Train the tiny OPT organism shipped in opt66b/assets/tiny-opt (deterministic, CPU, a few minutes).

A 2-layer pre-LN OPT with the real 50,272-row vocabulary, trained from scratch with Adam on rows
that interleave natural text (the few-shot/train files of the bundled samples, never an eval split)
with blocks of distinct random tokens repeated 2 to 4 times (the prefix-matching token pool:
merge ranks minus 4% at each end). The recipe is designed to grow one clean induction circuit,
but it has NOT done so yet: the shipped model's top prefix-matching head scores 0.039 (see
training_log.json and README "The tiny OPT" for what was tried). The design reasons:

- 2 layers: an induction head needs a previous-token head below it (K-composition); one layer
  cannot build one, and more layers invite duplicates.
- blocks of random length placed at random offsets between text spans: a head copying from a fixed
  distance back (a positional shortcut) fails, only matching the previous token's identity works.
- the loss is taken on the repeated tokens (where only copying helps) and on text positions (where
  bigram statistics help), the vocabulary projection only at those positions (the costly matmul).
- tied embeddings initialised like OPT (std 0.02), so random tokens are near-orthogonal and an
  identity-like OV circuit copies them.

Reproducibility: one torch.Generator seeds the data and the init, threads are fixed, deterministic
algorithms are on, and the optimiser runs in float32 on CPU. Rerunning on the same machine and torch
build reproduces model.safetensors bit for bit (the sha256 is in the log); another CPU type or torch
version may round differently (BLAS kernels), giving a model with the same recipe but other bits.

    python -m study.train_tiny --out opt66b/assets/tiny-opt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from opt66b import OPT, OPTConfig, load_tokenizer, save_checkpoint
from opt66b.io import Progress, sha256_file, write_json, run_metadata

from .copy_task import copy_accuracy, copy_batch, heads_above, prefix_matching, token_pool

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tasks" / "samples"
# Train/few-shot split files of the samples: natural text for training without touching eval splits.
TEXT_FILES = ["boolq/fewglue_train.jsonl", "cb/train.jsonl", "copa/train.jsonl", "multirc/train.jsonl",
              "record/fewglue_train.jsonl", "rte/train.jsonl", "wic/train.jsonl", "wsc/train.jsonl",
              "arc_easy/ARC-Easy-Train.jsonl", "arc_challenge/ARC-Challenge-Train.jsonl",
              "openbookqa/train.jsonl", "hellaswag/hellaswag_train.jsonl.head3368.jsonl",
              "winogrande/train_l.jsonl", "mathqa/dev.json"]

SETTINGS = dict(
    seed=0, threads=1, layers=2, heads=4, hidden=64, ffn=256, max_positions=2048,
    steps=4000, batch=8, row_tokens=128, long_every=8, long_row_tokens=1024, loss_positions=128,
    negatives=1024, embed_std=0.2, pos_std=0.4, pos_dims=16, tok_dims=32, freeze_embed=1,
    lr=3e-3, warmup=100, weight_decay=0.0, block_min=8, block_max=32, text_min=8, text_max=64,
    p_block=0.8, eval_seeds=8, eval_length=25,
)


def strings_in(obj) -> list[str]:
    """Every string value in a JSON record, depth first (passages, questions, choices)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings_in(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings_in(v)]
    return []


def text_stream(tokenizer, samples: Path) -> torch.Tensor:
    """(N,) token ids of all natural text in the TEXT_FILES, records joined by EOS."""
    ids: list[int] = []
    for rel in TEXT_FILES:
        path = samples / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `python -m study.make_samples` to cut the samples")
        raw = path.read_text(encoding="utf-8")
        records = json.loads(raw) if rel.endswith(".json") else [json.loads(ln) for ln in raw.splitlines() if ln.strip()]
        for rec in records:
            text = " ".join(s for s in strings_in(rec) if len(s) > 3)
            ids += tokenizer.encode(text) + [tokenizer.eos_id]
    return torch.tensor(ids, dtype=torch.long)


def make_row(n: int, text: torch.Tensor, pool: torch.Tensor, s: dict, g: torch.Generator,
             bos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One training row of n ids and a (n,) bool mask of positions whose *next* token is a target
    worth a loss: text tokens and tokens of repeats >= 2 of a random block."""
    ids, target = [bos], [False]
    def rint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))
    while len(ids) < n:
        if float(torch.rand(1, generator=g)) < s["p_block"]:
            length, reps = rint(s["block_min"], s["block_max"]), rint(2, 4)
            block = pool[torch.randperm(pool.numel(), generator=g)[:length]].tolist()
            ids += block * reps
            target += [False] * length + [True] * (length * (reps - 1))
        else:
            length = rint(s["text_min"], s["text_max"])
            start = rint(0, text.numel() - length - 1)
            ids += text[start:start + length].tolist()
            target += [True] * length
    ids_t = torch.tensor(ids[:n])
    # target[i] says token i is worth predicting, i.e. the loss sits at position i - 1.
    at = torch.tensor(target[1:n] + [False])  # (n,)
    return ids_t, at


def batch(rows: int, n: int, text, pool, s, g, bos) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, n) ids, and the flat (row, position) indices of `loss_positions` loss sites per row."""
    ids, r_idx, p_idx = [], [], []
    for r in range(rows):
        row, at = make_row(n, text, pool, s, g, bos)
        ids.append(row)
        cand = torch.nonzero(at).flatten()
        pick = cand[torch.randperm(cand.numel(), generator=g)[: s["loss_positions"] * n // s["row_tokens"]]]
        r_idx.append(torch.full_like(pick, r))
        p_idx.append(pick)
    return torch.stack(ids), torch.cat(r_idx), torch.cat(p_idx)


def sampled_loss(model: OPT, hidden: torch.Tensor, target: torch.Tensor, ids: torch.Tensor, negatives: int,
                 g: torch.Generator) -> torch.Tensor:
    """Cross-entropy of (K, W) hidden states against (K,) targets over a candidate vocabulary: every
    token in the batch (the hard negatives of copying) plus `negatives` random ids (a fresh draw each
    step, so every row of the table is pushed down now and then). 0 = the full 50,272-way softmax.
    The full projection is ~95% of a step's cost on CPU; the candidate set cuts it ~20x."""
    if negatives <= 0:
        return F.cross_entropy(model.logits(hidden), target)
    vocab = model.config.tokenizer_vocab_size
    cand = torch.unique(torch.cat([ids.flatten(), torch.randint(0, vocab, (negatives,), generator=g)]))  # (C,) sorted
    logits = hidden @ model.output_weight[cand].T  # (K, W) x (W, C) -> (K, C)
    return F.cross_entropy(logits, torch.searchsorted(cand, target))


def init_weights(model: OPT, g: torch.Generator, s: dict) -> None:
    """OPT's init (metaseq): normal std 0.02 for matrices and embeddings, zero biases, unit LN."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith("embed_positions.weight"):
                # positions live in the last pos_dims coordinates, tokens in the others: the
                # residual stream keeps free room for "which token came before" (see sinusoids)
                p.zero_()
                p[:, p.shape[1] - s["pos_dims"]:] = sinusoids(p.shape[0], s["pos_dims"], s["pos_std"])
            elif name.endswith("embed_tokens.weight"):
                p.zero_()
                p[:, :s["tok_dims"]] = torch.randn(p.shape[0], s["tok_dims"], generator=g) * s["embed_std"]
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def sinusoids(rows: int, dim: int, std: float) -> torch.Tensor:
    """(rows, dim) sin/cos table (Vaswani et al. 2017) scaled to per-entry RMS `std`. Learned random
    positions make "attend to the previous token" a lookup to learn row by row; sinusoids make it
    one rotation, so the previous-token head forms in a few hundred steps and holds beyond the
    trained lengths."""
    pos = torch.arange(rows, dtype=torch.float64).view(rows, 1)  # (rows, 1)
    freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    angle = pos * freq.view(1, -1)  # (rows, dim/2)
    table = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(rows, dim)  # (rows, dim/2, 2) -> (rows, dim)
    return (table * std * math.sqrt(2.0)).float()


def train(out: Path, settings: dict, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    s = settings
    torch.set_num_threads(s["threads"])
    torch.use_deterministic_algorithms(True)
    g = torch.Generator().manual_seed(s["seed"])
    tok = load_tokenizer(out)
    pool = token_pool(tok)
    text = text_stream(tok, SAMPLES)
    cfg = OPTConfig(hidden_size=s["hidden"], num_layers=s["layers"], num_heads=s["heads"], ffn_dim=s["ffn"],
                    max_positions=s["max_positions"])
    model = OPT(cfg)
    init_weights(model, g, s)
    model.requires_grad_(True).train()
    if s["freeze_embed"]:  # token table stays at its seeded Gaussian init (see module docstring)
        model.decoder.embed_tokens.weight.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=s["lr"], betas=(0.9, 0.98), eps=1e-8,
                           weight_decay=s["weight_decay"])
    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < s["warmup"]:
            return s["lr"] * (step + 1) / s["warmup"]
        frac = (step - s["warmup"]) / max(1, s["steps"] - s["warmup"])
        return s["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    curve, start = [], time.monotonic()
    prog = Progress(s["steps"], "train tiny-opt")
    for step in range(s["steps"]):
        long = s["long_every"] and step % s["long_every"] == s["long_every"] - 1
        n, rows = (s["long_row_tokens"], max(1, s["batch"] * s["row_tokens"] // s["long_row_tokens"])) if long \
            else (s["row_tokens"], s["batch"])
        ids, r_idx, p_idx = batch(rows, n, text, pool, s, g, tok.bos_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        hidden = model(ids, logits="none").hidden  # (rows, n, W)
        loss = sampled_loss(model, hidden[r_idx, p_idx], ids[r_idx, p_idx + 1], ids, s["negatives"], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        curve.append(round(loss.item(), 4))
        if step % 25 == 0 or step == s["steps"] - 1:
            log(f"step {step} loss {loss.item():.3f} lr {lr_at(step):.2e}")
        prog.update()
    train_s = time.monotonic() - start
    model.eval().requires_grad_(False)
    path = save_checkpoint(model, out, dtype=torch.float16)
    return dict(model=model, curve=curve, train_s=train_s, pool=pool, path=path)


def evaluate(model: OPT, pool: torch.Tensor, s: dict) -> dict:
    """Prefix matching per head and copy accuracy of the fp16-rounded weights (in float32)."""
    pm = prefix_matching(model, pool, seeds=s["eval_seeds"], length=s["eval_length"])
    ids = copy_batch(pool, s["eval_seeds"], s["eval_length"])
    top = heads_above(pm, 0.0)[0]
    return {"prefix_matching": [[round(float(v), 4) for v in row] for row in pm],
            "top_head": list(top), "top_score": round(float(pm[top]), 4),
            "induction_heads": [list(h) for h in heads_above(pm, 0.5)],
            "copy_accuracy": round(copy_accuracy(model, ids), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "opt66b" / "assets" / "tiny-opt",
                    help="directory with the tokenizer files; config.json, model.safetensors and "
                         "training_log.json are written there")
    for k, v in SETTINGS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    args = ap.parse_args(argv)
    s = {k: getattr(args, k) for k in SETTINGS}
    res = train(args.out, s)
    from opt66b import load_model
    model = load_model(args.out, dtype=torch.float32)
    ev = evaluate(model, res["pool"], s)
    weights = args.out / "model.safetensors"
    log = run_metadata(settings=s, seed=s["seed"], train_seconds=round(res["train_s"], 1),
                       model_sha256=sha256_file(weights), model_bytes=weights.stat().st_size,
                       config_sha256=sha256_file(args.out / "config.json"),
                       samples_sha256={f: sha256_file(SAMPLES / f) for f in TEXT_FILES},
                       loss_curve=res["curve"], **ev)
    write_json(args.out / "training_log.json", log)
    print(f"trained in {res['train_s']:.0f}s; top prefix-matching head {ev['top_head']} = {ev['top_score']}; "
          f"induction heads {ev['induction_heads']}; copy accuracy {ev['copy_accuracy']}; "
          f"sha256 {log['model_sha256'][:16]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
