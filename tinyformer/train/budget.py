"""When a run stops besides train.max_steps: a wall-clock training budget (`train.budget`) and a target
validation loss (`train.target_loss`), and the learning-rate schedule that follows the budget.

The budget counts training time only: the seconds of the optimizer steps (`TrainState.elapsed`, kept in every
checkpoint and continued by a resume), never evaluations, checkpoints or samples. The run stops after the step
that spends it (so it may overrun by less than one step), evaluates that step and saves it. `train.max_steps`
still caps a budgeted run: it ends at whichever comes first.

The schedule is driven by the spent fraction of the budget (`BudgetSchedule`): warmup stays `train.warmup`
steps; after it, the decay's progress is the larger of the time fraction (training seconds since warmup over the
seconds the budget has left after warmup) and the step fraction toward max_steps. A step's rate is decided
from the time spent before it, so the last step trains within one step of the schedule's minimum, as a run's
last step does under max_steps alone; with steps of constant duration the rates are exactly those of a step
schedule whose horizon is the number of steps the budget holds. Wall time varies, so a resumed budgeted run
is not bit-exact in general: what it keeps exactly is its step count and its training time spent, and it
stops at the same total budget. `clock` (default `time.perf_counter`) times the steps; tests drive a fake one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tinyformer.train.config import TrainConfig
from tinyformer.train.distributed import all_reduce_max
from tinyformer.train.runtime import Runtime
from tinyformer.train.schedule import Schedule, lr_at
from tinyformer.train.status import BUDGET_SPENT, TARGET_REACHED
from tinyformer.train.trainer_state import TrainState


class BudgetSchedule(Schedule):
    """The run's schedule under a budget of `budget_s` training seconds (see the module's docstring); `state`
    is the run's TrainState, whose `elapsed` it reads. Kept in a checkpoint like `Schedule`, with the
    training time at which warmup ended."""

    def __init__(self, schedule: str, lr: float, min_lr: float, warmup: int, horizon: int, *, budget_s: float,
                 state: TrainState) -> None:
        super().__init__(schedule, lr, min_lr, warmup, horizon)
        self.budget_s, self.state = budget_s, state
        self.warmup_elapsed: float | None = None  # training seconds when the first step after warmup began

    def progress(self, step: int) -> float:
        """How far the decay has gone at step `step` (0 to 1): time fraction or step fraction, the larger."""
        if step == self.state.step and self.warmup_elapsed is None:
            self.warmup_elapsed = self.state.elapsed
        start = self.warmup_elapsed if self.warmup_elapsed is not None else self.state.elapsed
        left = self.budget_s - start
        by_time = (self.state.elapsed - start) / left if left > 0 else 1.0
        by_steps = (step - self.warmup) / max(1, self.horizon - self.warmup)
        return min(1.0, max(0.0, by_time, by_steps))

    def lr(self, step: int) -> float:
        """The rate of step `step` (0-based), the one about to train: its time progress is the time spent now."""
        if step < self.warmup or self.schedule == "constant":
            return super().lr(step)
        # lr_at with a one-step decay span: the progress is given as a fraction of that step
        return lr_at(self.warmup + self.progress(step), schedule=self.schedule, lr=self.peak_lr,
                     min_lr=self.min_lr, warmup=self.warmup, total=self.warmup + 1)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "warmup_elapsed": self.warmup_elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        value = state.get("warmup_elapsed")
        self.warmup_elapsed = None if value is None else float(value)


class Limits:
    """A run's train.budget and train.target_loss. `spent()` after a step: the budget is used up;
    `status(val_loss)` after a step (with the loss of its evaluation, if it had one): TARGET_REACHED,
    BUDGET_SPENT or None; `summary` adds what they decided to summary.json. `clock` times training steps."""

    def __init__(self, cfg: TrainConfig, state: TrainState, clock: Callable[[], float] = time.perf_counter,
                 runtime: Runtime | None = None) -> None:
        self.cfg, self.state, self.clock, self.runtime = cfg, state, clock, runtime
        self.budget_s, self.target = cfg.budget_s, cfg.target_loss
        self.started = time.perf_counter()  # wall time of this invocation, on the real clock

    def schedule(self) -> Schedule:
        """The run's learning-rate schedule: by steps to max_steps, or following the budget."""
        cfg = self.cfg
        if self.budget_s is None:
            return Schedule(cfg.schedule, cfg.lr, cfg.final_lr, cfg.warmup, cfg.max_steps)
        return BudgetSchedule(cfg.schedule, cfg.lr, cfg.final_lr, cfg.warmup, cfg.max_steps, budget_s=self.budget_s,
                              state=self.state)

    def spent(self) -> bool:
        """Whether the budget is used up. Under several processes they first agree on the training time (the
        slowest one's), so that they stop at the same step and their schedules give the same rate."""
        if self.budget_s is None:
            return False
        if self.runtime is not None and self.runtime.info.enabled:
            self.state.elapsed = all_reduce_max([self.state.elapsed], self.runtime.info, self.runtime.device)[0]
        return self.state.elapsed >= self.budget_s

    def status(self, val_loss: float | None) -> str | None:
        """Why the run ends at this step, if one of these ends it: the target loss reached, or the budget spent."""
        if self.target is not None and val_loss is not None and val_loss <= self.target:
            return TARGET_REACHED
        return BUDGET_SPENT if self.spent() else None

    def summary(self, status: str) -> dict[str, Any]:
        """This invocation's wall seconds and what the budget and the target decided (training seconds are
        the summary's elapsed_s)."""
        state = self.state
        out: dict[str, Any] = {"wall_s": round(time.perf_counter() - self.started, 3)}
        if self.budget_s is not None:
            out["budget_s"] = self.budget_s
        if self.target is not None:
            reached = status == TARGET_REACHED
            out.update(target_loss=self.target, target_reached=reached,
                       target_reached_at_step=state.step if reached else None,
                       time_to_target_s=round(state.elapsed, 3) if reached else None)
        return out


def stop_note(summary: dict[str, Any]) -> str:
    """What a budget or a target decided, for the line a run ends with ('' when neither was set)."""
    notes = []
    if summary.get("status") == BUDGET_SPENT:
        notes.append(f"budget of {summary['budget_s']:g} s spent: {summary['elapsed_s']:.1f} s of training")
    if summary.get("target_reached"):
        notes.append(f"target loss {summary['target_loss']:g} reached at step {summary['target_reached_at_step']} "
                     f"after {summary['time_to_target_s']:.1f} s of training")
    elif "target_loss" in summary:
        notes.append(f"target loss {summary['target_loss']:g} not reached")
    return "; ".join(notes)
