"""FIRE (`model.position=fire`, tinyformer.model.fire): its bias against the paper's formula written out here
with plain floats, the model adding it to every layer's scores, a shift of the ids below L changing nothing,
the KV cache giving the full forward's logits, a tiny model learning with it, and the HF export refusing it."""

from __future__ import annotations

import math

import pytest
import torch

from tinyformer.errors import TinyformerError
from tinyformer.model import ModelConfig, Transformer, export_hf
from tinyformer.model.fire import fire_module
from tinyformer.train.optim import param_groups

V, T, HEADS = 13, 5, 2


def tiny(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    base = dict(vocab_size=V, n_layers=2, n_heads=HEADS, d_model=16, max_seq_len=16, position="fire", bias=False)
    return Transformer(ModelConfig(**{**base, **kw})).eval()


def set_weights(bias: torch.nn.Module, c: float, threshold: float, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bias.c.fill_(c)
        bias.threshold.fill_(threshold)
        for p in (bias.hidden.weight, bias.hidden.bias, bias.out.weight, bias.out.bias):
            p.copy_(torch.randn(p.shape, generator=g))


def by_hand(bias: torch.nn.Module, i: int, j: int) -> list[float]:
    """b(i, j) = f(log(c (i - j) + 1) / log(c max(L, i) + 1)), f = out(relu(hidden(x))), in plain Python."""
    c, threshold = bias.c.item(), bias.threshold.item()
    x = math.log(c * (i - j) + 1) / math.log(c * max(threshold, i) + 1)
    w1, b1 = bias.hidden.weight[:, 0].tolist(), bias.hidden.bias.tolist()
    hidden = [max(0.0, w * x + b) for w, b in zip(w1, b1)]
    return [sum(w * h for w, h in zip(row, hidden)) + b for row, b in zip(bias.out.weight.tolist(), bias.out.bias.tolist())]


def test_the_bias_is_the_papers_formula_below_and_past_the_threshold():
    bias = fire_module(ModelConfig(n_heads=HEADS, position="fire"))
    set_weights(bias, c=0.7, threshold=2.5)  # queries 0..2 divide by psi(L), queries 3 and 4 by psi(i)
    pos = torch.arange(T).unsqueeze(0)
    got = bias(pos, pos)
    assert got.shape == (1, HEADS, T, T) and got.dtype == torch.float32
    for i in range(T):
        for j in range(i + 1):
            want = by_hand(bias, i, j)
            for h in range(HEADS):
                assert got[0, h, i, j].item() == pytest.approx(want[h], rel=1e-5, abs=1e-5), (i, j, h)


# (0, 1, 2): the 7 positions' table (49 pairs) is smaller than 3 rows of 25 pairs; (0, 3, 9): it is not
@pytest.mark.parametrize("starts", [(0, 1, 2), (0, 3, 9), (4, 4, 4)], ids=["table", "direct", "rows-equal"])
def test_a_row_of_ids_per_sequence_gets_each_rows_own_bias(starts):
    """Ids per row (the lab's batches, left padding, the KV cache) take the shortcuts of FireBias.forward: a
    table of the positions that occur, or one row for equal rows; each row's bias is still its own formula."""
    bias = fire_module(ModelConfig(n_heads=HEADS, position="fire"))
    set_weights(bias, c=0.9, threshold=3.5)
    pos = torch.stack([torch.arange(T) + s for s in starts])
    got = bias(pos, pos).expand(len(starts), -1, -1, -1)
    for row, start in enumerate(starts):
        for i in range(T):
            for j in range(i + 1):
                want = by_hand(bias, start + i, start + j)
                for h in range(HEADS):
                    assert got[row, h, i, j].item() == pytest.approx(want[h], rel=1e-5, abs=1e-5)


def test_the_model_adds_the_bias_to_the_scores_of_every_layer():
    """With queries and keys zeroed every content score is 0: each layer's attention is softmax(bias) over the
    keys a query may see, the same bias in every layer."""
    model = tiny()
    set_weights(model.position_bias, c=1.3, threshold=3.0)
    for layer in model.layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
        torch.nn.init.zeros_(layer.self_attn.k_proj.weight)
    _, _, attentions = model(torch.randint(0, V, (1, T)), return_attention=True)
    for i in range(T):
        scores = [by_hand(model.position_bias, i, j) for j in range(i + 1)]
        for h in range(HEADS):
            exps = [math.exp(s[h]) for s in scores]
            want = [e / sum(exps) for e in exps] + [0.0] * (T - i - 1)
            for probs in attentions:
                torch.testing.assert_close(probs[0, h, i], torch.tensor(want), atol=1e-5, rtol=1e-5)


def test_a_shift_of_every_id_below_the_threshold_changes_nothing_and_past_it_interpolates():
    model = tiny()  # L starts at 32
    ids = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(1))
    logits, _ = model(ids)
    shifted, _ = model(ids, position_ids=torch.arange(10) + 20)  # every query still below L
    torch.testing.assert_close(shifted, logits, atol=1e-5, rtol=1e-5)
    # past L a distance counts relative to the query's position: far from the start, near keys blur together
    set_weights(model.position_bias, c=1.0, threshold=32.0)
    pos = torch.arange(10).unsqueeze(0)
    near, far = model.position_bias(pos, pos), model.position_bias(pos + 1000, pos + 1000)
    visible = torch.ones(10, 10, dtype=torch.bool).tril()
    assert (far - near)[..., visible].abs().max() > 0.1
    torch.testing.assert_close(model.position_bias(pos + 20, pos + 20), near, atol=1e-5, rtol=1e-5)


def test_the_kv_cache_gives_the_full_forward_logits_for_every_new_row():
    model = tiny()
    set_weights(model.position_bias, c=0.8, threshold=4.0)  # queries run past L inside the sequence
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: row 1's positions start at its first real token
    full, _ = model(ids, attention_mask=mask)
    cache = model.new_kv_cache(2, 12)
    for start, end in ((0, 4), (4, 5), (5, 8), (8, 9), (9, 12)):
        logits, _ = model(ids[:, start:end], attention_mask=mask[:, start:end], kv_cache=cache)
        torch.testing.assert_close(logits[0], full[0, start:end], atol=1e-5, rtol=1e-5)
        real = mask[1, start:end].bool()
        torch.testing.assert_close(logits[1][real], full[1, start:end][real], atol=1e-5, rtol=1e-5)
    prompt = ids[:, :4]
    assert torch.equal(model.generate(prompt, 8, temperature=0), model.generate(prompt, 8, temperature=0,
                                                                                  use_cache=False))


def test_its_parameters_are_the_models_counted_saved_and_decayed_as_matrices_are(tmp_path):
    from tinyformer.model.io import load_model, save_model

    model, nope = tiny(), tiny(position="nope")
    fire = dict(model.position_bias.named_parameters())
    assert sorted(fire) == ["c", "hidden.bias", "hidden.weight", "out.bias", "out.weight", "threshold"]
    n_fire = 2 + 32 + 32 + 32 * HEADS + HEADS
    assert model.num_params() - nope.num_params() == n_fire
    assert model.num_params(embeddings=False) - nope.num_params(embeddings=False) == n_fire
    decay, no_decay = (set(map(id, g["params"])) for g in param_groups(model, 0.1))
    assert id(fire["hidden.weight"]) in decay and id(fire["out.weight"]) in decay
    assert {id(fire[n]) for n in ("c", "threshold", "hidden.bias", "out.bias")} <= no_decay
    # a gradient reaches every one of them, L included (queries below it)
    ids = torch.randint(0, V, (2, 9))
    model.train()(ids[:, :-1], ids[:, 1:])[1].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fire.values())
    with torch.no_grad():
        model.position_bias.threshold.fill_(5.5)
    save_model(model, tmp_path / "ckpt")
    back = load_model(tmp_path / "ckpt")
    assert back.position_bias.threshold.item() == 5.5
    torch.testing.assert_close(back.eval()(ids)[0], model.eval()(ids)[0], atol=0, rtol=0)


def test_a_tiny_fire_model_learns_to_copy():
    """Copy 6 random symbols after a separator: the answer sits at a fixed distance back, which a learned
    distance bias can find; the loss on the copy falls from about log 12 to a tenth of it in 300 steps."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=V, n_layers=1, n_heads=2, d_model=32, max_seq_len=16,
                                    position="fire")).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)

    def batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        symbols = torch.randint(0, V - 1, (n, 6), generator=g)
        seq = torch.cat((symbols, torch.full((n, 1), V - 1), symbols), dim=1)  # a b c d e f | a b c d e f
        targets = seq[:, 1:].clone()
        targets[:, :6] = -100  # score only the copy
        return seq[:, :-1], targets

    losses = []
    for _ in range(300):
        x, y = batch()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and sum(losses[-10:]) / 10 < 0.1 * losses[0]


def test_the_hf_export_refuses_it_in_one_line_naming_the_scheme(tmp_path):
    with pytest.raises(TinyformerError, match="position='fire' has no HF equivalent") as err:
        export_hf(tiny(), tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
