"""Coupled relative bias (`model.position=coupled-relative`, tinyformer.model.coupled_bias): the bias against
its formula written out here, every layer adding it, a shift of every id changing nothing, the KV cache, and
the export refusing it (tests/unit/model/test_position_schemes.py checks it as every scheme: no random
offsets in the lab's stream among them)."""

from __future__ import annotations

import math

import pytest
import torch

from tinyformer.errors import TinyformerError
from tinyformer.model import ModelConfig, Transformer, export_hf
from tinyformer.model.coupled_bias import RADIUS, RATE
from tinyformer.train.optim import param_groups

V, HEADS = 13, 2


def tiny(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=V, n_layers=2, n_heads=HEADS, d_model=16, max_seq_len=32,
                                    position="coupled-relative", bias=False)).eval()
    with torch.no_grad():  # distinct weights per head and difference (they start at 0)
        model.position_bias.weight.copy_(torch.randn(HEADS * (2 * RADIUS + 1), generator=torch.Generator().manual_seed(4)))
    return model


def by_hand(model: Transformer, head: int, p_query: int, p_key: int) -> float:
    """w[head, clip(p_q - p_k, -R, R)] times the rate, in plain Python."""
    weights = model.position_bias.weight.tolist()
    difference = min(max(p_query - p_key, -RADIUS), RADIUS)
    return RATE * weights[head * (2 * RADIUS + 1) + difference + RADIUS]


def test_the_bias_is_one_weight_per_head_and_clipped_difference():
    model = tiny()
    q = torch.tensor([[0, 1, 5, 2, 9, 30]])
    k = torch.tensor([[0, 3, 1, 2, 20, 4, 5]])
    bias = model.position_bias(q, k)
    assert bias.shape == (1, HEADS, 6, 7) and bias.dtype == torch.float32
    for h in range(HEADS):
        for i, pq in enumerate(q[0].tolist()):
            for j, pk in enumerate(k[0].tolist()):
                assert math.isclose(bias[0, h, i, j].item(), by_hand(model, h, pq, pk), rel_tol=1e-6)
    # every difference past the radius reads the edge weight: far is far, however far
    assert torch.equal(model.position_bias(torch.tensor([[50]]), torch.tensor([[1]])),
                       model.position_bias(torch.tensor([[5]]), torch.tensor([[1]])))


def test_every_layer_attends_by_the_bias_when_content_is_zeroed_and_a_shift_changes_nothing():
    model = tiny()
    for layer in model.layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
        torch.nn.init.zeros_(layer.self_attn.k_proj.weight)
    ids = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(1))
    pos = torch.tensor([[0, 2, 3, 0, 2, 3]])  # coupled ids: two tokens share each id
    logits, _, attentions = model(ids, position_ids=pos, return_attention=True)
    for i in range(6):
        for h in range(HEADS):
            exps = [math.exp(by_hand(model, h, pos[0, i].item(), pos[0, j].item())) for j in range(i + 1)]
            want = torch.tensor([e / sum(exps) for e in exps] + [0.0] * (5 - i))
            for probs in attentions:
                torch.testing.assert_close(probs[0, h, i], want, atol=1e-5, rtol=1e-5)
    shifted, _ = model(ids, position_ids=pos + 17)
    torch.testing.assert_close(shifted, logits, atol=1e-5, rtol=1e-5)


def test_the_kv_cache_gives_the_full_forward_logits():
    model = tiny()
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(2))
    pos = torch.tensor([[0, 2, 3, 4, 0, 2, 3, 1, 2], [0, 2, 0, 2, 1, 2, 3, 4, 5]])
    full, _ = model(ids, position_ids=pos)
    cache = model.new_kv_cache(2, 9)
    for start, end in ((0, 5), (5, 6), (6, 9)):
        logits, _ = model(ids[:, start:end], position_ids=pos[:, start:end], kv_cache=cache)
        torch.testing.assert_close(logits, full[:, start:end], atol=1e-5, rtol=1e-5)


def test_its_weights_start_at_zero_get_no_decay_and_are_saved(tmp_path):
    from tinyformer.model.io import load_model, save_model

    torch.manual_seed(0)
    fresh = Transformer(ModelConfig(vocab_size=V, n_layers=1, n_heads=HEADS, d_model=16, max_seq_len=32,
                                    position="coupled-relative"))
    assert torch.equal(fresh.position_bias.weight, torch.zeros(HEADS * (2 * RADIUS + 1)))
    _, no_decay = (set(map(id, g["params"])) for g in param_groups(fresh, 0.1))
    assert id(fresh.position_bias.weight) in no_decay
    model = tiny()
    save_model(model, tmp_path / "ckpt")
    back = load_model(tmp_path / "ckpt")
    ids, pos = torch.randint(0, V, (1, 5)), torch.tensor([[0, 2, 3, 1, 2]])
    torch.testing.assert_close(back.eval()(ids, position_ids=pos)[0], model(ids, position_ids=pos)[0], atol=0, rtol=0)


def test_it_needs_the_callers_ids_and_the_hf_export_refuses_it(tmp_path):
    model = tiny()
    with pytest.raises(TinyformerError):
        model(torch.randint(0, V, (1, 4)))
    with pytest.raises(TinyformerError, match="position='coupled-relative' has no HF equivalent") as err:
        export_hf(model, tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()

