"""train.optimizer=muon: torch.optim.Muon on every hidden weight matrix of the blocks and AdamW on the rest (no
tensor in both, none left out, on GPT-2- and Llama-like models, tied or not, with multi-token heads); a step
moves the matrices as a bare torch.optim.Muon does (and as an orthogonalized update would), the rest as
AdamW; the schedule scales both rates; the fp16 loss scaler steps the pair; the settings are checked."""

from __future__ import annotations

import re

import pytest
import torch

from tinyformer.errors import TinyformerError
from tinyformer.model import ModelConfig, Transformer
from tinyformer.model.config import PRESETS
from tinyformer.train.config import TrainConfig
from tinyformer.train.optim import MuonAdamW, build_optimizer, optimizer_for, set_lr

# the hidden matrices by their names, written out independently of how optim.py finds them
HIDDEN = re.compile(r"(layers|mtp_layers)\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")
MUON = TrainConfig(optimizer="muon", lr=1e-3, weight_decay=0.1)


def model(preset: str, **config) -> Transformer:
    torch.manual_seed(0)
    base = dict(vocab_size=40, n_layers=2, n_heads=2, d_model=16, max_seq_len=16)
    return Transformer(ModelConfig(**{**PRESETS[preset], **base, **config}))


def ids_of(groups) -> list[int]:
    return [id(p) for g in groups for p in g["params"]]


@pytest.mark.parametrize("preset,config", [
    ("gpt2", {}), ("gpt2", {"tie_embeddings": False}), ("llama", {}), ("llama", {"tie_embeddings": True}),
    ("llama", {"n_predict": 3}), ("gpt2", {"position": "fire"}), ("llama", {"qk_norm": True}),
])
def test_every_hidden_matrix_is_in_muon_and_every_other_tensor_in_adamw(preset, config):
    net = model(preset, **config)
    opt = optimizer_for(net, MUON)
    assert isinstance(opt, MuonAdamW)
    muon, adamw = ids_of(opt.muon.param_groups), ids_of(opt.adamw.param_groups)
    named = dict(net.named_parameters())  # the tied head appears once, as embed_tokens
    expected = {id(p) for name, p in named.items() if HIDDEN.fullmatch(name)}
    per_block = 4 + (3 if preset == "llama" else 2)
    assert len(expected) == per_block * (2 + config.get("n_predict", 1) - 1)
    assert set(muon) == expected and len(muon) == len(expected)
    assert not set(muon) & set(adamw)
    assert sorted(muon + adamw) == sorted(map(id, named.values()))  # none lost, none twice
    assert all(p.dim() == 2 for g in opt.muon.param_groups for p in g["params"])
    # the rest keep AdamW's decay rule: the embeddings (and an untied head, a position scheme's net) decay,
    # vectors do not
    decay, no_decay = (set(map(id, g["params"])) for g in opt.adamw.param_groups)
    for name, p in named.items():
        if id(p) not in expected:
            assert (id(p) in decay) == (p.dim() >= 2), name
    assert id(net.embed_tokens.weight) in decay and id(net.lm_head.weight) not in set(muon)
    assert opt.adamw.param_groups[0]["weight_decay"] == 0.1 and opt.muon.param_groups[0]["weight_decay"] == 0.1


def test_adamw_runs_get_the_optimizer_they_always_had():
    net = model("gpt2")
    mine, before = optimizer_for(net, TrainConfig(lr=1e-3, weight_decay=0.1)), build_optimizer(net, 1e-3, 0.1)
    assert type(mine) is torch.optim.AdamW
    assert [ids_of([g]) for g in mine.param_groups] == [ids_of([g]) for g in before.param_groups]
    assert [{k: v for k, v in g.items() if k != "params"} for g in mine.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in before.param_groups]


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of Keller Jordan's Muon post, in float32."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / g.norm()
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


