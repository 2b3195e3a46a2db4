"""What the Trainer calls to evaluate a run: the `Evaluation` protocol, the language-model one (loss,
perplexity, bits per byte over a validation token file; the lab's length-bin evaluation is the other), and
the `Validator` that says when a run evaluates and keeps the best score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from tinyformer.batch import IGNORE_INDEX
from tinyformer.train.distributed import agree_on_failure, all_reduce_sum
from tinyformer.train.runtime import Runtime, autocast, sdpa_backend
from tinyformer.train.trainer_state import TrainState

LN2 = math.log(2.0)


class Evaluation(Protocol):
    """An evaluation of a run. `score` orders checkpoints (lower is better: the best is kept); `solved`
    is the stop rule; `final` adds to the summary once training ends (not when interrupted)."""

    score_name: str

    def run(self, module: torch.nn.Module, runtime: Runtime) -> dict[str, Any]: ...

    def score(self, metrics: dict[str, Any]) -> float: ...

    def solved(self, metrics: dict[str, Any]) -> bool: ...

    def describe(self, metrics: dict[str, Any]) -> str: ...

    def final(self, module: torch.nn.Module, runtime: Runtime) -> dict[str, Any]: ...


@torch.no_grad()
def loss_over(module: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device,
              precision: str) -> tuple[float, float]:
    """(summed cross-entropy in nats, number of target tokens) of `module` over `batches`."""
    loss_sum, count = 0.0, 0.0
    for batch in batches:
        ids = batch["ids"].to(device)
        targets = batch["targets"].to(device)
        kwargs = {k: batch[k].to(device) for k in ("position_ids", "attention_mask") if k in batch}
        with autocast(device, precision):
            logits, _ = module(ids, **kwargs)
        logits = logits[:, : targets.shape[1], :].float()
        loss_sum += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        ).item()
        count += (targets != IGNORE_INDEX).sum().item()
    return loss_sum, count


def loss_metrics(loss_sum: float, count: float, bytes_per_token: float | None) -> dict[str, float]:
    """Mean loss, perplexity and (given the file's bytes per token) bits per byte."""
    loss = loss_sum / max(count, 1.0)
    out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": int(count)}
    if bytes_per_token:
        out["val_bpb"] = loss / (LN2 * bytes_per_token)
    return out


class LossEvaluation:
    """Validation loss over the batches `val_batches()` yields (summed over all processes); best = lowest."""

    score_name = "val_loss"

    def __init__(self, val_batches: Callable[[], Iterable[dict[str, torch.Tensor]]],
                 bytes_per_token: float | None = None) -> None:
        self.val_batches, self.bytes_per_token = val_batches, bytes_per_token

    def run(self, module: torch.nn.Module, runtime: Runtime) -> dict[str, Any]:
        error = None
        try:
            with sdpa_backend(runtime.sdpa):
                loss_sum, count = loss_over(module, self.val_batches(), runtime.device, runtime.precision)
        except Exception as exc:
            error = exc
        # every process learns whether any failed before the sums are combined: all raise, or none does
        if (error := agree_on_failure(error, runtime.info)) is not None:
            raise error
        loss_sum, count = all_reduce_sum([loss_sum, count], runtime.info, runtime.device)
        return loss_metrics(loss_sum, count, self.bytes_per_token)

    def score(self, metrics: dict[str, Any]) -> float:
        return metrics["val_loss"]

    def solved(self, metrics: dict[str, Any]) -> bool:
        return False

    def describe(self, metrics: dict[str, Any]) -> str:
        return f"val loss {metrics['val_loss']:.4f} (ppl {metrics['val_ppl']:.2f})"

    def final(self, module: torch.nn.Module, runtime: Runtime) -> dict[str, Any]:
        return {}


class Validator:
    """When a run evaluates and what its evaluations decided. A step is due every `eval_every` steps and at
    `max_steps` (`should_validate`); `run` scores the model without moving the training RNG; `record` keeps the
    best score and counts the evaluations without improvement in the run's `TrainState` (early stopping
    after `patience` of them, when patience > 0)."""

    def __init__(self, evaluation: Evaluation | None, state: TrainState, *, eval_every: int, max_steps: int,
                 patience: int) -> None:
        self.evaluation, self.state = evaluation, state
        self.eval_every, self.max_steps, self.patience = eval_every, max_steps, patience
        self.last_metrics: dict[str, Any] = {}

    @property
    def enabled(self) -> bool:
        return self.evaluation is not None

    @property
    def score_name(self) -> str:
        return self.evaluation.score_name if self.evaluation is not None else "score"

    def should_validate(self, step: int, last: bool = False) -> bool:
        """Whether `step` is evaluated: every eval_every steps, at max_steps, and when it is the `last` (a
        spent train.budget)."""
        return self.enabled and (last or bool(self.eval_every and step % self.eval_every == 0)
                                 or step == self.max_steps)

    def run(self, module: torch.nn.Module, runtime: Runtime) -> tuple[dict[str, Any], float, bool]:
        """(metrics, score, solved) of `module` (every process takes part)."""
        with torch.random.fork_rng(devices=[]):  # evaluating must not move the training RNG
            metrics = self.evaluation.run(module, runtime)
        return metrics, self.evaluation.score(metrics), self.evaluation.solved(metrics)

    def record(self, metrics: dict[str, Any], score: float) -> None:
        self.last_metrics = metrics
        if self.state.best_score is None or score < self.state.best_score:
            self.state.best_score, self.state.evals_without_improvement = score, 0
        else:
            self.state.evals_without_improvement += 1

    @property
    def early_stopped(self) -> bool:
        return self.patience > 0 and self.state.evals_without_improvement >= self.patience
