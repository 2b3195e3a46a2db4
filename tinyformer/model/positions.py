"""Position schemes as small pure functions: sinusoidal tables, RoPE (rotate-half layout), ALiBi slopes and
biases. `learned`, `abacus` and `nope` need nothing beyond an embedding table or nothing (Abacus ids come
with the batch: `tinyformer.batch.run_positions`).
"""

from __future__ import annotations

import math

import torch


def sinusoidal_embedding(position_ids: torch.Tensor, d_model: int) -> torch.Tensor:
    """Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)). Shape [..., d]."""
    half = torch.arange(0, d_model, 2, dtype=torch.float32, device=position_ids.device)
    inv_freq = 1.0 / (10000.0 ** (half / d_model))
    angles = position_ids.float().unsqueeze(-1) * inv_freq  # [..., ceil(d/2)]
    pe = torch.zeros(*position_ids.shape, d_model, device=position_ids.device)
    pe[..., 0::2] = torch.sin(angles)
    pe[..., 1::2] = torch.cos(angles[..., : d_model // 2])
    return pe


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float = 10000.0, scaling: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [B, T, head_dim] for the rotate-half layout (HF Llama's), computed in float32.

    Linear scaling (position interpolation) divides the positions by `scaling`, as HF's "linear" rope type.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    inv_freq = inv_freq.to(position_ids.device) / scaling
    angles = position_ids.float().unsqueeze(-1) * inv_freq  # [B, T, head_dim/2]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys [B, H, T, D] by their positions; cos/sin are [B, T, D]."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Press et al. (2022): a geometric sequence starting at 2^(-8/n) with that same ratio for n a power of two;
    otherwise the slopes of the closest smaller power of two, followed by every other slope of twice that count.
    """

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two_slopes(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two_slopes(closest) + power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
    """Additive attention bias -slope * |pos_q - pos_k|, shape [B, H, Tq, Tk], from positions [B, Tq], [B, Tk]."""
    distance = (query_pos.unsqueeze(-1) - key_pos.unsqueeze(-2)).abs().float()  # [B, Tq, Tk]
    return -slopes.to(distance.device).view(1, -1, 1, 1) * distance.unsqueeze(1)
