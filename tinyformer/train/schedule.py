"""Learning-rate schedules as a pure function of the step: warmup + cosine, constant, linear."""

from __future__ import annotations

import math
from typing import Any


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


class Schedule:
    """The run's learning-rate schedule (`lr_at` with its config), kept in a checkpoint under `schedule`.
    `horizon` is its length: train.max_steps, or, once a finished run is extended to a larger max_steps, the
    horizon it completed (`keep_horizon`), so the new steps train at its final rate instead of raising it."""

    def __init__(self, schedule: str, lr: float, min_lr: float, warmup: int, horizon: int) -> None:
        self.schedule, self.peak_lr, self.min_lr, self.warmup = schedule, lr, min_lr, warmup
        self.horizon, self.kept = horizon, False
        self.saved_horizon = horizon  # the horizon a loaded checkpoint trained with

    def lr(self, step: int) -> float:
        """The rate of optimizer step `step` (0-based)."""
        return lr_at(step, schedule=self.schedule, lr=self.peak_lr, min_lr=self.min_lr, warmup=self.warmup,
                     total=self.horizon)

    def keep_horizon(self) -> None:
        """Go on with the horizon the loaded checkpoint trained with (a finished run extended)."""
        self.horizon, self.kept = self.saved_horizon, True

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "lr": self.peak_lr, "min_lr": self.min_lr, "warmup": self.warmup,
                "total": self.horizon, "kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved_horizon = int(state["total"])
        if state.get("kept"):
            self.keep_horizon()
