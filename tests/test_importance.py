"""Head importance against an independent re-implementation; FFN oracle cache against naive re-evaluation."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from conftest import FIXTURES, random_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    from opt66b import OPTConfig

    cfg = OPTConfig(hidden_size=32, num_layers=3, num_heads=4, ffn_dim=64, max_positions=512)
    return random_model(cfg, seed=3)


def example_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """[context; continuation] ids encoded separately without BOS (lm-eval), and the continuation length."""
    ctx, cont = tokenizer.encode(context), tokenizer.encode(continuation)
    return ctx + cont, len(cont)


def reference_scores(model, ids: list[int], n_cont: int) -> torch.Tensor:
    """(L, H) sum over positions of |a . dL/da|, from the raw weights, one explicit tensor per head.

    Written from the OPT equations (pre-LN, learned positions at offset 2, tied unembedding), not
    through OPT.forward or Capture, so a bug in either shows up here.
    """
    cfg, dec = model.config, model.decoder
    x = torch.tensor(ids)
    n, dh = len(ids), cfg.head_dim
    ln = torch.nn.functional.layer_norm
    h = dec.embed_tokens.weight[x] + dec.embed_positions.weight[torch.arange(n) + 2]  # (N, D)
    h = h.detach().requires_grad_(True)  # weights are frozen: the graph starts at the embeddings
    causal = torch.ones(n, n).tril().bool()  # (N, N): query row may see key column
    heads = []  # every head's (N, Dh) output, in layer-major order
    for layer in dec.layers:
        att = layer.self_attn
        y = ln(h, (cfg.hidden_size,), layer.self_attn_layer_norm.weight, layer.self_attn_layer_norm.bias)
        q = (y @ att.q_proj.weight.T + att.q_proj.bias) * dh ** -0.5  # (N, D)
        k = y @ att.k_proj.weight.T + att.k_proj.bias  # (N, D)
        v = y @ att.v_proj.weight.T + att.v_proj.bias  # (N, D)
        out = att.out_proj.bias.expand(n, -1)
        for j in range(cfg.num_heads):
            cols = slice(j * dh, (j + 1) * dh)
            s = (q[:, cols] @ k[:, cols].T).masked_fill(~causal, float("-inf"))  # (N, N)
            z = torch.softmax(s, dim=-1) @ v[:, cols]  # (N, Dh)
            heads.append(z)
            out = out + z @ att.out_proj.weight[:, cols].T  # (N, D)
        h = h + out
        y = ln(h, (cfg.hidden_size,), layer.final_layer_norm.weight, layer.final_layer_norm.bias)
        h = h + layer.fc2(torch.relu(layer.fc1(y)))
    h = ln(h, (cfg.hidden_size,), dec.final_layer_norm.weight, dec.final_layer_norm.bias)
    logits = h @ dec.embed_tokens.weight.T  # (N, V)
    loss = torch.nn.functional.cross_entropy(logits[n - n_cont - 1:n - 1], x[n - n_cont:])
    grads = torch.autograd.grad(loss, heads)
    per_head = [(a * g).sum(-1).abs().sum() for a, g in zip(heads, grads)]
    return torch.stack(per_head).view(cfg.num_layers, cfg.num_heads)  # (L*H,) -> (L, H)


def expected_importance(model, tokenizer, examples) -> tuple[torch.Tensor, int, int]:
    """The paper's IS (L, H) from `reference_scores` run in float64, and the two denominators."""
    total = torch.zeros(model.config.num_layers, model.config.num_heads, dtype=torch.float64)
    positions = targets = 0
    model64 = copy.deepcopy(model).double()
    for req in examples:
        ids, n_cont = example_ids(tokenizer, req.context, req.continuation)
        with torch.enable_grad():
            total += reference_scores(model64, ids, n_cont).detach()
        positions, targets = positions + len(ids) - 1, targets + n_cont
    expect = total.clone()
    expect[:-1] /= positions  # layers 0..L-2: sum(N_e - 1)
    expect[-1] /= targets  # last layer: sum(Y_e)
    return expect, positions, targets


