"""The config half of the HF `transformers` mapping: which HF family a model is, its `config.json`, and
back. GPT-2 (learned positions), Llama (RoPE), MPT (ALiBi): the position scheme picks the family; every other
switch must then match what that family can express, or the export is refused with a message naming the
switches that have no HF equivalent. The weights and files are in `tinyformer.model.hf`.
"""

from __future__ import annotations

import math
from typing import Any

from tinyformer.errors import TinyformerError
from tinyformer.model.config import ModelConfig
from tinyformer.model.positions import SCHEMES

# which family a scheme exports as is the scheme's `hf_family` (tinyformer.model.positions.SCHEMES)
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mpt": "MptForCausalLM"}
FAMILY_NAMES = {"gpt2": "GPT-2", "llama": "Llama", "mpt": "MPT"}
POSITION_OF_FAMILY = {s.hf_family: s.name for s in SCHEMES.values() if s.hf_family}  # import: the way back
GELU_NAMES = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
MPT_ALIBI_BIAS_MAX = 8  # our slopes are the paper's, which are MPT's with alibi_bias_max = 8


def _requirements(cfg: ModelConfig, family: str) -> list[tuple[str, Any, str]]:
    """(switch, our value, what the HF family needs) for every switch that does not fit."""
    need: list[tuple[str, bool, str]] = []
    if family == "gpt2":
        need += [
            ("norm", cfg.norm == "layernorm", "'layernorm'"),
            ("mlp", cfg.mlp in ("gelu", "gelu_tanh"), "'gelu' or 'gelu_tanh'"),
            ("bias", cfg.bias, "true"),
            ("n_kv_heads", cfg.num_kv_heads == cfg.n_heads, "equal to n_heads (no grouped-query attention)"),
        ]
    elif family == "llama":
        need += [
            ("norm", cfg.norm == "rmsnorm", "'rmsnorm'"),
            ("mlp", cfg.mlp == "swiglu", "'swiglu'"),
        ]
    else:
        need += [
            ("norm", cfg.norm == "layernorm", "'layernorm'"),
            ("mlp", cfg.mlp == "gelu", "'gelu' (exact erf GELU)"),
            ("bias", not cfg.bias, "false"),
            ("d_ff", cfg.ffn_dim == 4 * cfg.d_model, f"4 * d_model = {4 * cfg.d_model}"),
            ("n_kv_heads", cfg.num_kv_heads == cfg.n_heads, "equal to n_heads (no grouped-query attention)"),
        ]
    # none of the three families normalizes queries/keys or caps logits (zero_init_proj is only an init)
    need += [("qk_norm", not cfg.qk_norm, "false"), ("logit_softcap", cfg.logit_softcap is None, "null")]
    return [(name, getattr(cfg, name), want) for name, ok, want in need if not ok]


def hf_family(cfg: ModelConfig) -> str:
    """'gpt2', 'llama' or 'mpt'; a TinyformerError naming what has no HF equivalent otherwise."""
    family = cfg.scheme.hf_family
    if family is None:
        raise TinyformerError(f"position={cfg.position!r} has no HF equivalent; export supports {_exportable()}")
    bad = _requirements(cfg, family)
    if bad:
        wants = "; ".join(
            f"{name}={value!r} has no equivalent there (needs {want})" for name, value, want in bad
        )
        raise TinyformerError(f"position={cfg.position!r} exports as {ARCHITECTURES[family]}, but {wants}")
    return family


def _exportable() -> str:
    """'learned (GPT-2), rope (Llama) and alibi (MPT)': every scheme with an HF family."""
    names = [f"{s.name} ({FAMILY_NAMES[s.hf_family]})" for s in SCHEMES.values() if s.hf_family]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


# ---------------------------------------------------------------------------- configs


