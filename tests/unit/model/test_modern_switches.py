"""The speedruns' switches (qk_norm, mlp=relu2, logit_softcap, zero_init_proj): each against a direct
computation written out here, with shapes and gradients; off by default, and then bit for bit the model before."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from tinyformer.errors import TinyformerError
from tinyformer.model import ModelConfig, Transformer
from tinyformer.model.io import load_model, save_model

SIZE = dict(vocab_size=61, n_layers=2, n_heads=4, d_model=32, max_seq_len=64)
# sha256 (first 32 hex digits) of every parameter at torch seed 0, and of the next 8 draws after construction,
# computed on the model before these switches existed (commit e60d6ff): the defaults change nothing
DEFAULT_DIGESTS = {
    "default": (lambda: ModelConfig(**SIZE), "f22c9a9b82f7421570def77517575012"),
    "llama-mtp": (lambda: ModelConfig.preset("llama", **SIZE, n_predict=2, n_kv_heads=2),
                  "e17feb36c05f5281957691d9be93af84"),
    "fire-unscaled": (lambda: ModelConfig(**SIZE, position="fire", scale_residual_init=False, mlp="gelu"),
                      "7414d92ce3cf539b7fb0f3c0c3fbbd8d"),
}


def build(**config) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**SIZE, **config})).eval()


def ids_of(b=2, t=12, vocab=61, seed=1):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(DEFAULT_DIGESTS))
def test_defaults_build_the_same_parameters_with_the_same_draws(name):
    make, digest = DEFAULT_DIGESTS[name]
    torch.manual_seed(0)
    model = Transformer(make())
    h = hashlib.sha256()
    for n, p in model.state_dict().items():
        h.update(n.encode())
        h.update(p.detach().float().contiguous().numpy().tobytes())
    h.update(torch.randn(8).numpy().tobytes())
    assert h.hexdigest()[:32] == digest


def test_switches_off_forward_is_the_plain_pre_norm_computation():
    """The default forward, written out with the same operations, equals the model's bit for bit."""
    model, ids = build(mlp="gelu"), ids_of()
    with torch.no_grad():
        logits, _ = model(ids)
        x = model.embed_tokens(ids) + model.embed_positions(torch.arange(ids.shape[1]))
        for layer in model.layers:
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q, k, v = (p(h).view(2, 12, 4, 8).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 12, 32)
            x = x + a.o_proj(y)
            m = layer.mlp
            x = x + m.down_proj(F.gelu(m.up_proj(layer.post_attention_layernorm(x))))
        expected = model.lm_head(model.norm(x))
    assert torch.equal(logits, expected)


@pytest.mark.parametrize(
    ("field", "value"),
    [("logit_softcap", 0.0), ("logit_softcap", -3.0), ("logit_softcap", float("inf")), ("qk_norm", "yes"),
     ("zero_init_proj", 1)],
)
def test_out_of_range_values_are_one_line_errors(field, value):
    with pytest.raises(TinyformerError) as err:
        ModelConfig(**{field: value})
    assert f"model.{field}" in str(err.value) and "\n" not in str(err.value)


def test_unknown_mlp_names_relu2_among_the_valid():
    with pytest.raises(TinyformerError, match="relu2"):
        ModelConfig.from_dict({"mlp": "relu3"})


def test_switches_round_trip_through_a_checkpoint(tmp_path):
    model = build(qk_norm=True, mlp="relu2", logit_softcap=15.0, zero_init_proj=True, position="rope")
    with torch.no_grad():
        model.layers[0].self_attn.q_norm.weight.uniform_(0.5, 1.5)
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config
    assert (loaded.config.qk_norm, loaded.config.mlp, loaded.config.logit_softcap,
            loaded.config.zero_init_proj) == (True, "relu2", 15.0, True)
    ids = ids_of()
    assert torch.equal(loaded.eval()(ids)[0], model(ids)[0])
    from_yaml_style = ModelConfig.from_dict({"qk_norm": "true", "logit_softcap": "30", "mlp": "relu2"})
    assert (from_yaml_style.qk_norm, from_yaml_style.logit_softcap) == (True, 30.0)


# ---------------------------------------------------------------- QK-norm


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_qk_norm_scores_are_those_of_normalized_queries_and_keys(position, randomised):
    cfg = ModelConfig(**SIZE, position=position, qk_norm=True, n_kv_heads=2, norm_eps=1e-5)
    model, ids = randomised(cfg), ids_of()
    _, _, attentions = model(ids, return_attention=True)
    with torch.no_grad():
        layer = model.layers[0]
        a = layer.self_attn
        h = layer.input_layernorm(model.embed(ids, torch.arange(12)[None], counted=True))

        def normed(proj, norm, heads):
            z = proj(h).view(2, 12, heads, 8).transpose(1, 2)
            return z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight

        q, k = normed(a.q_proj, a.q_norm, 4), normed(a.k_proj, a.k_norm, 2)
        if position == "rope":
            from tinyformer.model.positions import apply_rope
            rope = cfg.scheme.rotation(torch.arange(12)[None], cfg)
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k = k.repeat_interleave(2, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(8)
        scores = scores.masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), float("-inf"))
        expected = scores.softmax(-1)
    assert attentions[0].shape == (2, 4, 12, 12)
    assert (attentions[0] - expected).abs().max() < 1e-5
    assert a.q_norm.weight.shape == (8,) and a.k_norm.weight.shape == (8,)


