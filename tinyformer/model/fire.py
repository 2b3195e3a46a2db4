"""FIRE (Li et al., ICLR 2024, arXiv 2310.04418): a learned additive attention bias

    b(i, j) = f( psi(i - j) / psi(max(L, i)) ),   psi(x) = log(c * x + 1),

for a query at position i and a key at position j <= i, with c > 0 and the threshold L learned, and f a
small MLP (1 -> 32 -> ReLU -> one bias per head). Dividing by psi(i) maps every distance a query can see
into [0, 1] whatever the context's length (the paper's progressive interpolation); L keeps short contexts
from stretching a few positions over that whole range. Below L the divisor is the constant psi(L), so for
queries at positions below L the bias depends only on i - j; past it, on how far back the key is relative to
the query's own position.

Choices (ours where the brief left them open; the paper's text was not at hand to check its own):
- one f for all layers, not one per layer as in the paper: the model builds one attention mask per forward
  pass and every layer shares it (`tinyformer.model.attention.build_attention_mask`), so one bias tensor per
  pass costs the same as ALiBi's, where per-layer f's would cost n_layers MLP evaluations over [B, Tq, Tk]
  and a mask per layer.
- c starts at 1 (psi(x) = log(1 + x)); L starts at `THRESHOLD_INIT` = 32 positions: below the lengths tiny
  models train at, so what lies beyond them is interpolated, yet reached by the first positions of every
  sequence, so L has a gradient. c is used clamped at >= 1e-3 and L at >= 1, so psi(max(L, i)) > 0.
- f's two linear layers keep PyTorch's own initialisation (the model's std-0.02 init would start f at
  almost 0 with a vanishing gradient into its first layer): the bias starts as a random smooth function of
  the normalised distance. The four tensors are ordinary parameters: the matrices get weight decay as every
  matrix does (tinyformer.train.optim), the scalars c and L none.

torch is imported inside the functions, so that the table of schemes (tinyformer.model.positions) can name
`fire_module` without importing torch.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

HIDDEN = 32  # the paper's f: 2 layers, 32 hidden units, ReLU
C_INIT = 1.0
THRESHOLD_INIT = 32.0
C_MIN, THRESHOLD_MIN = 1e-3, 1.0


@functools.cache
def _fire_class() -> type:
    """The module class, defined once on first use (it needs torch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class FireBias(nn.Module):
        """`forward(query_pos [B, Tq], key_pos [B, Tk]) -> float32 bias [B, H, Tq, Tk]` (B may be 1 for either)."""

        def __init__(self, n_heads: int):
            super().__init__()
            self.c = nn.Parameter(torch.tensor([C_INIT]))  # [1], not a 0-dim scalar: FSDP shards dim 0
            self.threshold = nn.Parameter(torch.tensor([THRESHOLD_INIT]))  # L
            self.hidden = nn.Linear(1, HIDDEN)
            self.out = nn.Linear(HIDDEN, n_heads)

        def reset_parameters(self) -> None:
            """PyTorch's initialisation of f, c = 1 and L = THRESHOLD_INIT (the model calls it after its own init)."""
            self.hidden.reset_parameters()
            self.out.reset_parameters()
            with torch.no_grad():
                self.c.fill_(C_INIT)
                self.threshold.fill_(THRESHOLD_INIT)

        def normalized_distance(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
            """psi(i - j) / psi(max(L, i)) [B, Tq, Tk]; keys after the query (masked anyway) count as distance 0."""
            c = self.c.float().clamp(min=C_MIN)
            threshold = self.threshold.float().clamp(min=THRESHOLD_MIN)
            query = query_pos.float().unsqueeze(-1)  # [B, Tq, 1]
            distance = (query - key_pos.float().unsqueeze(-2)).clamp(min=0)  # [B, Tq, Tk]
            return torch.log1p(c * distance) / torch.log1p(c * torch.maximum(query, threshold))

        def pair_bias(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
            """f of every (query, key) pair: [B, H, Tq, Tk], in float32 even under autocast, as ALiBi's bias is."""
            with torch.autocast(query_pos.device.type, enabled=False):
                x = self.normalized_distance(query_pos, key_pos).unsqueeze(-1)  # [B, Tq, Tk, 1]
                h = torch.relu(F.linear(x, self.hidden.weight.float(), self.hidden.bias.float()))
                bias = F.linear(h, self.out.weight.float(), self.out.bias.float())  # [B, Tq, Tk, H]
            return bias.permute(0, 3, 1, 2)

        def forward(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
            rows = max(query_pos.shape[0], key_pos.shape[0])
            if rows == 1:  # one row of ids for the whole batch (counted by the model): f once per pair
                return self.pair_bias(query_pos, key_pos)
            # a row of ids per sequence (the lab's batches, left padding, the KV cache), read in one device sync:
            # rows that are all the same (a right-padded batch counted from 0) take one row's bias for all;
            # otherwise, as the bias of positions (i, j) is the same in every row, f runs once over the table of
            # the positions that occur and each row gathers from it, when that table is the smaller
            same = (query_pos == query_pos[:1]).all() & (key_pos == key_pos[:1]).all()
            lo, hi, same = (int(v) for v in torch.stack((torch.minimum(query_pos.min(), key_pos.min()),
                                                           torch.maximum(query_pos.max(), key_pos.max()),
                                                           same.long())).tolist())
            if same:
                return self.pair_bias(query_pos[:1], key_pos[:1])
            span = hi - lo + 1
            if span * span >= rows * query_pos.shape[-1] * key_pos.shape[-1]:
                return self.pair_bias(query_pos, key_pos)
            every = torch.arange(lo, hi + 1, device=query_pos.device).unsqueeze(0)
            table = self.pair_bias(every, every)[0]  # [H, span, span]
            q = (query_pos - lo).expand(rows, -1)[:, :, None]
            k = (key_pos - lo).expand(rows, -1)[:, None, :]
            return table[:, q, k].permute(1, 0, 2, 3)  # [H, B, Tq, Tk] -> [B, H, Tq, Tk]

    return FireBias


def fire_module(cfg: Any) -> nn.Module:
    """A model's FIRE bias: one f over `cfg.n_heads` heads, shared by every layer."""
    return _fire_class()(cfg.n_heads)
