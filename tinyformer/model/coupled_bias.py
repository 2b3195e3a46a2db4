"""Coupled relative bias (`model.position=coupled-relative`): position coupling's ids (Cho et al., NeurIPS 2024,
arXiv 2405.20671, their relative variant) read through a learned additive attention bias of the difference
of the two ids, clipped:

    b_h(i, j) = w_h[clip(p_i - p_j, -R, R)],   R = `RADIUS`,

for a query with coupled id p_i and a key with coupled id p_j (one weight per head and clipped difference,
2R + 1 per head). Differences past R share the edge weights, so a model trained on short inputs sees every
bias it will meet on long ones: nothing about the length is learned, and shifting every id changes nothing
(no random offsets are needed, and none are drawn).

Why beside the learned table (`coupled`): a table learns each id's vector, and ids that never sit in one
training input (further apart than the longest training input) are free to resemble each other; on longer
inputs a query then finds a far token as if it were its partner. Here the partner (the same id, or one off)
and "far" are the only things there are.

Choices: R = 3 (7 weights per head: what a task's rule needs is -1, 0 and +1, with room on either side);
the weights start at 0 (attention starts uniform, as NoPE's) and get no weight decay (they are not a
matrix); one bias for all layers, on the same mask path as ALiBi and FIRE
(`tinyformer.model.attention.build_attention_mask`).

torch is imported inside the functions, so that the table of schemes can name `coupled_bias_module` without
importing torch.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

RADIUS = 3
RATE = 10.0


@functools.cache
def _coupled_bias_class() -> type:
    import torch
    from torch import nn

    class CoupledBias(nn.Module):
        """`forward(query_pos [B, Tq], key_pos [B, Tk]) -> float32 bias [B, H, Tq, Tk]` (B may be 1 for either)."""

        def __init__(self, n_heads: int):
            super().__init__()
            # [H * (2R + 1)], 1-D so that it gets no weight decay (tinyformer.train.optim decays matrices)
            self.weight = nn.Parameter(torch.zeros(n_heads * (2 * RADIUS + 1)))
            self.n_heads = n_heads

        def reset_parameters(self) -> None:
            with torch.no_grad():
                self.weight.zero_()

        def forward(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
            difference = query_pos.unsqueeze(-1) - key_pos.unsqueeze(-2)  # [B, Tq, Tk]
            bucket = difference.clamp(-RADIUS, RADIUS) + RADIUS
            table = (self.weight.float() * RATE).view(self.n_heads, 2 * RADIUS + 1)
            return table[:, bucket].permute(1, 0, 2, 3)  # [H, B, Tq, Tk] -> [B, H, Tq, Tk]

    return CoupledBias


def coupled_bias_module(cfg: Any) -> nn.Module:
    """A model's coupled relative bias over `cfg.n_heads` heads, shared by every layer."""
    return _coupled_bias_class()(cfg.n_heads)
