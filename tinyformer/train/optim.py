"""The run's optimizer: AdamW with weight decay only on matrices and embeddings (never on biases or norm gains),
or (`train.optimizer=muon`) Muon on the blocks' hidden weight matrices and that AdamW on everything else."""

from __future__ import annotations

from typing import Any

import torch

from tinyformer.train.config import TrainConfig

# the modules of the Transformer that hold its hidden layers (the trunk's blocks, the multi-token heads'
# blocks); the embeddings, position tables or biases of any scheme and the output head sit outside them
BLOCKS = ("layers", "mtp_layers")


def muon_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every hidden weight matrix: the 2-D weight of each linear map inside a block
    (attention q/k/v/o, the MLP's matrices). Never the token embedding (nor the tied head that is it), a position
    table or a position scheme's own network, nor the output head: Muon is for hidden layers only."""
    heads = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    if isinstance(getattr(model, "lm_head", None), torch.nn.Linear):
        heads.add(id(model.lm_head.weight))
    out = []
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Linear) and name.split(".")[0] in BLOCKS and module.weight.requires_grad
                and module.weight.dim() == 2 and id(module.weight) not in heads):
            out.append((f"{name}.weight", module.weight))
    return out


def param_groups(model: torch.nn.Module, weight_decay: float, exclude: frozenset[int] = frozenset()) -> list[dict]:
    """Two groups: tensors with 2+ dims (linear weights, embeddings) decay; vectors (biases, norms) do not.
    `exclude`: ids of parameters another optimizer trains."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in exclude:
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
    exclude: frozenset[int] = frozenset(),
) -> torch.optim.AdamW:
    """AdamW over `model` (less `exclude`); `fused=None` picks the fused kernel where the parameters' device
    supports it, else the foreach (multi-tensor) one."""
    groups = param_groups(model, weight_decay, exclude)
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


class MuonAdamW:
    """torch.optim.Muon on the hidden matrices and AdamW on the rest, seen by the trainer and the fp16 scaler
    as one optimizer (`param_groups`, `step`, `zero_grad`). `optimizers` are the two torch optimizers (the
    checkpoint keeps their state by parameter name: tinyformer.train.trainer_state.OptimizerState). `set_lr(lr)`: the
    schedule's rate of this step; Muon's groups take the same fraction of their peak `muon_lr`."""

    def __init__(self, adamw: torch.optim.AdamW, muon: torch.optim.Muon, peak_lr: float) -> None:
        self.adamw, self.muon, self.peak_lr = adamw, muon, peak_lr
        self.optimizers = [adamw, muon]
        self.muon_lr = [group["lr"] for group in muon.param_groups]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.adamw.param_groups, *self.muon.param_groups]

    def set_lr(self, lr: float) -> None:
        for group in self.adamw.param_groups:
            group["lr"] = lr
        for group, peak in zip(self.muon.param_groups, self.muon_lr):
            group["lr"] = peak * (lr / self.peak_lr)

    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)


def set_lr(optimizer: torch.optim.Optimizer | MuonAdamW, lr: float) -> None:
    """Give every group the schedule's rate `lr` of this step (Muon's: its share of train.muon_lr)."""
    if isinstance(optimizer, MuonAdamW):
        optimizer.set_lr(lr)
        return
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_for(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW | MuonAdamW:
    """The optimizer `cfg.optimizer` names over `model` (the plain module, before DDP wraps it)."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return build_optimizer(model, cfg.lr, cfg.weight_decay, betas=betas, eps=cfg.eps)
    matrices = [p for _, p in muon_parameters(model)]
    adamw = build_optimizer(model, cfg.lr, cfg.weight_decay, betas=betas, eps=cfg.eps,
                            exclude=frozenset(map(id, matrices)))
    # torch's Muon as it ships: Nesterov momentum, 5 quintic Newton-Schulz steps, the update scaled by
    # sqrt(max(1, rows / cols)) (Keller Jordan's "original"), and decoupled weight decay: each step multiplies
    # a matrix by 1 - lr_t * train.weight_decay, lr_t being Muon's rate (so it decays more per step than AdamW's
    # 1 - lr_t * weight_decay at its smaller rate: lower train.weight_decay for long runs, e.g. 0.01 as in
    # Keller Jordan's MuonWithAuxAdam example)
    muon = torch.optim.Muon(matrices, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum)
    return MuonAdamW(adamw, muon, cfg.lr)
