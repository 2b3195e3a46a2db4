"""The fused output head + cross-entropy (tinyformer.model.loss) against the plain path it replaces in training
steps: same loss, same gradients for every parameter, ignored targets, several heads, autocast, scaling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinyformer.model import ModelConfig, Transformer
from tinyformer.model import loss as fused_loss
from tinyformer.model.loss import FUSED_MIN_VOCAB, linear_cross_entropy


def big_vocab_model(**kw) -> Transformer:
    torch.manual_seed(0)
    base = dict(vocab_size=FUSED_MIN_VOCAB + 37, n_layers=2, n_heads=4, d_model=32, max_seq_len=32)
    return Transformer(ModelConfig(**{**base, **kw}))


def batch(vocab: int, b: int = 3, t: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (b, t), generator=gen)
    targets = torch.randint(0, vocab, (b, t), generator=gen)
    targets[0, :7] = -100
    targets[2, 15:] = -100
    return ids, targets


def loss_and_grads(model: Transformer, ids, targets, **kw) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits, loss = model(ids, targets, **kw)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("block,chunk", [(1 << 21, 24 << 20),  # one block
                                         (5 * (FUSED_MIN_VOCAB + 37), 24 << 20),  # blocks of 5 rows (uneven)
                                         (5 * (FUSED_MIN_VOCAB + 37), 12 * 4 * (FUSED_MIN_VOCAB + 37))])  # 12-row chunks
def test_fused_training_loss_has_the_plain_loss_and_gradients(tie, block, chunk, monkeypatch):
    monkeypatch.setattr(fused_loss, "BLOCK_ELEMENTS", block)
    monkeypatch.setattr(fused_loss, "CHUNK_BYTES", chunk)
    model = big_vocab_model(tie_embeddings=tie, n_predict=2)
    ids, targets = batch(model.config.vocab_size)
    plain_loss, plain = loss_and_grads(model, ids, targets)
    logits, _ = model(ids, targets, return_logits=False)
    assert logits is None
    loss, fused = loss_and_grads(model, ids, targets, return_logits=False)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert fused.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_fused_loss_against_torch_cross_entropy_directly():
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    weight = (0.3 * torch.randn(50, 16, generator=gen)).requires_grad_()
    targets = torch.randint(0, 50, (37,), generator=gen)
    targets[::4] = -100
    loss, has = fused_loss.LinearCrossEntropy.apply(hidden, weight, targets, 8)
    (3.0 * loss).backward()  # the incoming gradient scales both gradients
    got = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    ref = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100)
    (3.0 * ref).backward()
    torch.testing.assert_close(loss, ref)
    assert has.item() == 1.0
    torch.testing.assert_close(got[0], hidden.grad)
    torch.testing.assert_close(got[1], weight.grad)


def test_a_target_the_model_all_but_rules_out_keeps_its_exact_loss():
    # logits where the target trails the best by 40-200 nats: its probability underflows float32 (or loses
    # digits) in the softmax, but the loss must still be the exact log-sum-exp minus the target's logit
    hidden = torch.eye(6, 8, dtype=torch.float64).float().requires_grad_()
    weight = torch.zeros(20, 8)
    gaps = torch.tensor([0.0, 40.0, 70.0, 100.0, 150.0, 200.0])
    weight[0, :6] = gaps  # logit of class 0 in row i: gaps[i]; every other logit 0
    targets = torch.tensor([0, 1, 2, 3, 4, -100])
    loss, _ = fused_loss.LinearCrossEntropy.apply(hidden, weight, targets, 4)
    ref = F.cross_entropy((hidden @ weight.t()).double(), targets, ignore_index=-100)
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize("grad", [True, False])
def test_no_rows_gives_zero_loss(grad):
    hidden = torch.zeros(0, 8, requires_grad=grad)
    weight = torch.randn(FUSED_MIN_VOCAB, 8, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        loss, has = linear_cross_entropy(hidden, weight, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and has.item() == 0.0
    if grad:
        loss.backward()
        assert not weight.grad.any()


def test_every_target_ignored_gives_zero_loss_and_zero_gradients():
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    loss, has = linear_cross_entropy(hidden, weight, torch.full((6,), -100))
    loss.backward()
    assert loss.item() == 0.0 and has.item() == 0.0
    assert not hidden.grad.any() and not weight.grad.any()


def test_without_gradients_the_fused_loss_is_the_plain_loss():
    model = big_vocab_model()
    ids, targets = batch(model.config.vocab_size)
    with torch.no_grad():
        _, plain = model(ids, targets)
        _, fused = model(ids, targets, return_logits=False)
    torch.testing.assert_close(fused, plain)


def test_fused_loss_under_bf16_autocast_is_close_to_the_plain_one():
    model = big_vocab_model()
    ids, targets = batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_loss, plain = loss_and_grads(model, ids, targets)
        loss, fused = loss_and_grads(model, ids, targets, return_logits=False)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-2, atol=1e-2)
    for name in plain:
        assert fused[name].dtype == plain[name].dtype == torch.float32
        if name.endswith("k_proj.bias"):  # exactly zero in exact arithmetic (a key bias moves all of a query's
            continue  # scores alike, which softmax ignores): both sides hold rounding noise only
        scale = plain[name].abs().max()
        assert (fused[name] - plain[name]).abs().max() <= 0.03 * scale, name


def test_small_vocabularies_keep_the_plain_path_bit_for_bit():
    """Character and lab-task vocabularies are below FUSED_MIN_VOCAB: a training step there computes exactly
    what it computed before the fused head existed, so recorded lab results stay reproducible."""
    model = big_vocab_model(vocab_size=61)
    ids, targets = batch(61)
    plain_loss, plain = loss_and_grads(model, ids, targets)
    loss, same = loss_and_grads(model, ids, targets, return_logits=False)
    assert torch.equal(loss, plain_loss)
    assert all(torch.equal(same[n], plain[n]) for n in plain)