def test_qk_norm_gains_get_gradients_and_change_the_output():
    model, ids = build(qk_norm=True).train(), ids_of()
    _, loss = model(ids, ids)
    loss.backward()
    for layer in model.layers:
        for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
            assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    assert not torch.allclose(build(qk_norm=True)(ids)[0], build()(ids)[0])


# ---------------------------------------------------------------- ReLU squared


def test_relu2_mlp_is_down_of_relu_squared_of_up(randomised):
    model = randomised(ModelConfig(**SIZE, mlp="relu2"))
    mlp = model.layers[0].mlp
    assert mlp.up_proj.weight.shape == (4 * 32, 32) and not hasattr(mlp, "gate_proj")
    x = torch.randn(2, 5, 32, requires_grad=True)
    out = mlp(x)
    up = x @ mlp.up_proj.weight.t() + mlp.up_proj.bias
    expected = (torch.clamp(up, min=0) ** 2) @ mlp.down_proj.weight.t() + mlp.down_proj.bias
    assert out.shape == (2, 5, 32) and (out - expected).abs().max() < 1e-4
    out.sum().backward()
    assert x.grad.abs().sum() > 0 and mlp.up_proj.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- logit soft-capping


def test_softcap_logits_and_loss_are_cap_tanh_of_the_uncapped_models(randomised):
    cfg = ModelConfig(**SIZE, tie_embeddings=False)
    raw_model = randomised(cfg)
    capped = randomised(ModelConfig.from_dict({**cfg.to_dict(), "logit_softcap": 2.0}))
    ids = ids_of()
    targets = ids_of(seed=7)
    raw, _ = raw_model(ids)
    logits, loss = capped(ids, targets)
    expected = 2.0 * torch.tanh(raw / 2.0)
    assert raw.abs().max() > 4.0  # the cap really bites
    assert logits.abs().max() <= 2.0 and (logits - expected).abs().max() < 1e-5
    assert abs(loss.item() - F.cross_entropy(expected.reshape(-1, 61), targets.reshape(-1)).item()) < 1e-5
    assert capped.head_logits(ids)[0].allclose(logits)


@pytest.mark.parametrize("autocast", [False, True])
def test_softcap_fused_loss_equals_the_plain_path(autocast):
    """A vocabulary past FUSED_MIN_VOCAB takes the fused head+loss in a training step: same loss, same
    gradients as computing the capped logits."""
    cfg = ModelConfig(**{**SIZE, "vocab_size": 1100}, logit_softcap=3.0, init_std=0.2)
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    ids = ids_of(vocab=1100)
    targets = ids_of(vocab=1100, seed=5)
    targets[0, :3] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        _, fused = model(ids, targets, return_logits=False)
    fused.backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, plain = model(ids, targets)
    plain.backward()
    assert logits.abs().max() > 1.0
    tol = 2e-2 if autocast else 1e-5
    assert abs(fused.item() - plain.item()) < tol
    for n, p in model.named_parameters():
        assert (fused_grads[n] - p.grad).abs().max() <= tol * max(1.0, p.grad.abs().max().item()), n


# ---------------------------------------------------------------- zero-initialized projections


def test_zero_init_projections_are_zero_and_blocks_start_as_identity():
    model, ids = build(zero_init_proj=True, n_predict=2), ids_of()
    names = [n for n, _ in model.named_parameters() if n.endswith(("o_proj.weight", "down_proj.weight"))]
    assert len(names) == 2 * 3  # two layers and the extra head's block
    params = dict(model.named_parameters())
    assert all(torch.count_nonzero(params[n]) == 0 for n in names)
    default = dict(build(n_predict=2).named_parameters())
    assert all(torch.equal(p, default[n]) for n, p in params.items() if n not in names)  # same draws otherwise
    with torch.no_grad():
        logits, _ = model(ids)
        embedded = model.embed_tokens(ids) + model.embed_positions(torch.arange(12))
        assert torch.equal(logits, model.lm_head(model.norm(embedded)))
    _, loss = model.train()(ids, ids_of(seed=3))
    assert abs(loss.item() - math.log(61)) < 0.1  # a fresh, near-uniform model
    loss.backward()
    assert params[names[0]].grad.abs().sum() > 0  # the zero projections do learn


# ---------------------------------------------------------------- generation


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_kv_cache_generation_equals_recompute_with_qk_norm_and_softcap(position, randomised):
    model = randomised(ModelConfig(**SIZE, position=position, qk_norm=True, logit_softcap=5.0, mlp="relu2"))
    prompt = ids_of(3, 5)
    cached = model.generate(prompt, 20, temperature=0)
    recomputed = model.generate(prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(cached, recomputed)
    sampled = model.generate(prompt, 20, seed=3)
    assert torch.equal(sampled, model.generate(prompt, 20, seed=3, use_cache=False))
    assert len(set(cached[:, 5:].flatten().tolist())) > 5
