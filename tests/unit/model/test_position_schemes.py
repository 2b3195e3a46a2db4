"""The table of position schemes (tinyformer.model.positions.SCHEMES): every entry builds a model that trains,
and each property the table states holds in what the model, the lab and the HF export do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinyformer.errors import TinyformerError
from tinyformer.lab.setup import TaskSetup, model_position, scheme_label
from tinyformer.lab.sweep import lab_config
from tinyformer.model import ModelConfig, Transformer, export_hf, import_hf
from tinyformer.model.hf_config import ARCHITECTURES
from tinyformer.model.positions import LAB_NAMES, SCHEMES, scheme

NAMES = list(SCHEMES)
V, T, TABLE = 23, 10, 16
# one config per HF family that fits everything else the family needs, so only the scheme decides
FAMILY_FIT = {
    "gpt2": dict(norm="layernorm", mlp="gelu_tanh", bias=True),
    "llama": dict(norm="rmsnorm", mlp="swiglu", bias=False),
    "mpt": dict(norm="layernorm", mlp="gelu", bias=False),
}


def tiny(name: str, seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    base = dict(vocab_size=V, n_layers=2, n_heads=4, d_model=32, max_seq_len=TABLE, position=name)
    model = Transformer(ModelConfig(**{**base, **kw})).eval()
    if model.config.scheme.learns_bias:  # a learned bias that starts at 0 (coupled-relative's) gets random weights
        with torch.no_grad():
            for p in model.position_bias.parameters():
                if not p.any():
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 5)))
    return model


def ids_of(b: int = 2, t: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


def caller_ids(name: str, t: int = T) -> torch.Tensor | None:
    """Position ids a caller of a scheme that needs them would pass (digit-run style: 0, 1, 2, 0, 1, ...)."""
    return torch.arange(t) % 4 if scheme(name).needs_caller_ids else None


def first_layer_attention(model: Transformer, ids: torch.Tensor, position_ids=None) -> torch.Tensor:
    return model(ids, position_ids=position_ids, return_attention=True)[2][0]  # [B, H, T, T]


@pytest.mark.parametrize("name", NAMES)
def test_every_scheme_builds_a_model_that_trains(name):
    model = tiny(name).train()
    ids, pos = ids_of(4, T + 1), caller_ids(name)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        _, loss = model(ids[:, :-1], ids[:, 1:], position_ids=pos)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]  # it learns the fixed batch


@pytest.mark.parametrize("name", NAMES)
def test_has_table_is_a_learned_position_parameter_of_n_positions_rows(name):
    model = tiny(name, n_positions=24)
    position_params = {n: p for n, p in model.named_parameters() if "position" in n}
    if scheme(name).has_table:
        assert list(position_params) == ["embed_positions.weight"]
        assert tuple(position_params["embed_positions.weight"].shape) == (24, 32)
        assert position_params["embed_positions.weight"].requires_grad
    else:  # nothing position-related is learned but a learned bias's own module (FIRE's `position_bias`)
        bias_params = {n: p for n, p in position_params.items() if n.startswith("position_bias.")}
        assert position_params == bias_params and bool(bias_params) == scheme(name).learns_bias
        # and the parameter count is nope's plus that module's
        n_bias = sum(p.numel() for p in bias_params.values())
        assert model.num_params() == tiny("nope", n_positions=24).num_params() + n_bias


@pytest.mark.parametrize("name", NAMES)
def test_a_table_scheme_refuses_ids_outside_its_table_and_the_others_run_past_it(name):
    model = tiny(name)
    long_ids = ids_of(1, TABLE + 4)
    if scheme(name).has_table:
        with pytest.raises(TinyformerError, match="outside the .* position table") as err:
            model(long_ids, position_ids=torch.arange(TABLE + 4))
        assert "\n" not in str(err.value)
    else:
        assert torch.isfinite(model(long_ids, position_ids=torch.arange(TABLE + 4))[0]).all()


@pytest.mark.parametrize("name", NAMES)
def test_limits_context_is_whether_a_longer_input_than_the_table_can_run(name):
    model = tiny(name)
    long_ids = ids_of(1, TABLE + 4)
    pos = caller_ids(name, TABLE + 4)  # digit-run ids stay small however long the input
    if scheme(name).limits_context:
        with pytest.raises(TinyformerError, match="position table"):
            model(long_ids, position_ids=pos)
    else:
        assert torch.isfinite(model(long_ids, position_ids=pos)[0]).all()


@pytest.mark.parametrize("name", NAMES)
def test_biases_attention_is_a_distance_bias_that_content_cannot_explain(name):
    """With the query and key projections zeroed every content score is 0: attention is uniform over the
    visible keys unless the scheme adds a bias, and then it falls with the distance (ALiBi's), or is whatever
    the learned one (FIRE's, coupled-relative's) makes of the distance: not uniform, and the same in every
    layer."""
    model = tiny(name, bias=False)
    for layer in model.layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
        torch.nn.init.zeros_(layer.self_attn.k_proj.weight)
    attentions = model(ids_of(1), position_ids=caller_ids(name), return_attention=True)[2]
    last = attentions[0][0, :, -1, :]  # [H, T]: the last query sees all T keys
    if scheme(name).learns_bias:
        assert not torch.allclose(last, torch.full_like(last, 1 / T), atol=1e-3)
        torch.testing.assert_close(attentions[1], attentions[0], atol=0, rtol=0)
    elif scheme(name).biases_attention:
        assert (last[:, 1:] > last[:, :-1]).all()  # nearer keys weigh more, in every head
    else:
        torch.testing.assert_close(last, torch.full_like(last, 1 / T))


@pytest.mark.parametrize("name", [n for n in NAMES if scheme(n).relative and not scheme(n).biases_attention])
def test_rotates_makes_identical_tokens_at_other_positions_score_differently(name):
    """Among schemes that add nothing to the embeddings and no bias, only a rotating one tells apart keys that
    hold the same token: without it every key looks the same and attention is uniform."""
    model = tiny(name)
    same = torch.full((1, T), 5)
    last = first_layer_attention(model, same)[0, :, -1, :]
    uniform = torch.allclose(last, torch.full_like(last, 1 / T), atol=1e-6)
    assert uniform != scheme(name).rotates


@pytest.mark.parametrize("name", NAMES)
def test_relative_schemes_ignore_a_constant_shift_of_every_position_id(name):
    model = tiny(name, n_positions=40)
    ids = ids_of()
    base = caller_ids(name) if scheme(name).needs_caller_ids else torch.arange(T)
    logits, _ = model(ids, position_ids=base)
    shifted, _ = model(ids, position_ids=base + 7)
    if scheme(name).relative:
        torch.testing.assert_close(shifted, logits, atol=1e-4, rtol=1e-4)
    else:
        assert (shifted - logits).abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_needs_caller_ids_refuses_a_call_without_ids_and_uses_the_ids_it_is_given(name):
    model, ids = tiny(name), ids_of()
    if scheme(name).needs_caller_ids:
        with pytest.raises(TinyformerError, match=f"position='{name}' needs position_ids") as err:
            model(ids)
        assert "\n" not in str(err.value)
        with pytest.raises(TinyformerError, match="needs position_ids"):
            model.generate(ids, 2, temperature=0)
        other = torch.arange(T) % 3
        assert (model(ids, position_ids=caller_ids(name))[0] - model(ids, position_ids=other)[0]).abs().max() > 1e-3
    else:  # without ids the model counts 0..T-1 itself
        torch.testing.assert_close(model(ids)[0], model(ids, position_ids=torch.arange(T))[0], atol=0, rtol=0)


def test_an_odd_head_size_is_refused_exactly_for_rotating_schemes():
    for name in NAMES:
        cfg = dict(d_model=36, n_heads=4, position=name)  # head size 9
        if scheme(name).rotates:
            with pytest.raises(TinyformerError, match="even head size"):
                ModelConfig(**cfg)
        else:
            assert ModelConfig(**cfg).head_dim == 9


@pytest.mark.parametrize("name", NAMES)
def test_hf_family_is_exactly_the_export_that_succeeds(name, tmp_path):
    family = scheme(name).hf_family
    for fit_family, fit in FAMILY_FIT.items():
        model = tiny(name, **fit, vocab_size=V)
        out = tmp_path / f"{name}-{fit_family}"
        if family is None:
            with pytest.raises(TinyformerError, match=f"position='{name}' has no HF equivalent") as err:
                export_hf(model, out)
            assert "\n" not in str(err.value) and not out.exists()
        elif fit_family != family:
            with pytest.raises(TinyformerError, match="has no equivalent there"):
                export_hf(model, out)  # the scheme picks the family; the other families' configs do not fit it
        else:
            export_hf(model, out)
            assert json.loads((out / "config.json").read_text())["model_type"] == family
            back = import_hf(out)  # and the way back lands on the same scheme, with the same logits
            assert back.config.position == name
            ids = ids_of()
            torch.testing.assert_close(back(ids)[0], model(ids)[0], atol=0, rtol=0)


def test_every_hf_family_tinyformer_writes_is_some_schemes_export():
    assert {s.hf_family for s in SCHEMES.values()} - {None} == set(ARCHITECTURES) == set(FAMILY_FIT)


@pytest.mark.parametrize("name", NAMES)
def test_trained_at_random_offsets_is_what_the_lab_stream_does(name):
    setup = TaskSetup(lab_config({"task.name": "add", "model.position": name, "eval.examples": 4}))
    batch = setup.stream(16).next_batch()
    counted = torch.from_numpy(np.asarray(setup.eval_positions(batch["ids"].numpy())))
    offset = not torch.equal(batch["position_ids"], counted)
    assert offset == scheme(name).trained_at_random_offsets == setup.random_offset
    assert int(batch["position_ids"].max()) < setup.table_size  # offsets stay inside the table


def test_every_lab_name_resolves_and_every_scheme_keeps_its_report_name():
    assert list(LAB_NAMES)[:2] == ["ape", "learned"] and set(SCHEMES) <= set(LAB_NAMES)
    for label, s in LAB_NAMES.items():
        assert model_position(label) == s.name
    for name in NAMES:
        assert model_position(scheme_label(name)) == name  # a result folder's name leads back to the scheme
    assert scheme_label("learned") == "ape" and scheme_label("rope") == "rope"


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: ModelConfig(position="rop"), r"unknown position 'rop'; did you mean 'rope'\? valid values: learned, "),
        (lambda: ModelConfig(position="alibl"), r"did you mean 'alibi'\?"),
        (lambda: model_position("apee"), r"unknown position scheme 'apee'; did you mean 'ape'\? valid schemes: ape, "),
        (lambda: ModelConfig(position="rotary"), r"unknown position 'rotary'; valid values: learned, sinusoidal, rope"),
    ],
)
def test_an_unknown_scheme_is_a_one_line_error_with_a_suggestion(make, expected):
    with pytest.raises(TinyformerError, match=expected) as err:
        make()
    assert "\n" not in str(err.value)


def test_a_config_value_is_a_scheme_name_not_an_alias():
    """The paper's `ape` is a lab name (`--pe ape`); model.position keeps the names configs have always used."""
    with pytest.raises(TinyformerError, match="unknown position 'ape'"):
        ModelConfig(position="ape")
    assert ModelConfig(position="learned").scheme is scheme("ape", aliases=True)
