"""Learning-rate schedules as a pure function of the step: warmup + cosine, constant, linear."""

from __future__ import annotations

import math


def lr_at(step: int, *, schedule: str, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """The learning rate at optimizer step `step` (0-based).

    All schedules start with `warmup` steps of linear increase to `lr`; then `cosine` decays to `min_lr`
    at `total`, `linear` goes straight down to `min_lr` at `total`, `constant` stays at `lr`. Past `total`
    the rate stays at its final value. Being a pure function, the schedule needs no state to resume.
    """
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    span = max(1, total - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    if schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    if schedule == "linear":
        return lr + progress * (min_lr - lr)
    raise ValueError(f"unknown schedule {schedule!r}; use cosine, constant or linear")
