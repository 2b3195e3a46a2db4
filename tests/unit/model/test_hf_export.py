"""HF export/import against the real `transformers` classes: no missing keys, same logits, same greedy text."""

from __future__ import annotations

import json

import pytest
import torch

from tinyformer.errors import TinyformerError
from tinyformer.model import ModelConfig, Transformer
from tinyformer.model.hf import export_hf, import_hf
from tinyformer.model.hf_config import hf_family

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 97
SIZE = dict(vocab_size=VOCAB, n_layers=2, d_model=64, n_heads=4, max_seq_len=48)
CASES = {  # name: (config, the transformers class it exports as)
    "gpt2": (lambda: ModelConfig.preset("gpt2", **SIZE), "GPT2LMHeadModel"),
    "gpt2-untied-exact-gelu": (lambda: ModelConfig.preset("gpt2", **SIZE, mlp="gelu", tie_embeddings=False, d_ff=96),
                               "GPT2LMHeadModel"),
    "llama-gqa": (lambda: ModelConfig.preset("llama", **SIZE, n_kv_heads=2, rope_theta=500.0), "LlamaForCausalLM"),
    "llama-linear-scaling-bias-tied": (lambda: ModelConfig.preset("llama", **SIZE, rope_scaling=4.0, bias=True,
                                                                  tie_embeddings=True), "LlamaForCausalLM"),
    "mpt": (lambda: ModelConfig(**SIZE, position="alibi", norm="layernorm", bias=False, mlp="gelu"), "MptForCausalLM"),
    "mpt-6-heads-untied": (lambda: ModelConfig(**{**SIZE, "d_model": 48, "n_heads": 6}, position="alibi", bias=False,
                                               mlp="gelu", tie_embeddings=False), "MptForCausalLM"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory, randomised):
    make_cfg, architecture = CASES[request.param]
    model = randomised(make_cfg())
    out = tmp_path_factory.mktemp("hf") / request.param
    export_hf(model, out)
    hf_model, info = getattr(transformers, architecture).from_pretrained(out, output_loading_info=True)
    return model, hf_model.eval(), info, out


def test_loads_with_no_missing_or_unexpected_keys(exported):
    _, hf_model, info, _ = exported
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_same_logits_as_hf(exported):
    model, hf_model, _, _ = exported
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf_model(ids).logits
    assert ours.abs().max() > 1.0  # real, varied logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_same_logits_with_left_padding(exported):
    model, hf_model, _, _ = exported
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        ours, _ = model(ids, attention_mask=mask)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {} if hf_model.config.model_type == "mpt" else {"position_ids": positions}
        theirs = hf_model(ids, attention_mask=mask, **kwargs).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() <= 1e-4


def test_import_round_trip_gives_identical_logits(exported):
    model, hf_model, _, out = exported
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, _ = model(ids)
        from_dir, _ = import_hf(out)(ids)
        from_object, _ = import_hf(hf_model)(ids)
    assert torch.equal(from_dir, ours) and torch.equal(from_object, ours)
    assert import_hf(out).config.resolved() == model.config.resolved()


def test_hf_greedy_generate_equals_ours(exported):
    model, hf_model, _, _ = exported
    prompt = torch.randint(0, VOCAB, (8, 6), generator=torch.Generator().manual_seed(5))
    ours = model.generate(prompt, 30, temperature=0)
    theirs = hf_model.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0)
    assert ours.tolist() == theirs.tolist()
    assert len(set(ours[:, 6:].flatten().tolist())) > 10  # varied text, not one token repeated


def test_rope_settings_reach_hf(tmp_path, randomised):
    """rope_theta is written at top level and in rope_parameters, linear scaling as rope_scaling; and the HF
    model really uses them (its logits change with them as ours do)."""
    cfg = CASES["llama-linear-scaling-bias-tied"][0]()
    export_hf(randomised(cfg), tmp_path / "a")
    written = json.loads((tmp_path / "a" / "config.json").read_text())
    assert written["rope_theta"] == cfg.rope_theta == written["rope_parameters"]["rope_theta"]
    assert written["rope_scaling"]["factor"] == 4.0 and written["rope_scaling"]["rope_type"] == "linear"
    loaded = transformers.AutoConfig.from_pretrained(tmp_path / "a")
    assert loaded.rope_parameters["factor"] == 4.0 and loaded.rope_parameters["rope_theta"] == cfg.rope_theta
    unscaled = randomised(ModelConfig.from_dict({**cfg.to_dict(), "rope_scaling": 1.0}))
    ids = torch.randint(0, VOCAB, (1, 30))
    assert not torch.allclose(unscaled(ids)[0], randomised(cfg)(ids)[0], atol=1e-3)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (dict(position="sinusoidal"), "position='sinusoidal' has no HF equivalent"),
        (dict(position="nope"), "position='nope' has no HF equivalent"),
        (dict(position="learned", norm="rmsnorm"), "exports as GPT2LMHeadModel, but norm='rmsnorm'"),
        (dict(position="learned", n_kv_heads=2), "n_kv_heads=2 has no equivalent"),
        (dict(position="rope", mlp="gelu"), "exports as LlamaForCausalLM, but norm='layernorm'"),
        (dict(position="alibi", bias=True, mlp="gelu"), "exports as MptForCausalLM, but bias=True"),
        (dict(position="alibi", bias=False, mlp="gelu_tanh"), "mlp='gelu_tanh' has no equivalent"),
        (dict(position="alibi", bias=False, mlp="gelu", d_ff=100), "d_ff=100 has no equivalent"),
        (dict(position="learned", qk_norm=True), "qk_norm=True has no equivalent"),
        (dict(position="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True), "qk_norm=True has no equivalent"),
        (dict(position="rope", norm="rmsnorm", mlp="relu2"), "mlp='relu2' has no equivalent"),
        (dict(position="learned", mlp="relu2"), "mlp='relu2' has no equivalent"),
        (dict(position="alibi", bias=False, mlp="gelu", logit_softcap=30.0), "logit_softcap=30.0 has no equivalent"),
        (dict(position="rope", norm="rmsnorm", mlp="swiglu", logit_softcap=30.0), "logit_softcap=30.0 has no"),
    ],
)
def test_combinations_without_an_hf_equivalent_are_refused(overrides, needle, tmp_path):
    cfg = ModelConfig(**{**dict(vocab_size=VOCAB, n_layers=1, d_model=32, n_heads=4), **overrides})
    with pytest.raises(TinyformerError) as err:
        export_hf(Transformer(cfg), tmp_path / "out")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_hf_family_of_presets():
    assert hf_family(ModelConfig.preset("gpt2")) == "gpt2"
    assert hf_family(ModelConfig.preset("llama")) == "llama"


def test_zero_init_projections_export_and_match_hf(tmp_path):
    """zero_init_proj is only an init: the model exports, and HF's logits are ours (before and after a step)."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset("llama", **SIZE, zero_init_proj=True))
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(6))
    _, loss = model(ids, ids)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    assert model.layers[0].self_attn.o_proj.weight.abs().max() > 0
    export_hf(model.eval(), tmp_path / "z")
    hf_model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "z").eval()
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf_model(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
