"""Export to and import from HF `transformers` checkpoints: GPT-2 (learned positions), Llama (RoPE), MPT (ALiBi).

The position scheme picks the HF family; every other switch must then match what that family can express,
or the export is refused with a message naming the switches that have no HF equivalent. Writing and
reading the files needs only safetensors; `transformers` is needed only to load the result.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from tinyformer.errors import TinyformerError
from tinyformer.model.config import ModelConfig
from tinyformer.model.transformer import Transformer

FAMILY_BY_POSITION = {"learned": "gpt2", "rope": "llama", "alibi": "mpt"}
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mpt": "MptForCausalLM"}
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
    return [(name, getattr(cfg, name), want) for name, ok, want in need if not ok]


def hf_family(cfg: ModelConfig) -> str:
    """'gpt2', 'llama' or 'mpt'; a TinyformerError naming what has no HF equivalent otherwise."""
    family = FAMILY_BY_POSITION.get(cfg.position)
    if family is None:
        raise TinyformerError(
            f"position={cfg.position!r} has no HF equivalent; export supports learned (GPT-2), rope (Llama) "
            "and alibi (MPT)"
        )
    bad = _requirements(cfg, family)
    if bad:
        wants = "; ".join(
            f"{name}={value!r} has no equivalent there (needs {want})" for name, value, want in bad
        )
        raise TinyformerError(f"position={cfg.position!r} exports as {ARCHITECTURES[family]}, but {wants}")
    return family


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
            position="learned",
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
            position="rope",
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
            position="alibi",
            dropout=float(hf.get("resid_pdrop") or 0.0),
        )
    else:
        raise TinyformerError(f"HF model_type {family!r} cannot be imported; supported: gpt2, llama, mpt")
    cfg["init_std"] = hf.get("initializer_range", 0.02)
    return ModelConfig.from_dict(cfg), family


# ---------------------------------------------------------------------------- weights


# One name table per family, read in both directions, so export and import cannot drift apart.
# HF names are relative to the base model (`transformer.` / `model.`), which `_BASE_PREFIX` adds.
_BASE_PREFIX = {"gpt2": "transformer.", "llama": "model.", "mpt": "transformer."}
_GLOBAL_NAMES = {  # (ours, HF)
    "gpt2": [("embed_tokens.weight", "wte.weight"), ("embed_positions.weight", "wpe.weight"),
             ("norm.weight", "ln_f.weight"), ("norm.bias", "ln_f.bias")],
    "llama": [("embed_tokens.weight", "embed_tokens.weight"), ("norm.weight", "norm.weight")],
    "mpt": [("embed_tokens.weight", "wte.weight"), ("norm.weight", "norm_f.weight")],
}
_LAYER_PREFIX = {"gpt2": "h.{i}.", "mpt": "blocks.{i}."}  # Llama's layers carry our own names
_LAYER_NAMES = {  # (ours, HF, stored transposed in HF: GPT-2's Conv1D keeps Linear weights as [in, out])
    "gpt2": [("input_layernorm.weight", "ln_1.weight", False), ("input_layernorm.bias", "ln_1.bias", False),
             ("self_attn.o_proj.weight", "attn.c_proj.weight", True), ("self_attn.o_proj.bias", "attn.c_proj.bias", False),
             ("post_attention_layernorm.weight", "ln_2.weight", False),
             ("post_attention_layernorm.bias", "ln_2.bias", False),
             ("mlp.up_proj.weight", "mlp.c_fc.weight", True), ("mlp.up_proj.bias", "mlp.c_fc.bias", False),
             ("mlp.down_proj.weight", "mlp.c_proj.weight", True), ("mlp.down_proj.bias", "mlp.c_proj.bias", False)],
    "mpt": [("input_layernorm.weight", "norm_1.weight", False), ("self_attn.o_proj.weight", "attn.out_proj.weight", False),
            ("post_attention_layernorm.weight", "norm_2.weight", False),
            ("mlp.up_proj.weight", "ffn.up_proj.weight", False), ("mlp.down_proj.weight", "ffn.down_proj.weight", False)],
}
_FUSED_QKV = {  # q, k, v stacked into one HF tensor: (HF weight, HF bias or None, transposed)
    "gpt2": ("attn.c_attn.weight", "attn.c_attn.bias", True),
    "mpt": ("attn.Wqkv.weight", None, False),
}


def _name_pairs(cfg: ModelConfig, family: str, llama_keys) -> list[tuple[str, str, bool]]:
    """(our name, HF name relative to the base model, transposed) for every one-to-one parameter;
    `llama_keys` are the per-layer names, identical on both sides for Llama."""
    pairs = [(ours, hf, False) for ours, hf in _GLOBAL_NAMES[family]]
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        if family == "llama":
            pairs += [(k, k, False) for k in llama_keys if k.startswith(p)]
        else:
            h = _LAYER_PREFIX[family].format(i=i)
            pairs += [(p + ours, h + hf, t) for ours, hf, t in _LAYER_NAMES[family]]
    return pairs


def _maybe_t(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    return tensor.t() if transposed else tensor


def state_to_hf(model: Transformer) -> dict[str, torch.Tensor]:
    """Our parameters under HF names and layouts."""
    cfg = model.config
    family = hf_family(cfg)
    s = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    base = _BASE_PREFIX[family]
    out = {base + hf: _maybe_t(s[ours], t) for ours, hf, t in _name_pairs(cfg, family, s)}
    if family in _FUSED_QKV:
        w_name, b_name, t = _FUSED_QKV[family]
        for i in range(cfg.n_layers):
            p, h = f"layers.{i}.", base + _LAYER_PREFIX[family].format(i=i)
            out[h + w_name] = _maybe_t(torch.cat([s[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]), t)
            if b_name:
                out[h + b_name] = torch.cat([s[p + f"self_attn.{n}_proj.bias"] for n in "qkv"])
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = s["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def _strip_base_prefix(state: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """HF names relative to the base model; base-model checkpoints (e.g. the original `gpt2` files) already
    lack the `transformer.`/`model.` prefix."""
    prefix = _BASE_PREFIX[family]
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def state_from_hf(
    hf_state: dict[str, torch.Tensor], cfg: ModelConfig, family: str
) -> dict[str, torch.Tensor]:
    """HF parameters under our names and layouts (the inverse of state_to_hf)."""
    s = _strip_base_prefix(hf_state, family)
    out = {ours: _maybe_t(s[hf], t) for ours, hf, t in _name_pairs(cfg, family, s)}
    if family in _FUSED_QKV:
        w_name, b_name, t = _FUSED_QKV[family]
        for i in range(cfg.n_layers):
            p, h = f"layers.{i}.", _LAYER_PREFIX[family].format(i=i)
            qkv = [_maybe_t(s[h + w_name], t)] + ([s[h + b_name]] if b_name else [])
            for suffix, fused in zip(("weight", "bias"), qkv):
                for n, part in zip("qkv", fused.chunk(3, dim=0)):
                    out[p + f"self_attn.{n}_proj.{suffix}"] = part
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = s["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------- files


def write_hf(
    model: Transformer,
    out_dir: str | os.PathLike,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> None:
    """Write `config.json` and `model.safetensors` into an existing directory. Extra multi-token heads
    (n_predict > 1) are training aids and are not exported: HF models have one LM head."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    config = hf_config(model.config, bos_token_id, eos_token_id)
    save_file(state_to_hf(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def export_hf(
    model: Transformer,
    out_dir: str | os.PathLike,
    force: bool = False,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
) -> Path:
    """Export to an HF directory, built under a temporary name and renamed at the end (nothing partial).

    With `tokenizer_dir` (a tinyformer tokenizer directory), its HF tokenizer files are written beside the
    weights via tinyformer.tokenizer.export.to_hf.
    """
    from tinyformer.fileio import atomic_dir, check_output

    hf_family(model.config)  # refuse before touching the output
    check_output(out_dir, force)
    with atomic_dir(out_dir, force=force) as tmp:
        write_hf(model, tmp, bos_token_id, eos_token_id)
        if tokenizer_dir is not None:
            write_tokenizer(tokenizer_dir, tmp)
    return Path(out_dir)


def write_tokenizer(tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """HF tokenizer files (tokenizer.json, tokenizer_config.json) from a tinyformer tokenizer directory."""
    from tinyformer.tokenizer import Tokenizer
    from tinyformer.tokenizer.export import to_hf

    to_hf(Tokenizer.load(tokenizer_dir), out_dir)


def _read_hf_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config_path = path / "config.json"
    if not config_path.is_file():
        raise TinyformerError(f"{path} has no config.json; pass an HF model directory")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError:
        raise TinyformerError(f"{config_path} is not valid JSON") from None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise TinyformerError(
            f"{path} has no model.safetensors; only safetensors HF checkpoints can be imported"
        )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            state.update(load_file(str(path / name)))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise TinyformerError(f"{path / name} cannot be read ({str(exc).splitlines()[0]})") from None
    return config, state


def import_hf(source: Any) -> Transformer:
    """Our Transformer from an HF GPT-2 / Llama / MPT model: a directory (config.json + safetensors, read
    without transformers) or a loaded `PreTrainedModel`."""
    if isinstance(source, (str, os.PathLike)):
        hf_cfg, hf_state = _read_hf_dir(Path(source))
    else:
        hf_cfg, hf_state = source.config.to_dict(), dict(source.state_dict())
    cfg, family = config_from_hf(hf_cfg)
    if not cfg.tie_embeddings and "lm_head.weight" not in hf_state:
        cfg = ModelConfig.from_dict({**cfg.to_dict(), "tie_embeddings": True})
    try:
        state = state_from_hf(hf_state, cfg, family)
    except KeyError as exc:
        raise TinyformerError(
            f"HF {family} weights lack {exc.args[0]}; the checkpoint is incomplete"
        ) from None
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise TinyformerError(f"HF weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()
