"""Each position scheme against its defining property, with expected values computed here from the papers."""

from __future__ import annotations

import math

import pytest
import torch

from tinyformer.errors import TinyformerError
from tinyformer.model import ModelConfig, Transformer
from tinyformer.model.positions import (
    alibi_slopes,
    apply_rope,
    rope_cos_sin,
    sinusoidal_embedding,
)

SIZES = dict(vocab_size=37, max_seq_len=16)  # max_seq_len 16: the tests beyond the table reach it quickly


# ---------------------------------------------------------------------------- RoPE


def rope_score(q: torch.Tensor, k: torch.Tensor, m: int, n: int, theta=10000.0, scaling=1.0) -> float:
    d = q.shape[-1]
    cos_q, sin_q = rope_cos_sin(torch.tensor([[m]]), d, theta, scaling)
    cos_k, sin_k = rope_cos_sin(torch.tensor([[n]]), d, theta, scaling)
    rq = apply_rope(q.view(1, 1, 1, d), cos_q, sin_q)
    rk = apply_rope(k.view(1, 1, 1, d), cos_k, sin_k)
    return (rq * rk).sum().item()


def test_rope_scores_depend_only_on_the_position_difference():
    torch.manual_seed(0)
    q, k = torch.randn(16, dtype=torch.float64).float(), torch.randn(16).float()
    base = rope_score(q, k, 3, 1)
    for shift in (5, 100, 1000):
        assert rope_score(q, k, 3 + shift, 1 + shift) == pytest.approx(base, abs=1e-4)
    assert rope_score(q, k, 3, 2) != pytest.approx(base, abs=1e-3)  # a different distance scores differently
    assert rope_score(q, k, 3, 3) == pytest.approx((q * k).sum().item(), abs=1e-5)  # distance 0: plain dot


def test_rope_linear_scaling_divides_positions():
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    assert rope_score(q, k, 14, 4, scaling=2.0) == pytest.approx(rope_score(q, k, 7, 2), abs=1e-5)


