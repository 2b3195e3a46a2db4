"""AdamW with weight decay only on matrices and embeddings (never on biases or norm gains)."""

from __future__ import annotations

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: tensors with 2+ dims (linear weights, embeddings) decay; vectors (biases, norms) do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over `model`; `fused=None` picks the fused kernel where the parameters' device supports it,
    else the foreach (multi-tensor) one."""
    groups = param_groups(model, weight_decay)
    if fused is None:
        device = next(model.parameters()).device.type
        # fused AdamW exists for CUDA, MPS and CPU in recent torch; on CPU it is also the fastest.
        fused = device in ("cuda", "mps", "cpu")
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        except (RuntimeError, TypeError):
            pass  # e.g. DTensor parameters (FSDP2) or an old torch: fall back to foreach
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)
