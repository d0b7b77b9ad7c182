"""Train the tiny OPT organism shipped in opt66b/assets/tiny-opt (deterministic, CPU, a few minutes).

A 2-layer, 4-head pre-LN OPT with the real 50,272-row vocabulary (hidden 128, token table 64 wide
with OPT-350m's project_in / project_out), trained from a seeded init with Adam on 64-token rows of
two kinds: natural text from the bundled samples' train/few-shot files (never an eval split), and
"span recall" rows: a context of random pool tokens (merge ranks minus 4% at each end, the
prefix-matching pool) followed by spans of 2-3 tokens copied from random places in that context.
It grows one previous-token head in layer 0 and induction heads in layer 1 (numbers in
training_log.json and docs/tiny-opt.md). Why each choice:

- frozen random token table, 64 wide: tokens stay near-orthogonal (46,000 pool tokens in 64 dims),
  so the copy and match circuits must work for any token, including the ~45,000 never seen in
  training; the unembedding is tied, as in OPT.
- a 128-wide residual with a 64-wide table: project_out can read the copied token while ignoring
  the current token's own embedding (with hidden == table width, the current token's logit
  dominates), and each head has 32 dims for its match/copy circuit.
- spans of 2-3 tokens at random places: the only rule that predicts the second token of a span is
  "the token that followed the previous occurrence of this token" (an induction head). Long repeated
  blocks also admit "match a window of recent tokens at some positional lag" circuits, which copy
  just as well but attend elsewhere (prefix matching ~0.03); random-offset short spans rule them out.
- positions: sinusoids of random frequencies in (0.05, pi) in the upper 64 coordinates (trainable),
  so "attend to the previous position" is one linear map valid at every position, and positions
  beyond the trained 64 behave like the trained ones.
- two stages for the top layer: during the first `stage_a_steps` steps only `stage_a_heads` of the
  layer-1 heads are on (a head mask); the rest join afterwards, when copying is already solved, and
  take other work (text). Trained all at once, every layer-1 head becomes a near-identical
  induction head, and pruning an equal number of "least important" heads then has to take the
  layer-0 heads, the previous-token head among them.
- after stage A every `long_every`-th step has `long_rows` rows of `long_row_tokens` (same token
  count): the circuit then holds at the lengths the study measures (25-39 tokens repeated 4 times).
- the loss is taken at text positions and at the predictable span tokens, against a candidate
  vocabulary (every token in the batch + `negatives` random ids, a fresh draw each step): the full
  50,272-way projection would be ~95% of a step's cost on CPU.

Reproducibility: one torch.Generator seeds the data and the init, threads are fixed, deterministic
algorithms are on, the optimiser runs in float32 on CPU, and the CPU code paths are pinned
(NUMERIC_PINS below: MKL's conditional numerical reproducibility at AVX2, ATen kernels at AVX2), so
rerunning on any Intel CPU with AVX2 and the same torch build and thread count reproduces
model.safetensors bit for bit (the sha256 is in the log, with the pins and the CPU). MKL does not
promise this on AMD CPUs, and another torch version may round differently.

    python -m study.train_tiny --out opt66b/assets/tiny-opt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

# Pin the CPU code paths before torch (and the MKL linked into it) load, so that the same seed gives the
# same bits on any Intel CPU with AVX2, not only on the machine that made the shipped file: MKL's
# conditional numerical reproducibility (same results on every Intel AVX2 CPU at a fixed thread count,
# STRICT: also for unaligned arrays), ATen's vectorised kernels (layer norm, softmax, Adam) at the AVX2
# width, oneDNN at most AVX2. A variable already set by the user wins. Without these, two machines with
# the same torch build diverged at step 18 (different sgemm blocking) and shipped other bits.
NUMERIC_PINS = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PINS_APPLIED = "torch" not in sys.modules  # imported after torch (e.g. from a test): the pins come too late
for _name, _value in NUMERIC_PINS.items():
    os.environ.setdefault(_name, _value)

import torch  # noqa: E402  (after the pins, on purpose)
import torch.nn.functional as F  # noqa: E402

from opt66b import OPT, OPTConfig, load_tokenizer, save_checkpoint  # noqa: E402
from opt66b.fileio import Progress, sha256_file
from opt66b.runs.results import run_metadata, write_json  # noqa: E402

from induction.sequences import token_pool  # noqa: E402

from .copy_task import pruning_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tasks" / "samples"
# Train/few-shot split files of the samples: natural text for training without touching eval splits.
TEXT_FILES = ["boolq/fewglue_train.jsonl", "cb/train.jsonl", "copa/train.jsonl", "multirc/train.jsonl",
              "record/fewglue_train.jsonl", "rte/train.jsonl", "wic/train.jsonl", "wsc/train.jsonl",
              "arc_easy/ARC-Easy-Train.jsonl", "arc_challenge/ARC-Challenge-Train.jsonl",
              "openbookqa/train.jsonl", "hellaswag/hellaswag_train.jsonl.head3368.jsonl",
              "winogrande/train_l.jsonl", "mathqa/dev.json"]
EMBEDDED = ROOT / "opt66b" / "assets" / "tiny-opt"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")

SETTINGS = dict(
    seed=0, threads=2, layers=2, heads=4, hidden=128, embed_dim=64, ffn=256, max_positions=2048,
    steps=1800, batch=64, row_tokens=64, p_text=0.3, span_min=2, span_max=3, negatives=1024,
    lr=1e-2, warmup=100, stage_a_steps=900, stage_a_heads=2, long_every=4, long_rows=16, long_row_tokens=256,
    pos_rms=0.125, proj_std=0.125,
    eval_seeds=8, eval_length=25,
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


class Rows:
    """Seeded maker of training rows: (n,) ids and a (n,) bool mask, True at position i when
    token i + 1 is a target worth a loss."""

    def __init__(self, text: torch.Tensor, pool: torch.Tensor, s: dict, g: torch.Generator, bos: int):
        self.text, self.pool, self.s, self.g, self.bos = text, pool, s, g, bos

    def rint(self, lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=self.g))

    def text_row(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.rint(0, self.text.numel() - n)
        ids = torch.cat([torch.tensor([self.bos]), self.text[start:start + n - 1]])  # (n,)
        at = torch.ones(n, dtype=torch.bool)
        at[-1] = False  # the last position's next token is outside the row
        return ids, at

    def span_row(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """BOS + a context of c random pool tokens (c in [n/4, n/2]), then spans of 2-3 tokens
        copied from random places of the context; the targets are span tokens 2.. (the first token
        of a span is a fresh random choice nothing predicts)."""
        c = self.rint(n // 4, n // 2)
        ids = [self.bos] + self.pool[torch.randint(0, self.pool.numel(), (c - 1,), generator=self.g)].tolist()
        target = [False] * c
        while len(ids) < n:
            m = self.rint(self.s["span_min"], self.s["span_max"])
            a = self.rint(1, c - m)
            ids += ids[a:a + m]
            target += [False] + [True] * (m - 1)
        return torch.tensor(ids[:n]), torch.tensor(target[1:n] + [False])

    def batch(self, rows: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, n) ids and (rows, n) loss mask."""
        made = [self.text_row(n) if float(torch.rand(1, generator=self.g)) < self.s["p_text"] else self.span_row(n)
                for _ in range(rows)]
        return torch.stack([r[0] for r in made]), torch.stack([r[1] for r in made])