@pytest.mark.parametrize("position", ["rope", "alibi", "nope"])
def test_relative_schemes_ignore_a_constant_position_offset(tiny_model, position):
    model = tiny_model(position, **SIZES)
    ids = torch.randint(0, 37, (2, 10))
    shifted, _ = model(ids, position_ids=torch.arange(10) + 500)
    torch.testing.assert_close(shifted, model(ids)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_absolute_schemes_see_a_position_offset(tiny_model, position):
    model = tiny_model(position, **SIZES, n_positions=64)
    ids = torch.randint(0, 37, (2, 10))
    assert not torch.allclose(model(ids, position_ids=torch.arange(10) + 30)[0], model(ids)[0], atol=1e-3)


@pytest.mark.parametrize("position", ["rope", "alibi", "nope", "sinusoidal"])
def test_schemes_without_a_table_run_beyond_max_seq_len(tiny_model, position):
    model = tiny_model(position, **SIZES)  # max_seq_len 16
    logits, _ = model(torch.randint(0, 37, (1, 40)))
    assert logits.shape == (1, 40, 37) and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_follow_the_paper():
    # Press et al.: n a power of two -> 2^(-8/n), 2^(-16/n), ...; otherwise the closest power of two's slopes
    # followed by the odd-indexed slopes of twice that many heads.
    assert alibi_slopes(4).tolist() == [2**-2, 2**-4, 2**-6, 2**-8]
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]
    assert alibi_slopes(6).tolist() == [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    twelve = [2 ** (-i / 1) for i in range(1, 9)] + [2 ** (-(2 * i + 1) / 2) for i in range(4)]
    assert alibi_slopes(12).tolist() == pytest.approx(twelve)


@pytest.mark.parametrize("n_heads", [4, 6])
def test_alibi_bias_reaches_the_attention_with_each_heads_slope(tiny_model, n_heads):
    """With q = k = 0 every score is the bias alone, so attention is softmax(-slope * distance)."""
    model = tiny_model("alibi", **SIZES, n_heads=n_heads, d_model=6 * n_heads, n_layers=1)
    with torch.no_grad():
        model.layers[0].self_attn.q_proj.weight.zero_()
        model.layers[0].self_attn.q_proj.bias.zero_()
    _, _, attn = model(torch.randint(0, 37, (1, 6)), return_attention=True)
    t = 5  # last query
    for h, slope in enumerate(alibi_slopes(n_heads).tolist()):
        weights = torch.tensor([math.exp(-slope * (t - j)) for j in range(t + 1)])
        torch.testing.assert_close(attn[0][0, h, t], weights / weights.sum(), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------- sinusoidal


def test_sinusoidal_values_at_known_positions():
    d = 8
    table = sinusoidal_embedding(torch.tensor([0, 1, 5]), d)
    assert table[0].tolist() == [0.0, 1.0] * 4
    for row, p in ((1, 1), (2, 5)):
        expected = []
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            expected += [math.sin(angle), math.cos(angle)]
        assert table[row].tolist() == pytest.approx(expected, abs=1e-6)


def test_sinusoidal_model_adds_the_table_at_the_papers_ratio_to_token_embeddings(tiny_model):
    # Vaswani et al.: sqrt(d) * embedding + table; divided by sqrt(d) (the first norm removes the factor)
    model = tiny_model("sinusoidal", **SIZES)
    ids = torch.randint(0, 37, (1, 7))
    pos = torch.tensor([[3, 4, 5, 9, 10, 11, 40]])
    x = model.embed(ids, pos)
    torch.testing.assert_close(x - model.embed_tokens(ids), sinusoidal_embedding(pos, 32) / math.sqrt(32))


def position_and_token_accuracy(position: str, steps: int = 150, lr: float = 3e-3) -> float:
    """Accuracy on a task that needs both what a token is and where it is: target_t = (token_t + t) mod V."""
    torch.manual_seed(0)
    vocab, t, b = 16, 12, 32
    model = Transformer(ModelConfig(vocab_size=vocab, n_layers=1, n_heads=2, d_model=32, max_seq_len=t,
                                    position=position))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)

    def batch():
        ids = torch.randint(0, vocab, (b, t), generator=g)
        return ids, (ids + torch.arange(t)) % vocab

    for _ in range(steps):
        ids, targets = batch()
        _, loss = model(ids, targets=targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ids, targets = batch()
    with torch.no_grad():
        logits, _ = model.eval()(ids)
    return (logits.argmax(-1) == targets).float().mean().item()


def test_sinusoidal_learns_a_token_and_position_task_as_well_as_learned_positions():
    # the unscaled table (amplitude 1 against std-0.02 embeddings) reached 0.17 here; learned reaches 1.0
    learned = position_and_token_accuracy("learned")
    assert learned > 0.95
    assert position_and_token_accuracy("sinusoidal") >= learned - 0.02


# ---------------------------------------------------------------------------- learned


def test_learned_positions_beyond_the_table_are_refused(tiny_model):
    model = tiny_model("learned", **SIZES)  # table of 16
    assert model(torch.randint(0, 37, (1, 16)))[0].shape == (1, 16, 37)
    with pytest.raises(
        TinyformerError, match=r"position id 16 is outside the learned position table \(0..15\)"
    ):
        model(torch.randint(0, 37, (1, 17)))
    with pytest.raises(TinyformerError, match="outside the learned position table"):
        model(torch.randint(0, 37, (1, 4)), position_ids=torch.tensor([0, 1, 2, 99]))
    with pytest.raises(TinyformerError, match="beyond the learned position table"):
        model.generate(torch.randint(0, 37, (1, 10)), max_new_tokens=10, temperature=0)


# ---------------------------------------------------------------------------- NoPE


def test_nope_has_no_positional_signal_in_one_layer(tiny_model):
    """Without positions, one attention layer sees its prefix as a set: permuting earlier tokens leaves the
    last output unchanged. Any scheme that adds position information changes it."""
    ids = torch.randint(0, 37, (2, 9))
    permuted = torch.cat((ids[:, :8][:, torch.randperm(8)], ids[:, 8:]), dim=1)
    assert not torch.equal(ids, permuted)
    for position in ("nope", "rope", "learned", "alibi"):
        model = tiny_model(position, **SIZES, n_layers=1)
        same = torch.allclose(model(ids)[0][:, -1], model(permuted)[0][:, -1], atol=1e-5)
        assert same == (position == "nope"), position


# ---------------------------------------------------------------------------- Abacus


def abacus_position_ids(is_digit: torch.Tensor) -> torch.Tensor:
    from tinyformer.batch import run_positions

    return torch.from_numpy(run_positions(is_digit.numpy()))


def test_abacus_ids_count_digits_inside_each_number():
    text = "12+345=4321"
    is_digit = torch.tensor([[c.isdigit() for c in text]])
    assert abacus_position_ids(is_digit).tolist() == [[1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]]
    two_rows = abacus_position_ids(torch.cat((is_digit, ~is_digit)))
    assert two_rows[1].tolist() == [0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]


def test_abacus_digits_at_the_same_place_share_a_position_embedding(tiny_model):
    model = tiny_model("abacus", **SIZES, n_positions=32)
    text = "12+345=4321"
    ids = torch.tensor([[ord(c) % 37 for c in text]])
    pos = abacus_position_ids(torch.tensor([[c.isdigit() for c in text]]))
    added = (model.embed(ids, pos) - model.embed_tokens(ids))[0]
    torch.testing.assert_close(added[0], added[3])  # first digit of "12" and of "345": id 1
    torch.testing.assert_close(added[1], added[8])  # second digit of "12" and of "4321": id 2
    assert not torch.allclose(added[0], added[1])
    with pytest.raises(TinyformerError, match="abacus.*needs position_ids"):
        model(ids)
