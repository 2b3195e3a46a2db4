"""Causal self-attention through `F.scaled_dot_product_attention`, grouped-query heads, a preallocated KV cache,
and the one function that builds the attention mask (causal + padding + ALiBi or FIRE bias) for every layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tinyformer.model.config import ModelConfig
from tinyformer.model.norms import RMSNorm
from tinyformer.model.positions import alibi_bias, apply_rope

_FLOAT32_KERNEL = False  # set by `float32_kernel()`


@contextlib.contextmanager
def float32_kernel():
    """Within it, `F.scaled_dot_product_attention` runs on float32 q, k, v (outside autocast), its output cast
    back to their dtype. Under bf16 autocast on a CPU torch's flash kernel is faster in float32 than in bf16
    at small head sizes (bench/RESULTS.md); `train.sdpa_backend=fp32` and autotune use it from outside."""
    global _FLOAT32_KERNEL
    previous, _FLOAT32_KERNEL = _FLOAT32_KERNEL, True
    try:
        yield
    finally:
        _FLOAT32_KERNEL = previous


@dataclass
class AttentionMask:
    """What every layer's attention needs to know about which keys a query may see.

    `mask` is None (use `is_causal`, the SDPA fast path) or a bool "may attend" tensor, or a float additive
    bias (ALiBi's or FIRE's, with -inf where not allowed); both broadcast to [B, H, Tq, Tk].
    """

    mask: torch.Tensor | None
    is_causal: bool


class KVCache:
    """Keys and values of every layer for up to `max_len` tokens, plus the key positions and padding flags."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.positions = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        self.key_valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.has_padding = False
        self.max_len = max_len
        self.length = 0  # tokens already stored

    def append_tokens(self, position_ids: torch.Tensor, valid: torch.Tensor | None) -> None:
        """Record positions/padding of the T new tokens (before the layers run)."""
        t = position_ids.shape[-1]
        if self.length + t > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; cannot add {t} to {self.length}")
        self.positions[:, self.length : self.length + t] = position_ids
        if valid is not None:
            self.key_valid[:, self.length : self.length + t] = valid
            self.has_padding = self.has_padding or not bool(valid.all())

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys/values; return all keys/values so far."""
        t = k.shape[2]
        end = self.length + t
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, t: int) -> None:
        self.length += t


def build_attention_mask(
    n_queries: int,
    n_past: int,
    key_valid: torch.Tensor | None,
    slopes: torch.Tensor | None = None,
    query_pos: torch.Tensor | None = None,
    key_pos: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> AttentionMask:
    """Causal mask for `n_queries` new tokens after `n_past` cached ones, with padding and an optional additive
    bias: ALiBi's from its `slopes`, or a `bias` [B, H, n_queries, n_past + n_queries] already computed (FIRE's).

    key_valid: [B, n_past + n_queries] (False = padding) or None. Every query may always see itself, so a
    padding query's row is never empty (its output is garbage but finite, and nobody attends to it).
    """
    if slopes is None and bias is None and key_valid is None:
        if n_past == 0:
            return AttentionMask(None, is_causal=n_queries > 1)
        if n_queries == 1:  # one new token sees the whole cache
            return AttentionMask(None, is_causal=False)
    n_keys = n_past + n_queries
    device = (
        key_valid.device if key_valid is not None else (query_pos.device if query_pos is not None else None)
    )
    q_index = torch.arange(n_past, n_keys, device=device).unsqueeze(-1)
    k_index = torch.arange(n_keys, device=device)
    allowed = (k_index <= q_index)[None, None]  # [1, 1, Tq, Tk]
    if key_valid is not None:
        allowed = allowed & (key_valid[:, None, None, :] | (k_index == q_index)[None, None])
    if slopes is None and bias is None:
        return AttentionMask(allowed, is_causal=False)
    if bias is None:
        bias = alibi_bias(slopes, query_pos, key_pos)
    return AttentionMask(bias.masked_fill(~allowed, float("-inf")), is_causal=False)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, T, D] -> [B, Hkv * n_rep, T, D]: each key/value head serves n_rep query heads."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def attention_with_probs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask
) -> tuple[torch.Tensor, torch.Tensor]:
    """The explicit softmax(QK^T/sqrt(d) + mask)V, also returning the probabilities [B, H, Tq, Tk]."""
    scores = (q @ k.transpose(-2, -1)).float() * q.shape[-1] ** -0.5
    if mask.is_causal:
        tq, tk = scores.shape[-2:]
        causal = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
        scores = scores.masked_fill(~causal, float("-inf"))
    elif mask.mask is not None and mask.mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask.mask, float("-inf"))
    elif mask.mask is not None:
        scores = scores + mask.mask.float()
    probs = scores.softmax(dim=-1)
    return probs.to(v.dtype) @ v, probs


class Attention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with HF Llama's projection names."""

    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.num_kv_heads * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.num_kv_heads * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        if cfg.qk_norm:  # one gain over head_dim shared by the heads (HF Qwen3's q_norm / k_norm)
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:  # per head, before RoPE; in the projections' dtype (RMSNorm's gain is float32)
            q, k = self.q_norm(q).to(q.dtype), self.k_norm(k).to(k.dtype)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:  # the cache keeps the parameters' dtype; under autocast q may be lower precision
            k, v = cache.update(self.layer_index, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        probs = None
        if return_attention:
            y, probs = attention_with_probs(q, k, v, mask)
        else:
            dtype = q.dtype
            upcast = _FLOAT32_KERNEL and dtype != torch.float32
            if upcast:
                q, k, v = q.float(), k.float(), v.float()
            attn_mask = mask.mask
            if attn_mask is not None and attn_mask.dtype != torch.bool:
                attn_mask = attn_mask.to(q.dtype)
            with torch.autocast(x.device.type, enabled=False) if upcast else contextlib.nullcontext():
                y = F.scaled_dot_product_attention(
                    q,
                    k,
                    v,
                    attn_mask=attn_mask,
                    is_causal=mask.is_causal,
                    dropout_p=self.dropout if self.training else 0.0,
                ).to(dtype)
        y = y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return self.o_proj(y), probs
