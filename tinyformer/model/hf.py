"""Export to and import from HF `transformers` checkpoints: GPT-2 (learned positions), Llama (RoPE), MPT (ALiBi).

The weights (one name table per family, read in both directions) and the files; the config mapping (which
family, `config.json` both ways, what is refused) is `tinyformer.model.hf_config`. Writing and reading the
files needs only safetensors; `transformers` is needed only to load the result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir, check_output
from tinyformer.model.config import ModelConfig
from tinyformer.model.hf_config import config_from_hf, hf_config, hf_family
from tinyformer.model.transformer import Transformer
from tinyformer.tokenizer import Tokenizer
from tinyformer.tokenizer.export import to_hf

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
    hf_family(model.config)  # refuse before touching the output
    check_output(out_dir, force)
    with atomic_dir(out_dir, force=force) as tmp:
        write_hf(model, tmp, bos_token_id, eos_token_id)
        if tokenizer_dir is not None:
            write_tokenizer(tokenizer_dir, tmp)
    return Path(out_dir)


def write_tokenizer(tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """HF tokenizer files (tokenizer.json, tokenizer_config.json) from a tinyformer tokenizer directory."""
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
