#!/usr/bin/env python3
"""Scoring speed: tasks/scoring.py's Scorer vs a straightforward lm-eval-style loop, same run, same model.

    python tests/benchmarks/bench_scoring.py                    # 40 docs per task, 5-shot (minutes on CPU)
    python tests/benchmarks/bench_scoring.py --docs 8 --record-docs 8   # a quick reduced run

Model: a random opt-125m-shaped OPT (opt66b.config_for_size("opt-125m"), seeded init) in fp32 on CPU.
Mix: BoolQ, HellaSwag, Winogrande, COPA, ARC-Easy, MultiRC, `--docs` docs each (lm-eval order,
seed 42), `--shots` demos, all requests pooled as lm-eval pools them. ReCoRD (many entity
candidates per context) is timed separately; its eval docs are the first queries of whatever split
is present (the few-shot file if val is missing), demos from the few-shot pool.
Baseline = lm-eval v0.3 `_loglikelihood_tokens` at batch 1: per request one forward over the whole
truncated input with full-vocabulary logits at every position, log-softmax over the first 50265.
Printed: seconds, time ratio, tokens fed by each, tokens fed / unique-prefix tokens (the size of
the token trie of all inputs: what a perfect prefix cache would feed), per-task accuracies (must
be identical) and the largest log-likelihood difference. Target: >= 2.7x on the mix.
Not collected by pytest (bench_*.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MIX = ["boolq", "hellaswag", "winogrande", "copa", "arc_easy", "multirc"]
TARGET = 2.7


def default_data() -> Path:
    shared = ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else ROOT / "tests" / "fixtures" / "data"


def baseline(model, tokenizer, requests, max_length: int, vocab: int) -> list[tuple[float, bool]]:
    """One full forward per request, full logits (B=1, T, V), as lm-eval v0.3 does at batch size 1."""
    out = []
    for r in requests:
        ctx = tokenizer.encode(r.context) or [tokenizer.eos_id]
        cont = tokenizer.encode(r.continuation)
        inp = (ctx + cont)[-(max_length + 1):][:-1]
        logits = model(torch.tensor([inp])).logits[0]  # (T, V): every position, all 50272 rows
        logp = torch.log_softmax(logits[:, :vocab].float(), dim=-1)[len(inp) - len(cont):]  # (len(cont), V_tok)
        target = torch.tensor(cont)
        out.append((logp.gather(1, target[:, None]).double().sum().item(), bool((logp.argmax(-1) == target).all())))
    return out


def unique_prefix_tokens(inputs: list[list[int]]) -> int:
    """Nodes of the token trie of all inputs = distinct (position, prefix) pairs any method must feed."""
    root: dict = {}
    nodes = 0
    for seq in inputs:
        node = root
        for t in seq:
            nxt = node.get(t)
            if nxt is None:
                nxt = node[t] = {}
                nodes += 1
            node = nxt
    return nodes


def compare(name: str, model, tokenizer, groups, batch_tokens: int, skip_baseline: bool) -> float | None:
    """Time both methods on the pooled requests of `groups` [(task, instances)]; print the report."""
    from tasks.metrics import task_metrics
    from tasks.scoring import Scorer, token_requests

    requests = [r for _, insts in groups for i in insts for r in i.requests]
    max_length, vocab = model.config.max_positions, model.config.tokenizer_vocab_size
    t0, c0 = time.perf_counter(), time.process_time()
    scorer = Scorer(model, tokenizer, requests, batch_tokens=batch_tokens, progress_label=f"scorer {name}")
    fast = scorer.run()
    t_fast, c_fast = time.perf_counter() - t0, time.process_time() - c0
    inputs = [t.input_ids for t in token_requests(tokenizer, requests, max_length)]
    fed_base = sum(len(x) for x in inputs)
    uniq = unique_prefix_tokens(inputs)
    st = scorer.stats
    print(f"\n== {name}: {len(groups)} task(s), {sum(len(i) for _, i in groups)} docs, {len(requests)} requests "
          f"({st['unique_requests']} unique), {st['forward_passes']} scorer forward passes")
    print(f"unique-prefix tokens: {uniq}")
    print(f"scorer   : {t_fast:8.1f} s wall {c_fast:8.1f} s CPU  tokens fed {st['tokens_fed']:8d} ({st['tokens_fed'] / uniq:.2f}x unique-prefix; "
          f"padded {st['tokens_padded']}), logit rows {st['logit_positions']}")
    if skip_baseline:
        return None
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        slow = baseline(model, tokenizer, requests, max_length, vocab)
    t_slow, c_slow = time.perf_counter() - t0, time.process_time() - c0
    print(f"baseline : {t_slow:8.1f} s wall {c_slow:8.1f} s CPU  tokens fed {fed_base:8d} ({fed_base / uniq:.2f}x unique-prefix), "
          f"logit rows {fed_base} x {model.config.vocab_size}")
    # CPU seconds of this process are the headline: on a shared machine wall time also measures the
    # neighbours (use --threads 1 there so that threads do not spin against each other).
    ratio = c_slow / c_fast
    max_diff = max(abs(a[0] - b[0]) for a, b in zip(fast, slow))
    greedy_same = all(a[1] == b[1] for a, b in zip(fast, slow))
    start, same = 0, True
    for task, insts in groups:
        n = sum(len(i.requests) for i in insts)
        m_fast = task_metrics(task, insts, fast[start:start + n])
        m_slow = task_metrics(task, insts, slow[start:start + n])
        same &= m_fast == m_slow
        print(f"  {task.NAME:11s} scorer {m_fast}  baseline {m_slow}")
        start += n
    print(f"time ratio baseline/scorer: {ratio:.2f}x CPU, {t_slow / t_fast:.2f}x wall   metrics identical: {same}   greedy flags identical: "
          f"{greedy_same}   max |ΔLL| = {max_diff:.2e} nats")
    return ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example:\n  python tests/benchmarks/bench_scoring.py --docs 8 --record-docs 8")
    ap.add_argument("--docs", type=int, default=40, help="docs per task of the mix (default 40)")
    ap.add_argument("--record-docs", type=int, default=40, help="ReCoRD queries (0: skip ReCoRD)")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--record-shots", type=int, default=None, help="ReCoRD demos (default: --shots)")
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--skip-baseline", action="store_true", help="time the scorer only")
    ap.add_argument("--seed", type=int, default=0, help="random-weight seed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from opt66b import config_for_size, load_tokenizer
    from opt66b.runs.loading import TINY_MODEL_DIR, build_random_model
    from tasks.registry import get_task

    cfg = config_for_size("opt-125m")
    model = build_random_model(cfg, torch.float32, lambda name: torch.device("cpu"), args.seed).eval()
    tokenizer = load_tokenizer(TINY_MODEL_DIR)
    print(f"model: random opt-125m shape ({cfg.num_layers} layers, d={cfg.hidden_size}), fp32, CPU, "
          f"{torch.get_num_threads()} threads; data: {args.data}; {args.shots}-shot, {args.docs} docs/task")
    groups = []
    for name in MIX:
        task = get_task(name, args.data)
        groups.append((task, task.instances(args.shots, limit=args.docs, seed=42)))
    ratio = compare("mix", model, tokenizer, groups, args.batch_tokens, args.skip_baseline)
    if args.record_docs:
        task = get_task("record", args.data)
        split = task.EVAL_SPLIT if task.split_file(task.EVAL_SPLIT) else task.FEWSHOT_SPLIT
        rng = random.Random(42)
        from tasks.base import Instance

        docs = task.docs(split)[:args.record_docs]
        record_shots = args.shots if args.record_shots is None else args.record_shots
        insts = []
        for i, doc in enumerate(docs):
            ctx = task.fewshot_context(doc, record_shots, rng)
            insts.append(Instance(i, doc, ctx, task.construct_requests(doc, ctx)))
        print(f"\nReCoRD eval docs from the {split} split ({len(docs)} queries, {record_shots}-shot, "
              f"{sum(len(i.requests) for i in insts) / max(len(insts), 1):.1f} entities each)")
        compare("record", model, tokenizer, [(task, insts)], args.batch_tokens, args.skip_baseline)
    if ratio is not None:
        print(f"\nmix speed-up {ratio:.2f}x (target >= {TARGET}x): {'PASS' if ratio >= TARGET else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