def hf_config(cfg: ModelConfig, bos_token_id: int | None = None, eos_token_id: int | None = None) -> dict:
    """The HF `config.json` contents for our config."""
    family = hf_family(cfg)
    common = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": "float32",
    }
    if family == "gpt2":
        return {
            **common,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_embd": cfg.d_model,
            "n_inner": cfg.ffn_dim,
            "n_positions": cfg.position_table_size,
            "n_ctx": cfg.position_table_size,
            "activation_function": "gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }
    if family == "llama":
        rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        out = {
            **common,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.ffn_dim,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps,
            "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias,
            "attention_dropout": cfg.dropout,
            # transformers 4.x reads the top-level rope_theta, 5.x reads rope_parameters: write both
            "rope_theta": cfg.rope_theta,
            "rope_parameters": rope_parameters,
        }
        if cfg.rope_scaling != 1.0:
            rope_parameters.update(rope_type="linear", factor=cfg.rope_scaling)
            out["rope_scaling"] = {"rope_type": "linear", "type": "linear", "factor": cfg.rope_scaling}
        return out
    # no attn_pdrop: transformers 5.x types it as int and refuses 0.1; dropout does not change inference
    return {
        **common,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "n_layers": cfg.n_layers,
        "expansion_ratio": 4,
        "max_seq_len": cfg.max_seq_len,
        "layer_norm_epsilon": cfg.norm_eps,
        "no_bias": True,
        "learned_pos_emb": False,
        "resid_pdrop": cfg.dropout,
        "emb_pdrop": cfg.dropout,
        "logit_scale": None,
        "attn_config": {
            "alibi": True,
            "alibi_bias_max": MPT_ALIBI_BIAS_MAX,
            "attn_type": "multihead_attention",
            "clip_qkv": None,
            "qk_ln": False,
            "softmax_scale": None,
            "prefix_lm": False,
            "attn_uses_sequence_id": False,
        },
    }


def _refuse_import(what: str, family: str) -> None:
    raise TinyformerError(
        f"this {ARCHITECTURES[family]} checkpoint uses {what}, which tinyformer cannot express"
    )


def config_from_hf(hf: dict) -> tuple[ModelConfig, str]:
    """Our ModelConfig for an HF config.json dict (GPT-2, Llama or MPT)."""
    family = hf.get("model_type")
    tie = hf.get("tie_word_embeddings")
    if family == "gpt2":
        act = GELU_NAMES.get(hf.get("activation_function", "gelu_new"))
        if act is None:
            _refuse_import(f"activation_function={hf.get('activation_function')!r}", family)
        if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
            _refuse_import("non-standard attention scaling", family)
        if hf.get("add_cross_attention"):
            _refuse_import("cross-attention", family)
        d = hf.get("n_embd", 768)
        cfg = dict(
            vocab_size=hf.get("vocab_size", 50257),
            n_layers=hf.get("n_layer", 12),
            n_heads=hf.get("n_head", 12),
            d_model=d,
            d_ff=hf.get("n_inner") or 4 * d,
            max_seq_len=hf.get("n_positions", 1024),
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            mlp=act,
            bias=True,
            tie_embeddings=True if tie is None else tie,
            position=POSITION_OF_FAMILY[family],
            dropout=hf.get("resid_pdrop", 0.0),
        )
    elif family == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            _refuse_import(f"hidden_act={hf.get('hidden_act')!r}", family)
        if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
            _refuse_import("biases in attention but not in the MLP (or the reverse)", family)
        d, heads = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
        if hf.get("head_dim") not in (None, d // heads):
            _refuse_import(f"head_dim={hf.get('head_dim')} != hidden_size / num_attention_heads", family)
        rope = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear"):
            _refuse_import(f"rope_type={rope_type!r} (only default and linear scaling are supported)", family)
        theta = rope.get(
            "rope_theta", hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta"))
        )
        cfg = dict(
            vocab_size=hf.get("vocab_size", 32000),
            n_layers=hf.get("num_hidden_layers", 32),
            n_heads=heads,
            n_kv_heads=hf.get("num_key_value_heads") or heads,
            d_model=d,
            d_ff=hf.get("intermediate_size", 11008),
            max_seq_len=hf.get("max_position_embeddings", 2048),
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            mlp="swiglu",
            bias=bool(hf.get("attention_bias", False)),
            tie_embeddings=bool(tie),
            position=POSITION_OF_FAMILY[family],
            rope_theta=float(theta or 10000.0),
            rope_scaling=float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0,
            dropout=float(hf.get("attention_dropout") or 0.0),
        )
    elif family == "mpt":
        attn = hf.get("attn_config") or {}
        d, heads = hf.get("d_model", 2048), hf.get("n_heads", 16)
        checks = [
            (not attn.get("alibi", True), "no ALiBi"),
            (
                attn.get("alibi_bias_max", 8) != MPT_ALIBI_BIAS_MAX,
                f"alibi_bias_max={attn.get('alibi_bias_max')}",
            ),
            (attn.get("clip_qkv") is not None, "clip_qkv"),
            (bool(attn.get("qk_ln")), "qk_ln"),
            (bool(attn.get("prefix_lm")), "prefix_lm"),
            (attn.get("softmax_scale") not in (None, 1 / math.sqrt(d // heads)), "a custom softmax_scale"),
            (hf.get("logit_scale") is not None, "logit_scale"),
            (hf.get("expansion_ratio", 4) != 4, f"expansion_ratio={hf.get('expansion_ratio')}"),
        ]
        for bad, what in checks:
            if bad:
                _refuse_import(what, family)
        cfg = dict(
            vocab_size=hf.get("vocab_size", 50368),
            n_layers=hf.get("n_layers", 24),
            n_heads=heads,
            d_model=d,
            d_ff=4 * d,
            max_seq_len=hf.get("max_seq_len", 2048),
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            mlp="gelu",
            bias=False,
            tie_embeddings=True if tie is None else tie,
            position=POSITION_OF_FAMILY[family],
            dropout=float(hf.get("resid_pdrop") or 0.0),
        )
    else:
        raise TinyformerError(f"HF model_type {family!r} cannot be imported; supported: gpt2, llama, mpt")
    cfg["init_std"] = hf.get("initializer_range", 0.02)
    return ModelConfig.from_dict(cfg), family
