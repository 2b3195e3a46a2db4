"""The engine's learning-rate schedules and its optimizer groups (tinyformer.train.schedule, .optim)."""

from __future__ import annotations

import pytest


def test_schedule_shapes():
    from tinyformer.train.schedule import lr_at

    kw = dict(lr=1.0, min_lr=0.1, warmup=10, total=110)
    assert lr_at(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(60, schedule="cosine", **kw) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(110, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(500, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(60, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_at(35, schedule="linear", **kw) == pytest.approx(1.0 - 0.9 * 0.25)
    assert lr_at(100, schedule="constant", **kw) == 1.0
    cos = [lr_at(s, schedule="cosine", **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(cos, cos[1:]))


def test_weight_decay_only_on_matrices_and_embeddings():
    from tinyformer.model import ModelConfig, Transformer
    from tinyformer.train.optim import build_optimizer

    model = Transformer(ModelConfig(vocab_size=64, n_layers=1, d_model=16, n_heads=2, max_seq_len=8))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        should = p.dim() >= 2  # linear weights and the embedding tables
        assert (id(p) in decayed) == should, name
    assert any("embed" in n and id(p) in decayed for n, p in model.named_parameters())