def test_a_step_moves_matrices_as_a_bare_muon_and_the_rest_as_adamw():
    net = model("llama")
    opt = optimizer_for(net, MUON)
    gen = torch.Generator().manual_seed(3)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    set_lr(opt, MUON.lr)  # the schedule at its peak: Muon at train.muon_lr
    opt.step()
    for name in ("layers.0.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight", "layers.0.mlp.gate_proj.weight"):
        ref = torch.nn.Parameter(before[name].clone())
        ref.grad = grads[name].clone()
        torch.optim.Muon([ref], lr=MUON.muon_lr, weight_decay=MUON.weight_decay, momentum=MUON.muon_momentum).step()
        after = dict(net.named_parameters())[name].detach()
        assert torch.equal(after, ref.detach()), name
        # and it is the orthogonalized (Nesterov) gradient, scaled by sqrt(max(1, rows / cols)), after decay
        rows, cols = after.shape
        update = (before[name] * (1 - MUON.muon_lr * MUON.weight_decay) - after) / (MUON.muon_lr * max(1, rows / cols) ** 0.5)
        nesterov = grads[name] * (1 - MUON.muon_momentum ** 2)  # from zero momentum: g.lerp(lerp(0, g, 0.05), 0.95)
        expected = newton_schulz(nesterov)
        assert torch.nn.functional.cosine_similarity(update.flatten(), expected.flatten(), dim=0) > 0.99, name
        assert (update - expected).abs().max() < 0.05, name
    name = "embed_tokens.weight"
    ref = torch.nn.Parameter(before[name].clone())
    ref.grad = grads[name].clone()
    torch.optim.AdamW([ref], lr=MUON.lr, weight_decay=MUON.weight_decay, betas=(0.9, 0.95), eps=1e-8).step()
    torch.testing.assert_close(net.embed_tokens.weight.detach(), ref.detach(), rtol=0, atol=1e-7)


def test_the_schedule_scales_both_rates_by_the_same_factor():
    opt = optimizer_for(model("gpt2"), MUON)
    for lr in (MUON.lr, MUON.lr / 4, 0.0):
        set_lr(opt, lr)
        assert all(g["lr"] == lr for g in opt.adamw.param_groups)
        assert all(g["lr"] == pytest.approx(MUON.muon_lr * lr / MUON.lr) for g in opt.muon.param_groups)


def test_the_loss_scaler_unscales_and_steps_the_pair_and_skips_a_step_with_infinite_gradients():
    nets = [model("gpt2"), model("gpt2")]
    opts = [optimizer_for(n, MUON) for n in nets]
    ids = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for net, opt, scaled in zip(nets, opts, (False, True)):
        _, loss = net(ids, targets=ids)
        (scaler.scale(loss) if scaled else loss).backward()
        if scaled:
            scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
    for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    before = [p.detach().clone() for p in nets[1].parameters()]
    _, loss = nets[1](ids, targets=ids)
    scaler.scale(loss).backward()
    nets[1].layers[0].mlp.up_proj.weight.grad[0, 0] = float("inf")
    scaler.unscale_(opts[1])
    scaler.step(opts[1])
    assert all(torch.equal(a, b) for a, b in zip(before, nets[1].parameters()))  # neither optimizer stepped


@pytest.mark.parametrize("settings,phrase", [
    ({"muon_lr": 0.0}, "train.muon_lr must be a positive number"),
    ({"muon_lr": float("nan")}, "train.muon_lr"),
    ({"muon_momentum": 1.0}, "train.muon_momentum must be in [0, 1)"),
    ({"muon_momentum": -0.1}, "train.muon_momentum"),
    ({"optimizer": "muon", "parallel": "fsdp"}, "use parallel=ddp or optimizer=adamw"),
    ({"optimizer": "muon", "lr": 0.0}, "train.lr must be positive"),
])
def test_muon_settings_are_checked(settings, phrase):
    with pytest.raises(TinyformerError, match=re.escape(phrase)):
        TrainConfig(**settings)


def test_an_unknown_optimizer_is_named_with_the_valid_ones():
    from tinyformer.train.config import load_run_config

    with pytest.raises(TinyformerError, match="muon") as err:
        load_run_config(None, ["train.optimizer=muom"])
    assert "\n" not in str(err.value)
