"""The Transformer: config validation, loss, multi-token heads, padding, attention capture, init, counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinyformer.errors import TinyformerError
from tinyformer.model import ModelConfig, Transformer
from tinyformer.model.transformer import shift_targets

POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "nope", "abacus"]


def positions_for(position: str, b: int, t: int) -> torch.Tensor | None:
    return torch.arange(t).expand(b, t) if position == "abacus" else None


# ---------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(d_model=30, n_heads=4), "not divisible by model.n_heads"),
        (dict(n_heads=4, n_kv_heads=3), "not divisible by model.n_kv_heads"),
        (dict(d_model=36, n_heads=4, position="rope"), "even head size"),
        (dict(position="rotary"), "valid values: learned, sinusoidal, rope, alibi, nope, fire, abacus"),
        (dict(norm="batchnorm"), "valid values: layernorm, rmsnorm"),
        (dict(mlp="relu"), "valid values: gelu, gelu_tanh, swiglu"),
        (dict(dropout=1.5), "dropout"),
        (dict(n_layers=0), "n_layers"),
    ],
)
def test_config_that_cannot_work_is_a_one_line_error(kwargs, needle):
    with pytest.raises(TinyformerError) as err:
        ModelConfig(**kwargs)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_config_from_dict_names_the_closest_key_and_round_trips():
    with pytest.raises(TinyformerError, match="did you mean 'n_heads'"):
        ModelConfig.from_dict({"n_head": 4})
    cfg = ModelConfig.preset("llama", n_kv_heads=2, rope_theta="5e5")
    assert cfg.rope_theta == 500000.0 and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TinyformerError, match="valid values: gpt2, llama"):
        ModelConfig.preset("gpt3")


def test_published_parameter_counts_of_gpt2_small_and_llama2_7b():
    """124,439,808 (GPT-2 small, HF) and 6,738,415,616 (Llama-2-7B) are published counts; meta device = no memory."""
    with torch.device("meta"):
        gpt2 = Transformer(
            ModelConfig.preset(
                "gpt2", vocab_size=50257, n_layers=12, n_heads=12, d_model=768, max_seq_len=1024
            )
        )
        llama = Transformer(
            ModelConfig.preset(
                "llama", vocab_size=32000, n_layers=32, n_heads=32, d_model=4096, d_ff=11008, max_seq_len=4096
            )
        )
    assert gpt2.num_params() == 124_439_808
    assert llama.num_params() == 6_738_415_616


def test_num_params_without_embeddings_and_flops_formula():
    cfg = ModelConfig(
        vocab_size=100, n_layers=3, n_heads=4, d_model=32, d_ff=80, max_seq_len=16, tie_embeddings=False
    )
    model = Transformer(cfg)
    d, f, L, V, P = 32, 80, 3, 100, 16
    per_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * (2 * d)  # attention, mlp, two LayerNorms
    body = L * per_layer + 2 * d  # + final LayerNorm
    assert model.num_params(embeddings=False) == body
    assert model.num_params() == body + V * d + P * d + V * d  # token table, position table, untied head
    # 6 N (N = every matmul weight, the unembedding included) + 12 L d T for the attention scores
    assert model.flops_per_token(16) == 6 * (body + V * d) + 12 * L * d * 16


# ---------------------------------------------------------------------------- loss and heads


def test_loss_is_cross_entropy_ignoring_minus_100(tiny_model):
    model = tiny_model()
    ids = torch.randint(0, 61, (2, 12))
    targets = torch.randint(0, 61, (2, 12))
    targets[0, :5] = -100
    logits, loss = model(ids, targets)
    keep = targets != -100
    reference = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, reference)
    assert model(ids)[1] is None


def test_shift_targets_gives_head_k_the_token_k_ahead():
    targets = torch.tensor([[11, 12, 13, 14]])  # targets[t] = token t+1
    assert shift_targets(targets, 1).tolist() == [[11, 12, 13, 14]]
    assert shift_targets(targets, 2).tolist() == [[12, 13, 14, -100]]  # token t+2
    assert shift_targets(targets, 3).tolist() == [[13, 14, -100, -100]]


def test_multi_token_loss_is_the_mean_of_the_heads(tiny_model):
    model = tiny_model(n_predict=3)
    ids = torch.randint(0, 61, (2, 10))
    targets = torch.randint(0, 61, (2, 10))
    _, loss = model(ids, targets)
    heads = model.head_logits(ids)
    assert len(heads) == 3
    torch.testing.assert_close(heads[0], model(ids)[0])
    per_head = []
    for k, logits in enumerate(heads, start=1):
        t = shift_targets(targets, k)
        keep = t != -100
        per_head.append(F.cross_entropy(logits[keep], t[keep]))
    torch.testing.assert_close(loss, torch.stack(per_head).mean())


def test_second_head_learns_the_token_two_ahead():
    """On a cycle 0..9 the token two ahead is determined; head 2 must learn it (it would not if misaligned)."""
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=10, n_layers=1, n_heads=2, d_model=32, max_seq_len=16, n_predict=2)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        start = torch.randint(0, 10, (16, 1))
        seq = (start + torch.arange(17)) % 10
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seq = (torch.arange(10).view(10, 1) + torch.arange(16)) % 10
    second = model.head_logits(seq)[1].argmax(-1)
    accuracy = (second[:, :-2] == seq[:, 2:]).float().mean().item()
    assert accuracy > 0.95


# ---------------------------------------------------------------------------- padding, attention capture


@pytest.mark.parametrize("position", POSITIONS)
def test_left_padded_batch_matches_each_row_alone(tiny_model, position):
    model = tiny_model(position)
    a = torch.randint(0, 61, (1, 9))
    b = torch.randint(0, 61, (1, 5))
    pad = 4
    batch = torch.cat((a, torch.cat((torch.zeros(1, pad, dtype=torch.long), b), 1)))
    mask = torch.ones_like(batch)
    mask[1, :pad] = 0
    pos = None
    if position == "abacus":
        pos = torch.stack((torch.arange(9), torch.cat((torch.zeros(pad, dtype=torch.long), torch.arange(5)))))
    logits, _ = model(batch, attention_mask=mask, position_ids=pos)
    alone_a, _ = model(a, position_ids=positions_for(position, 1, 9))
    alone_b, _ = model(b, position_ids=positions_for(position, 1, 5))
    torch.testing.assert_close(logits[0], alone_a[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, pad:], alone_b[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("position", ["learned", "alibi"])
def test_captured_attention_is_a_causal_distribution_and_same_output(tiny_model, position):
    model = tiny_model(position, n_kv_heads=2)
    ids = torch.randint(0, 61, (2, 7))
    logits, _ = model(ids)
    logits2, _, attn = model(ids, return_attention=True)
    torch.testing.assert_close(logits, logits2, atol=1e-5, rtol=1e-5)
    assert len(attn) == 2 and attn[0].shape == (2, 4, 7, 7)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(2, 4, 7))
    assert (attn[0].triu(1) == 0).all()  # nothing attends to the future


def test_future_tokens_do_not_change_the_past(tiny_model):
    for position in POSITIONS:
        model = tiny_model(position)
        ids = torch.randint(0, 61, (1, 10))
        changed = ids.clone()
        changed[0, 6:] = (changed[0, 6:] + 1) % 61
        pos = positions_for(position, 1, 10)
        torch.testing.assert_close(
            model(ids, position_ids=pos)[0][:, :6], model(changed, position_ids=pos)[0][:, :6]
        )


# ---------------------------------------------------------------------------- initialisation, determinism


def test_gpt2_style_initialisation():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=500, n_layers=8, n_heads=4, d_model=256, max_seq_len=64)
    model = Transformer(cfg)
    layer = model.layers[3]
    assert abs(layer.self_attn.q_proj.weight.std().item() - 0.02) < 0.002
    assert abs(model.embed_tokens.weight.std().item() - 0.02) < 0.002
    residual = 0.02 / math.sqrt(2 * 8)
    assert abs(layer.self_attn.o_proj.weight.std().item() - residual) < residual * 0.1
    assert abs(layer.mlp.down_proj.weight.std().item() - residual) < residual * 0.1
    assert (layer.self_attn.q_proj.bias == 0).all()
    assert model.lm_head.weight is model.embed_tokens.weight


def test_same_seed_same_model_and_dropout_only_in_training(tiny_model):
    a, b = tiny_model(dropout=0.5), tiny_model(dropout=0.5)
    ids = torch.randint(0, 61, (2, 8))
    torch.testing.assert_close(a(ids)[0], b(ids)[0])  # eval: dropout off, identical init
    a.train()
    assert not torch.allclose(a(ids)[0], b(ids)[0])


def test_bad_position_ids_shape_is_an_error(tiny_model):
    model = tiny_model("rope")
    with pytest.raises(TinyformerError, match="position_ids has shape"):
        model(torch.zeros(2, 5, dtype=torch.long), position_ids=torch.arange(4))


def test_default_forward_stays_on_the_sdpa_path(tiny_model, monkeypatch):
    """Attention capture is opt-in: without return_attention the explicit softmax path is never taken."""
    import tinyformer.model.attention as attention

    def explicit(*args, **kwargs):
        raise AssertionError("explicit attention used without return_attention=True")

    monkeypatch.setattr(attention, "attention_with_probs", explicit)
    for position in ("learned", "alibi"):
        model = tiny_model(position)
        ids = torch.randint(0, 61, (2, 6))
        model(ids, targets=ids)
        model.generate(ids, 3, temperature=0)
        with pytest.raises(AssertionError, match="explicit attention"):
            model(ids, return_attention=True)


def test_the_float32_kernel_runs_attention_in_float32_under_bf16_autocast(monkeypatch):
    # train.sdpa_backend=fp32 (and autotune's bf16/fp32 candidate): every layer's SDPA call gets float32
    # q, k, v although autocast is on; the rest of the step stays in bf16 and trains the same
    from tinyformer.model import attention
    from tinyformer.train.runtime import sdpa_backend

    seen: list = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda q, *a, **k: seen.append(q.dtype) or real(q, *a, **k))
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, n_layers=3, n_heads=2, d_model=32, max_seq_len=16))
    ids = torch.randint(0, 50, (4, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(ids, targets=ids)
        with sdpa_backend("fp32"):
            logits32, loss32 = model(ids, targets=ids)
    assert seen == [torch.bfloat16] * 3 + [torch.float32] * 3
    assert logits32.dtype == logits.dtype == torch.bfloat16
    with torch.no_grad():
        exact, _ = model(ids, targets=ids)  # float32 throughout
    # the float32 kernel is at least as close to the float32 model as the bf16 one
    assert (logits32.float() - exact).abs().max() <= (logits.float() - exact).abs().max() * 1.05
    loss32.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert loss32.item() == pytest.approx(loss.item(), rel=1e-2)
