"""Token pool, sequences and prefix matching: hand-built patterns, a transformers cross-check, a
constructed induction head, and the CLI (resumable per seed)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, random_model
from induction import sequences as sq
from induction.prefix_matching import key_mask, prefix_matching_seed, prefix_scores
from opt66b import OPT, OPTConfig, load_tokenizer, save_checkpoint

TINY_TOK = ROOT / "opt66b" / "assets" / "tiny-opt"


# -- token pool and sequences -------------------------------------------------------------------
def test_token_pool_is_merge_ranks_2000_to_47999():
    tok = load_tokenizer(TINY_TOK)
    ranked = tok.merge_ranked_ids()
    pool = sq.token_pool(tok)
    assert len(ranked) == 50000 and len(pool) == 46000
    assert pool == ranked[2000:48000]
    assert tok.bos_id not in pool and len(set(pool)) == len(pool)


def test_sequences_are_seeded_distinct_and_shaped():
    pool = list(range(100, 400))
    a, b = sq.prefix_sequence(pool, 3, bos_id=2), sq.prefix_sequence(pool, 3, bos_id=2)
    assert torch.equal(a, b)  # explicit per-seed generator: reproducible
    assert not torch.equal(sq.draw_distinct(pool, 31, 3), sq.draw_distinct(pool, 31, 4))
    length = 25 + 2 * 3
    assert a.numel() == 4 * length + 1 and a[0] == 2
    base = a[1:length + 1]
    assert len(set(base.tolist())) == length
    assert torch.equal(a[1:].view(4, length), base.expand(4, length))  # (R, L): four identical repeats
    c = sq.copying_sequence(pool, 0, bos_id=2)
    assert c.numel() == 101 and len(set(c[1:].tolist())) == 100
    with pytest.raises(ValueError, match="distinct tokens"):
        sq.draw_distinct(pool, 301, 0)
    tokens, lengths = sq.pack([a, c])
    assert [t.tolist() for t in sq.unpack(tokens, lengths)] == [a.tolist(), c.tolist()]


# -- hand-built attention patterns (L = 3, T = 13) ------------------------------------------------
L, T = 3, 13


def test_key_sets_include_the_spurious_position_1_key_only_for_paper():
    paper, fixed = key_mask(L, T, "paper"), key_mask(L, T, "corrected")
    rows = lambda m, j: torch.nonzero(m[j]).flatten().tolist()
    assert rows(paper, 5) == rows(fixed, 5) == [3]  # token a2 (pos 5): a2 at 2 -> key 3
    assert rows(paper, 6) == [1, 4] and rows(fixed, 6) == [4]  # last token of repeat 2
    assert rows(paper, 12) == [1, 4, 7, 10] and rows(fixed, 12) == [4, 7, 10]
    assert rows(paper, 11) == rows(fixed, 11) == [3, 6, 9]
    assert paper[:L + 1].sum() == 0 and (paper - fixed).sum() == 3  # 3 spurious keys in all


def _pattern(kind: str) -> torch.Tensor:
    a = torch.zeros(T, T)
    for j in range(T):
        if kind == "induction":
            keys = [j - n * L + 1 for n in range(1, (j - 1) // L + 1)] or [0]
            a[j, keys] = 1.0 / len(keys)
        elif kind == "previous":
            a[j, max(j - 1, 0)] = 1.0
        elif kind == "first":
            a[j, min(j, 1)] = 1.0
        else:
            a[j, :j + 1] = 1.0 / (j + 1)
    return a.unsqueeze(0)  # (1, T, T)


def _uniform_by_hand(counts: list[int]) -> float:
    # uniform attention gives query j mass (number of keys)/(j + 1); queries j = 4..12
    return float(sum(Fraction(c, j + 1) for j, c in zip(range(4, 13), counts)) / 9)


@pytest.mark.parametrize("kind,paper,corrected", [
    ("induction", 1.0, 1.0),  # all mass on the true keys; the spurious key 1 holds none
    ("previous", 0.0, 0.0),  # key j-1 never follows an earlier copy of token_j when L = 3
    ("first", 1 / 3, 0.0),  # only the spurious key: 3 of 9 queries get 1 under "paper"
    # keys per query j = 4..12: corrected floor((j-1)/3), paper floor(j/3)
    ("uniform", _uniform_by_hand([1, 1, 2, 2, 2, 3, 3, 3, 4]),
     _uniform_by_hand([1, 1, 1, 2, 2, 2, 3, 3, 3])),
])
def test_prefix_scores_on_hand_patterns(kind, paper, corrected):
    a = _pattern(kind)
    # 1e-6: float32 sums of at most 4 probabilities and a mean over 9 queries
    assert prefix_scores(a, L, "paper").item() == pytest.approx(paper, abs=1e-6)
    assert prefix_scores(a, L, "corrected").item() == pytest.approx(corrected, abs=1e-6)


@pytest.mark.parametrize("kind,text", [
    # L = 3, R = 4: queries 4..6 (repeat 2) have 1 key, 7..9 two, 10..12 three. The induction pattern spreads
    # 1/n over the n keys, so each key holds 1/n and their average is 1/n: (3 x 1 + 3 x 1/2 + 3 x 1/3) / 9
    ("induction", (3 * 1 + 3 * Fraction(1, 2) + 3 * Fraction(1, 3)) / 9),
    ("previous", 0.0),
    ("first", 0.0),  # key 1 is no true key: the text's average, like the correction, ignores it
    # uniform: every key holds 1/(j + 1), so the average over the keys is 1/(j + 1) at every query
    ("uniform", sum(Fraction(1, j + 1) for j in range(4, 13)) / 9),
])
def test_prefix_text_variant_averages_over_the_earlier_copies(kind, text):
    """Appendix A.8: "the average of all attention pattern entries attending from a given token back to
    tokens that succeeded the same token in earlier repeats" (the released code sums them)."""
    # 1e-6: float32 means of at most 3 probabilities and a mean over 9 queries
    assert prefix_scores(_pattern(kind), L, "text").item() == pytest.approx(float(text), abs=1e-6)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="variant"):
        prefix_scores(_pattern("uniform"), L, "tl")
    with pytest.raises(ValueError, match="repeats"):
        prefix_scores(torch.zeros(1, 12, 12), L, "paper")