def sampled_loss(model: OPT, hidden: torch.Tensor, target: torch.Tensor, ids: torch.Tensor, negatives: int,
                 g: torch.Generator) -> torch.Tensor:
    """Cross-entropy of (K, W) hidden states against (K,) targets over a candidate vocabulary: every
    token in the batch (the hard negatives of copying) plus `negatives` random ids (a fresh draw
    each step). 0 = the full 50,272-way softmax."""
    if negatives <= 0:
        return F.cross_entropy(model.logits(hidden), target)
    vocab = model.config.tokenizer_vocab_size
    cand = torch.unique(torch.cat([ids.flatten(), torch.randint(0, vocab, (negatives,), generator=g)]))  # (C,) sorted
    logits = hidden @ model.output_weight[cand].T  # (K, W) x (W, C) -> (K, C)
    return F.cross_entropy(logits, torch.searchsorted(cand, target))


def random_sinusoids(rows: int, dim: int, rms: float, g: torch.Generator) -> torch.Tensor:
    """(rows, dim) sin/cos pairs at dim/2 random frequencies in (0.05, pi), per-entry RMS `rms`.
    Shifting by one position is one rotation per pair (a linear map the previous-token head can
    learn once for all positions); random rather than geometric frequencies because geometric ones
    (base 10000) leave only a handful of pairs fast enough to tell neighbours apart."""
    freq = torch.rand(dim // 2, generator=g, dtype=torch.float64) * (math.pi - 0.05) + 0.05  # (dim/2,)
    angle = torch.arange(rows, dtype=torch.float64).view(rows, 1) * freq.view(1, -1)  # (rows, dim/2)
    table = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(rows, dim)  # (rows, dim/2, 2) -> (rows, dim)
    return (table * rms * math.sqrt(2.0)).float()


def init_weights(model: OPT, g: torch.Generator, s: dict) -> None:
    """Seeded init: token table N(0, 1/embed_dim) (unit-norm rows, frozen later), positions random
    sinusoids in the upper `embed_dim` coordinates, project_in/out N(0, proj_std), other matrices
    N(0, 1/fan_in), zero biases, unit layer norms."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif name.endswith("embed_positions.weight"):
                p.zero_()
                dims = s["embed_dim"]
                p[:, p.shape[1] - dims:] = random_sinusoids(p.shape[0], dims, s["pos_rms"], g)
            elif "project_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * s["proj_std"])
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def train(out: Path, settings: dict, log=lambda m: print(m, file=sys.stderr, flush=True)) -> dict:
    s = settings
    torch.set_num_threads(s["threads"])
    torch.use_deterministic_algorithms(True)
    g = torch.Generator().manual_seed(s["seed"])
    tok = load_tokenizer(out)
    pool = torch.tensor(token_pool(tok), dtype=torch.long)  # (P,) merge-rank pool
    rows = Rows(text_stream(tok, SAMPLES), pool, s, g, tok.bos_id)
    cfg = OPTConfig(hidden_size=s["hidden"], num_layers=s["layers"], num_heads=s["heads"], ffn_dim=s["ffn"],
                    max_positions=s["max_positions"], word_embed_proj_dim=s["embed_dim"])
    model = OPT(cfg)
    init_weights(model, g, s)
    model.requires_grad_(True).train()
    model.decoder.embed_tokens.weight.requires_grad_(False)  # frozen random table (module docstring)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=s["lr"], betas=(0.9, 0.98), eps=1e-8)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < s["warmup"]:
            return s["lr"] * (step + 1) / s["warmup"]
        frac = (step - s["warmup"]) / max(1, s["steps"] - s["warmup"])
        return s["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    stage_a = torch.ones(cfg.num_layers, cfg.num_heads)
    stage_a[-1, s["stage_a_heads"]:] = 0.0  # top-layer heads that join after stage A
    curve, start = [], time.monotonic()
    prog = Progress(s["steps"], "train tiny-opt")
    for step in range(s["steps"]):
        long = step >= s["stage_a_steps"] and s["long_every"] and step % s["long_every"] == 0
        ids, at = rows.batch(s["long_rows"], s["long_row_tokens"]) if long else rows.batch(s["batch"], s["row_tokens"])
        r_idx, p_idx = torch.nonzero(at, as_tuple=True)  # loss sites
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        mask = stage_a if step < s["stage_a_steps"] else None
        hidden = model(ids, head_mask=mask, logits="none").hidden  # (rows, n, W)
        loss = sampled_loss(model, hidden[r_idx, p_idx], ids[r_idx, p_idx + 1], ids, s["negatives"], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve.append(round(loss.item(), 4))
        if step % 100 == 0 or step == s["steps"] - 1:
            log(f"step {step} loss {loss.item():.3f} lr {lr_at(step):.2e}")
        prog.update()
    train_s = time.monotonic() - start
    model.eval().requires_grad_(False)
    path = save_checkpoint(model, out, dtype=torch.float16)
    return dict(model=model, curve=curve, train_s=train_s, pool=pool, path=path)


def evaluate(model: OPT, pool: torch.Tensor, s: dict) -> dict:
    """The organism check (study.copy_task.pruning_experiment) on the fp16-rounded weights in float32."""
    res = pruning_experiment(model, pool.tolist(), seeds=s["eval_seeds"], length=s["eval_length"])
    pm = torch.tensor(res["prefix_matching"])  # (L, H)
    top = int(pm.argmax())
    r4 = lambda x: round(float(x), 4)
    return {"prefix_matching": [[r4(v) for v in row] for row in res["prefix_matching"]],
            "copy_importance": [[float(f"{v:.4g}") for v in row] for row in res["copy_importance"]],
            "top_head": [top // pm.shape[1], top % pm.shape[1]], "top_score": r4(pm.max()),
            "induction_heads": res["induction_heads"], "control_heads": res["control_heads"],
            "copy_accuracy": r4(res["accuracy_full"]),
            "copy_accuracy_induction_pruned": r4(res["accuracy_induction_pruned"]),
            "copy_accuracy_control_pruned": r4(res["accuracy_control_pruned"]),
            "copy_accuracy_control_prefix_matching_pruned": r4(res["accuracy_control_prefix_matching_pruned"])}


def numeric_settings() -> dict:
    """What decides the bits besides the seed: the pins in force, ATen's kernel width, the CPU."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")
    return {"pins": {name: os.environ.get(name) for name in NUMERIC_PINS}, "pins_applied": PINS_APPLIED,
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu,
            "threads": torch.get_num_threads()}


def copy_tokenizer_files(out: Path) -> None:
    """Give a fresh output directory the embedded tiny OPT's tokenizer (the real OPT files)."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "vocab.json").exists() or (out / "tokenizer.json").exists():  # the embedded one included
        return
    for name in TOKENIZER_FILES:
        shutil.copyfile(EMBEDDED / name, out / name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: python -m study.train_tiny --out opt66b/assets/tiny-opt")
    ap.add_argument("--out", type=Path, default=EMBEDDED,
                    help="output directory; config.json, model.safetensors and training_log.json are "
                         "written there (the tokenizer files are copied from the embedded tiny OPT "
                         "when the directory has none)")
    for k, v in SETTINGS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    args = ap.parse_args(argv)
    s = {k: getattr(args, k) for k in SETTINGS}
    copy_tokenizer_files(args.out)
    if not PINS_APPLIED:
        print("warning: torch was imported before study.train_tiny, so its numeric pins "
              f"({NUMERIC_PINS}) may not apply; run `python -m study.train_tiny` to reproduce the shipped "
              "bits", file=sys.stderr)
    res = train(args.out, s)
    from opt66b import load_model
    model = load_model(args.out, dtype=torch.float32)
    ev = evaluate(model, res["pool"], s)
    weights = args.out / "model.safetensors"
    log = run_metadata(settings=s, seed=s["seed"], train_seconds=round(res["train_s"], 1),
                       model_sha256=sha256_file(weights), model_bytes=weights.stat().st_size,
                       config_sha256=sha256_file(args.out / "config.json"),
                       samples_sha256={f: sha256_file(SAMPLES / f) for f in TEXT_FILES},
                       numerics=numeric_settings(),
                       loss_curve=res["curve"], **ev)
    write_json(args.out / "training_log.json", log)
    print(f"trained in {res['train_s']:.0f}s; top prefix-matching head {ev['top_head']} = {ev['top_score']}; "
          f"induction heads {ev['induction_heads']}; copy accuracy {ev['copy_accuracy']} "
          f"(induction heads pruned {ev['copy_accuracy_induction_pruned']}, control "
          f"{ev['copy_accuracy_control_pruned']}); sha256 {log['model_sha256'][:16]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
