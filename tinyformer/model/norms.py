"""The model's norms: RMSNorm (computed in float32, as HF Llama does) and the pre-norm `make_norm` picks by
`model.norm`. Attention's QK-norm (`model.qk_norm`) is an RMSNorm over each head's features.
"""

from __future__ import annotations

import torch
from torch import nn

from tinyformer.model.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 as HF Llama does (so exports match to the last bit we can)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