# -- cross-check against transformers' attention outputs -----------------------------------------
def _reference_score(attn: torch.Tensor, length: int, variant: str) -> np.ndarray:
    """Independent loop over the spec's formulas on an (H, T, T) numpy pattern."""
    attn = attn.double().numpy()
    total = attn.shape[-1]
    per_query = []
    for j in range(length + 1, total):
        if variant == "paper":
            keys = [n * length + (j % length) + 1 for n in range(j // length)]
        else:
            keys = [j - n * length + 1 for n in range(1, j) if j - n * length >= 1]
        per_query.append(attn[:, j, keys].mean(-1) if variant == "text" else attn[:, j, keys].sum(-1))
    return np.mean(per_query, axis=0)


def test_prefix_scores_match_transformers_attentions(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, vocab_size=128, max_positions=64)
    model = random_model(cfg, seed=3)
    save_checkpoint(model, tmp_path / "m")
    hf = transformers.OPTForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    pool = list(range(3, 128))
    for seed, length in ((0, 5), (1, 7)):
        tokens = sq.prefix_sequence(pool, seed, bos_id=2, length=length)
        ours = prefix_matching_seed(model, tokens, length)
        with torch.no_grad():
            atts = hf(tokens.view(1, -1), output_attentions=True).attentions  # per layer (1, H, T, T)
        for variant in ("paper", "corrected", "text"):
            ref = np.stack([_reference_score(a[0], length, variant) for a in atts])  # (L, H)
            # 1e-5 (the project's bar): both fp32, patterns agree to ~1e-7, sums of <= 3 entries
            np.testing.assert_allclose(ours[variant].numpy(), ref, atol=1e-5)


# -- a 2-layer model with an induction head by construction --------------------------------------
def induction_model() -> OPT:
    """Layer 0 head 0 copies the previous token into dims 56..71 (keys match position p-1 via one-hot
    positions 16..55); layer 1 head 0 matches the current token (dims 0..15) against that copy, i.e.
    attends to the token after each earlier occurrence. Everything else is zero; LN weights are 1."""
    cfg = OPTConfig(hidden_size=80, num_layers=2, num_heads=2, ffn_dim=4, vocab_size=16, max_positions=40)
    model = OPT(cfg).eval()
    beta0, beta1 = 2.0, 3.0  # logit gaps ~25 and ~17 after the layer norms: near one-hot attention
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if "layer_norm.weight" in name else 0.0)
        dec = model.decoder
        dec.embed_tokens.weight[:, :16] = torch.eye(16)  # token t -> dim t
        dec.embed_positions.weight[2:42, 16:56] = torch.eye(40)  # position p (row p + 2) -> dim 16 + p
        a0, a1 = dec.layers[0].self_attn, dec.layers[1].self_attn
        for p in range(40):
            a0.q_proj.weight[p, 16 + p] = beta0  # query at p looks for head dim p ...
            if p + 1 < 40:
                a0.k_proj.weight[p + 1, 16 + p] = beta0  # ... which the key at p - 1 carries
        a0.v_proj.weight[:16, :16] = torch.eye(16)
        a0.out_proj.weight[56:72, :16] = torch.eye(16)  # previous token -> dims 56..71
        a1.q_proj.weight[:16, :16] = beta1 * torch.eye(16)  # current token
        a1.k_proj.weight[:16, 56:72] = beta1 * torch.eye(16)  # previous token of the key
    return model


def test_constructed_induction_head_ranks_first():
    model = induction_model()
    pool = list(range(3, 16))
    for variant in ("paper", "corrected", "text"):
        scores = torch.stack([prefix_matching_seed(model, sq.prefix_sequence(pool, s, 2, length=8), 8)[variant]
                              for s in range(3)]).mean(0)  # (L, H)
        assert int(scores.flatten().argmax()) == 2  # layer 1, head 0
        # the text's average caps a sharp head at (1 + 1/2 + 1/3) / 3 = 0.61 with 4 repeats
        assert scores[1, 0] >= (0.5 if variant != "text" else 0.45) and scores[0, 0] < 0.1


# -- the CLI: outputs, saved sequences, resume ----------------------------------------------------
def test_cli_prefix_writes_scores_and_resumes(tmp_path):
    import run
    from opt66b.fileio import read_json
    from opt66b.runs.results import read_tensors

    cfg = OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, vocab_size=50272, max_positions=112)
    model = random_model(cfg, seed=1)
    save_checkpoint(model, tmp_path / "m")
    argv = ["induction", "prefix", "--model", str(tmp_path / "m"), "--tokenizer", str(TINY_TOK),
            "--seeds", "2", "--out", str(tmp_path / "out"), "--variant", "both"]
    assert run.main(argv) == 0
    out = tmp_path / "out"
    t, meta = read_tensors(out / "prefix_matching_paper.safetensors")
    assert t["mean"].shape == (2, 4) and t["scores"].shape == (2, 2, 4) and t["lengths"].tolist() == [101, 109]
    assert torch.allclose(t["var"], t["scores"].var(0))  # unbiased over seeds
    pool = sq.token_pool(load_tokenizer(TINY_TOK))
    seqs = sq.unpack(t["tokens"], t["lengths"])
    assert torch.equal(seqs[1], sq.prefix_sequence(pool, 1, 2))  # saved sequence = regenerated one
    assert torch.equal(prefix_matching_seed(model, seqs[1], 27)["paper"], t["scores"][1])
    summary = read_json(out / "prefix_matching_corrected.json")
    assert summary["variant"] == "corrected" and summary["seeds"] == [0, 1] and len(summary["top_heads"]) == 8
    assert summary["top_heads"][0]["score"] == pytest.approx(float(read_tensors(
        out / "prefix_matching_corrected.safetensors")[0]["mean"].max()))
    seed_file = out / "seeds" / "prefix_matching_paper_seed_0.safetensors"
    stamp = seed_file.stat().st_mtime_ns
    (out / "seeds" / "prefix_matching_paper_seed_1.safetensors").unlink()  # as if killed during seed 1
    assert run.main(argv) == 0
    assert seed_file.stat().st_mtime_ns == stamp  # finished seed not recomputed
    assert torch.equal(read_tensors(out / "prefix_matching_paper.safetensors")[0]["mean"], t["mean"])
    too_long = ["induction", "prefix", "--model", str(tmp_path / "m"), "--tokenizer", str(TINY_TOK),
                "--seeds", "30", "--out", str(tmp_path / "out2")]
    assert run.main(too_long) == 2  # seed 29 needs 333 positions, the model has 112: a clear error


def test_the_parsers_variant_list_is_every_variant():
    from induction.cli import VARIANT_CHOICES
    from induction.copying import VARIANTS as COPYING
    from induction.prefix_matching import VARIANTS as PREFIX

    assert set(VARIANT_CHOICES) == {*PREFIX, *COPYING, "both", "all"}
