"""Generation: the KV cache changes nothing (every scheme), batches with left padding, sampling controls."""

from __future__ import annotations

import pytest
import torch

from tinyformer.batch import run_positions
from tinyformer.errors import TinyformerError
from tinyformer.model.generate import filter_logits

POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "nope", "abacus"]
DIGITS = set(range(10))  # in these tests token ids 0..9 play the digits


SIZES = dict(vocab_size=23, n_kv_heads=2)  # a small vocabulary, grouped-query attention


def abacus_position_ids(is_digit: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(run_positions(is_digit.numpy()))


def abacus_next(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Abacus id of the token just appended: count digits of the current number (0 for non-digits)."""
    is_digit = torch.isin(ids, torch.tensor(sorted(DIGITS)))
    return abacus_position_ids(is_digit)[:, -1]


def kwargs_for(position: str, prompt: torch.Tensor) -> dict:
    if position != "abacus":
        return {}
    is_digit = torch.isin(prompt, torch.tensor(sorted(DIGITS)))
    return dict(position_ids=abacus_position_ids(is_digit), next_position_ids=abacus_next)


@pytest.mark.parametrize("position", POSITIONS)
def test_cached_generation_equals_recomputing(tiny_model, position):
    model = tiny_model(position, **SIZES)
    prompt = torch.randint(0, 23, (3, 6))
    kw = kwargs_for(position, prompt)
    cached = model.generate(prompt, 24, temperature=0, **kw)
    uncached = model.generate(prompt, 24, temperature=0, use_cache=False, **kw)
    assert cached.shape == (3, 30)
    assert torch.equal(cached, uncached)
    sampled = model.generate(prompt, 24, temperature=1.0, seed=5, **kw)
    assert torch.equal(sampled, model.generate(prompt, 24, temperature=1.0, seed=5, use_cache=False, **kw))
    assert len(set(sampled[:, 6:].flatten().tolist())) > 5  # a varied sequence, not one repeated token


@pytest.mark.parametrize("position", POSITIONS)
def test_cache_fed_in_chunks_gives_the_full_forward_logits(tiny_model, position):
    """Prefill 5 tokens, then 1, then a chunk of 3, then 1s, on a left-padded batch: every step's logits
    equal the one full forward pass (the cache's keys, positions, padding and ALiBi bias are all right)."""
    model = tiny_model(position, **SIZES)
    ids = torch.randint(0, 23, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    pos = None
    if position == "abacus":
        pos = abacus_position_ids(torch.isin(ids, torch.tensor(sorted(DIGITS))) & mask.bool())
    full, _ = model(ids, position_ids=pos, attention_mask=mask)
    cache = model.new_kv_cache(2, 12)
    for start, end in ((0, 5), (5, 6), (6, 9), (9, 10), (10, 11), (11, 12)):
        step_pos = None if pos is None else pos[:, start:end]
        logits, _ = model(
            ids[:, start:end], position_ids=step_pos, attention_mask=mask[:, start:end], kv_cache=cache
        )
        torch.testing.assert_close(logits[0], full[0, start:end], atol=1e-5, rtol=1e-5)
        real = mask[1, start:end].bool()
        torch.testing.assert_close(logits[1][real], full[1, start:end][real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(tiny_model, position):
    model = tiny_model(position, **SIZES)
    long, short = torch.randint(0, 23, (1, 8)), torch.randint(0, 23, (1, 3))
    batch = torch.cat((long, torch.cat((torch.full((1, 5), 7), short), dim=1)))
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    together = model.generate(batch, 20, temperature=0, attention_mask=mask)
    assert torch.equal(together[0], model.generate(long, 20, temperature=0)[0])
    assert torch.equal(together[1, 5:], model.generate(short, 20, temperature=0)[0])


def test_seeded_sampling_is_reproducible_and_cache_independent(tiny_model):
    model = tiny_model("rope", **SIZES)
    prompt = torch.randint(0, 23, (2, 4))
    a = model.generate(prompt, 30, temperature=1.0, top_k=10, top_p=0.9, seed=123)
    b = model.generate(prompt, 30, temperature=1.0, top_k=10, top_p=0.9, seed=123)
    c = model.generate(prompt, 30, temperature=1.0, top_k=10, top_p=0.9, seed=123, use_cache=False)
    d = model.generate(prompt, 30, temperature=1.0, top_k=10, top_p=0.9, seed=124)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, d)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda x: torch.isfinite(x)[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False, False]
    # smallest set reaching 0.8: 0.5 + 0.2 + 0.15 = 0.85 (0.7 is not enough)
    assert kept(filter_logits(logits, top_p=0.8)) == [True, True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.5)) == [True, False, False, False, False]
    assert kept(filter_logits(logits, top_p=0.01)) == [True, False, False, False, False]


def test_sampling_follows_the_filtered_distribution(tiny_model):
    model = tiny_model("nope", **SIZES, n_layers=1)
    prompt = torch.randint(0, 23, (1, 3)).expand(400, 3)
    out = model.generate(prompt, 1, temperature=1.0, top_k=3, seed=0)[:, -1]
    logits = model(prompt[:1])[0][0, -1]
    top3 = set(torch.topk(logits, 3).indices.tolist())
    assert set(out.tolist()) <= top3 and len(set(out.tolist())) >= 2


def test_stop_tokens_end_rows_and_generation(tiny_model):
    model = tiny_model("rope", **SIZES)
    prompt = torch.randint(0, 23, (2, 4))
    free = model.generate(prompt, 30, temperature=0)
    stop = int(free[0, 6])  # the third generated token of row 0
    stopped = model.generate(prompt, 30, temperature=0, stop_tokens=[stop])
    first = (free[0, 4:] == stop).nonzero()[0].item() + 4
    assert torch.equal(stopped[0, : first + 1], free[0, : first + 1])
    assert (stopped[0, first:] == stop).all()  # a finished row repeats its stop token
    row1_stop = (free[1, 4:] == stop).nonzero()
    if len(row1_stop):  # both rows stop: generation ends at the later stop
        assert stopped.shape[1] == max(first, row1_stop[0].item() + 4) + 1
    else:
        assert stopped.shape[1] == free.shape[1]


def test_generation_restores_training_mode_and_validates_arguments(tiny_model):
    model = tiny_model("rope", **SIZES, dropout=0.3).train()
    prompt = torch.randint(0, 23, (1, 4))
    assert torch.equal(model.generate(prompt, 8, temperature=0), model.generate(prompt, 8, temperature=0))
    assert model.training
    with pytest.raises(TinyformerError, match="top_p"):
        model.generate(prompt, 4, top_p=1.5)
    with pytest.raises(TinyformerError, match="temperature"):
        model.generate(prompt, 4, temperature=-1)
    one_d = model.generate(prompt[0], 5, temperature=0)
    assert one_d.dim() == 1 and one_d.shape[0] == 9


def test_generate_never_draws_an_id_at_or_above_vocab_limit(tiny_model):
    model = tiny_model("rope", vocab_size=300, n_layers=1, d_model=16, n_heads=2)
    ids = torch.zeros(4, 1, dtype=torch.long)
    free = model.generate(ids, 100, temperature=5.0, seed=0)
    assert int(free.max()) >= 256  # without the limit a near-uniform model does draw padding ids
    for kwargs in ({"temperature": 5.0}, {"temperature": 0.0}, {"temperature": 5.0, "top_k": 290},
                   {"temperature": 5.0, "top_p": 0.99}):
        assert int(model.generate(ids, 100, seed=0, vocab_limit=256, **kwargs).max()) < 256