@pytest.mark.parametrize("task_name", ["copa", "boolq"])
def test_head_importance_matches_independent_autograd(model, tokenizer, task_name):
    from prune.importance import head_importance
    from tasks.registry import get_task

    task = get_task(task_name, FIXTURES)
    examples = task.importance_examples(3, 1, random.Random(1234))
    expect, positions, targets = expected_importance(model, tokenizer, examples)
    assert float(expect.min()) > 0  # every head has a non-trivial score, so the comparison means something

    # Same weights in float64: the algorithm itself (positions, |.| per token, denominators) must
    # agree to 1e-5; what remains is the float32 cast of a.g and its float32 sum (~1e-7).
    imp64, counts = head_importance(copy.deepcopy(model).double(), tokenizer, examples)
    assert counts == {"examples": 3, "positions": positions, "targets": targets, "truncated": 0}
    # The reference feeds all N_e tokens; ours drops the last one (its dL/da is 0 in every layer).
    assert imp64.dtype == torch.float32 and imp64.shape == (3, 4)
    torch.testing.assert_close(imp64.double(), expect, rtol=1e-5, atol=0.0)

    # The float32 model as users run it: float32 forward/backward over ~370-token BoolQ prompts
    # differs from float64 by up to 1.2e-5 relative (measured); 5e-5 leaves margin.
    imp32, _ = head_importance(model, tokenizer, examples)
    torch.testing.assert_close(imp32.double(), expect, rtol=5e-5, atol=0.0)
    # No weight received a gradient and requires_grad was restored to its original False.
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_uniform_denominator_matches_independent_float64(model, tokenizer):
    """The errata variant: every layer, the last included, divided by sum(N_e - 1)."""
    from prune.importance import head_importance
    from tasks.registry import get_task

    examples = get_task("copa", FIXTURES).importance_examples(3, 1, random.Random(7))
    paper, positions, targets = expected_importance(model, tokenizer, examples)
    expect = paper.clone()
    expect[-1] *= targets / positions  # undo the paper's last-layer sum(Y_e) for sum(N_e - 1)
    assert positions > 3 * targets  # so the two variants differ by more than the tolerance below
    uniform, _ = head_importance(copy.deepcopy(model).double(), tokenizer, examples, denominator="uniform")
    torch.testing.assert_close(uniform.double(), expect, rtol=1e-5, atol=0.0)  # as the paper test above
    with pytest.raises(ValueError, match="denominator"):
        head_importance(model, tokenizer, examples, denominator="targets")


def test_left_truncation_is_counted(model, tokenizer):
    from prune.importance import head_importance
    from tasks.base import Request

    reqs = [Request("one two three four five six seven eight", " nine"), Request("one", " two")]
    _, counts = head_importance(model, tokenizer, reqs, max_length=4)
    # 4 model inputs per example at most: the first keeps 4 fed tokens, the second has 1.
    assert counts == {"examples": 2, "positions": 4 + 1, "targets": 2, "truncated": 1}
    with pytest.raises(ValueError, match="no tokens"):
        head_importance(model, tokenizer, [Request("abc", "")])


def test_normalize_per_layer_gives_unit_rows(model, tokenizer):
    from prune.importance import head_importance
    from tasks.base import Request

    imp, _ = head_importance(model, tokenizer, [Request("Is the sky blue?", " yes")], normalize_per_layer=True)
    # 1e-6: float32 sqrt/divide round-off on a 4-element row.
    torch.testing.assert_close(imp.pow(2).sum(-1), torch.ones(3), rtol=1e-6, atol=1e-6)


def test_half_precision_accumulates_in_float32(tokenizer):
    from opt66b import OPTConfig
    from prune.importance import head_importance
    from tasks.base import Request

    cfg = OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, max_positions=64)
    m32 = random_model(cfg, seed=5)
    m16 = random_model(cfg, seed=5, dtype=torch.bfloat16)
    reqs = [Request("Question: is it raining?\nAnswer:", " no")]
    imp32, _ = head_importance(m32, tokenizer, reqs)
    imp16, _ = head_importance(m16, tokenizer, reqs)
    assert imp16.dtype == torch.float32
    # bfloat16 has 8 mantissa bits (rel. error ~4e-3 per op); 10% over a 2-layer graph is generous
    # yet fails if the half-precision path were broken (e.g. zero or overflowing scores).
    torch.testing.assert_close(imp16, imp32, rtol=0.1, atol=1e-4)
