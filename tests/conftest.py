"""Shared fixtures: tiny random configs, seeded generators, and where the optional full data and
OPT tokenizer files live (OPT66B_TEST_DATA, OPT66B_TEST_TOKENIZER; tests that need them skip without them)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures" / "data"
TOKENIZER_DIR = ROOT / "opt66b" / "assets" / "tiny-opt"  # the real OPT tokenizer files, bundled
# The full data and the real OPT tokenizer files are not in a clone: tests that need them read OPT66B_TEST_DATA (a
# data directory, e.g. one `run.py data fetch` built) and OPT66B_TEST_TOKENIZER (a directory with vocab.json and
# merges.txt), and skip saying so when they are not set (README, "Set up").
_SIBLING = ROOT.parent / "shared"
SHARED_DATA = Path(os.environ.get("OPT66B_TEST_DATA") or _SIBLING / "data")
SHARED_TOKENIZER = Path(os.environ.get("OPT66B_TEST_TOKENIZER") or _SIBLING / "tokenizer" / "opt")

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="the full data is not here: set OPT66B_TEST_DATA=DIR (a data directory, e.g. "
                                     "from `run.py data fetch --out DIR`) to run this test")
needs_shared_tokenizer = pytest.mark.skipif(
    not (SHARED_TOKENIZER / "vocab.json").is_file(),
    reason="the real OPT tokenizer files are not here: set OPT66B_TEST_TOKENIZER=DIR (vocab.json, merges.txt)")


@pytest.fixture(scope="session", autouse=True)
def identity_cache(tmp_path_factory):
    """The checkpoint hash cache (opt66b/runs/identity.py) lives in a temporary directory, never the user's."""
    import os

    path = tmp_path_factory.mktemp("identity-cache")
    before = os.environ.get("OPT66B_CACHE_DIR")
    os.environ["OPT66B_CACHE_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("OPT66B_CACHE_DIR", None)
    else:
        os.environ["OPT66B_CACHE_DIR"] = before


@pytest.fixture
def tiny_config():
    from opt66b import OPTConfig

    return OPTConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_dim=64, vocab_size=128, max_positions=64)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a 2-core machine running other jobs, torch's thread
    pool oversubscribes the cores and small ops get many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    from opt66b import load_tokenizer

    return load_tokenizer(TOKENIZER_DIR)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


def random_model(cfg, seed: int = 0, dtype=torch.float32):
    """An OPT with random weights (std 0.2 so attention patterns are not uniform)."""
    from opt66b import OPT

    torch.manual_seed(seed)
    model = OPT(cfg).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
            elif "layer_norm" in name:
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0, 0.2)
    model.requires_grad_(False)
    return model
def write_checkpoint(model, path):
    """`model` as a loadable checkpoint directory: safetensors shards + config.json
    (opt66b.save_checkpoint) and the bundled OPT tokenizer files. Returns the path."""
    from opt66b import save_checkpoint

    save_checkpoint(model, path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (path / name).write_bytes((TOKENIZER_DIR / name).read_bytes())
    return path




def sweep_of(model, tokenizer, tasks, sweep, ranking, shots, out, make, importance_dir=None, ffn_dir=None,
             store=None, cache=None, work=None, max_memory=None, limit=None, batch_tokens=4096, **percents):
    """prune.sweeps.run_sweep on stand-ins: a PruneSettings of these options (`max_memory` sizes the layer-order
    chunks, e.g. "cpu=4" for one batch per chunk; limit and batch_tokens as `make` builds its evaluations),
    a SweepRun with `make` building each evaluation."""
    from opt66b.runs.store import UnitStore, Work
    from prune.sweeps import PruneSettings, SweepRun, run_sweep
    from tasks.evaluation import EvaluationCache

    s = PruneSettings(sweep=sweep, ranking=ranking, tasks=tuple(tasks), shots=tuple(shots), out=out,
                      importance=importance_dir, ffn_importance=ffn_dir, data=FIXTURES, max_memory=max_memory,
                      limit=limit, batch_tokens=batch_tokens, **{k: tuple(v) for k, v in percents.items()})
    from opt66b.cost import ModelShape

    shape = ModelShape.of(model) if hasattr(model, "parameters") and tokenizer is not None else None  # stand-ins: equal costs
    cache = cache or EvaluationCache(model, Path(out) / "evaluations", {})  # on disk, as run_prune's: shared by processes
    run = SweepRun(model, tokenizer, store or UnitStore({}), work or Work(), cache, make, {}, shape)
    return run_sweep(s, tasks, run)


def oracle_of(model, tokenizer, tasks, shots, out, make, budget=None, naive=False, info=None):
    """prune.oracle.run_ffn_oracle on stand-ins: FFNOracleSettings of these options (`budget`: the chunk's bytes,
    --oracle-memory; None: a terabyte, the whole task in one chunk), `make` building each evaluation."""
    from prune.oracle import FFNOracleSettings, run_ffn_oracle

    memory = (budget if budget is not None else 1 << 40) / (1 << 30)  # GiB; exact for whole byte counts
    s = FFNOracleSettings(tasks=tuple(tasks), shots=tuple(shots), out=out, data=FIXTURES, oracle_memory=memory,
                          naive=naive)
    info = info or {"model": "stand-in", "identity": {"stand-in": 1}, "dtype": "float32"}
    return run_ffn_oracle(model, tokenizer, info, s, evaluations=make)


def layer_major_hidden(model, batches):
    """Each (input_ids (B, T), attention_mask (B, T) or None) batch's final hidden state, the chunk run layer by
    layer through opt66b.layer_major.run_layer_major (the one layer-order executor)."""
    from opt66b.layer_major import ChunkPass, MaskedRun, run_layer_major
    from opt66b.model import position_ids_from_mask

    units, out = [], {}
    for ids, mask in batches:
        mask = torch.ones_like(ids) if mask is None else mask
        units.append([ChunkPass(ids, mask, position_ids_from_mask(mask, ids.shape[1]))])
    run_layer_major(model, units, [MaskedRun()], lambda r, u, j, hidden: out.__setitem__(u, hidden))
    return [out[u] for u in range(len(units))]
