"""A task run of the lab through the one engine: the Trainer with the task stream as its batch source, the
length-bin evaluation (teacher-forced exact match; free-running greedy at the end) as its evaluation, and
"training-range bin solved" as its stop rule. Precision, compile, resume, signals, progress, TensorBoard
and several processes come from the engine."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from tinyformer.errors import TinyformerError
from tinyformer.lab.evaluate import evaluate_bins
from tinyformer.lab.multitoken import heads_accuracy
from tinyformer.lab.setup import TaskSetup, scheme_label
from tinyformer.train.config import EvalConfig, RunConfig
from tinyformer.train.runtime import Runtime
from tinyformer.train.start import start_run
from tinyformer.train.status import SOLVED


class TaskEvaluation:
    """Exact match per length bin; best = highest accuracy on the training-range bin; solved once that bin
    reaches `eval.stop_accuracy`. The final evaluation adds free-running greedy accuracy (and, with several
    output heads, accuracy decoding k tokens per pass)."""

    score_name = "train_bin_error"

    def __init__(self, setup: TaskSetup, cfg: EvalConfig) -> None:
        self.setup, self.cfg = setup, cfg

    def _bins(self, module: torch.nn.Module, runtime: Runtime, greedy: bool) -> dict[str, Any]:
        return evaluate_bins(module, self.setup.eval_sets, batch_size=self.cfg.batch_size,
                             positions=self.setup.eval_positions, device=runtime.device, greedy=greedy,
                             greedy_examples=self.cfg.greedy_examples, precision=runtime.precision)

    def run(self, module: torch.nn.Module, runtime: Runtime) -> dict[str, Any]:
        return self._bins(module, runtime, greedy=False)

    def score(self, metrics: dict[str, Any]) -> float:
        return 1.0 - metrics["accuracy"][self.setup.train_bin]

    def solved(self, metrics: dict[str, Any]) -> bool:
        return metrics["accuracy"][self.setup.train_bin] >= self.cfg.stop_accuracy

    def describe(self, metrics: dict[str, Any]) -> str:
        return "accuracy " + "  ".join(f"{b}: {v:.3f}" for b, v in metrics["accuracy"].items())

    def final(self, module: torch.nn.Module, runtime: Runtime) -> dict[str, Any]:
        out = self._bins(module, runtime, greedy=self.cfg.greedy)
        if getattr(module.config, "n_predict", 1) > 1:  # multi-token prediction: decoding 1 and k per pass
            out["accuracy_heads"] = heads_accuracy(module, self.setup.eval_sets, positions=self.setup.eval_positions,
                                                   device=runtime.device, batch_size=self.cfg.batch_size,
                                                   max_examples=self.cfg.greedy_examples)
        # the task as configured (`add:pad=true`, not `add`): runs of two variants must not read as one task
        out.update(task=self.setup.cfg.task.name, scheme=scheme_label(self.setup.position),
                   train_bin=self.setup.train_bin)
        return out


def resolve_task_run(cfg: RunConfig) -> tuple[RunConfig, TaskSetup]:
    """The config with its model completed from the task (vocabulary, position table), and the setup."""
    setup = TaskSetup(cfg)
    return dataclasses.replace(cfg, model=setup.model_config(), model_keys=cfg.model_keys), setup


def train_task(cfg: RunConfig) -> dict[str, Any]:
    """Train one task run to the end (or until solved); returns its summary (RUN/summary.json). Also the job
    an executor runs in its worker processes (a module-level function: picklable)."""
    if not cfg.run_dir:
        raise TinyformerError("run_dir is not set; pass run_dir=DIR (tinyformer lengen train chooses one for you)")
    if cfg.train.target_loss is not None:
        raise TinyformerError("train.target_loss applies to language-model runs (a validation loss); a task run "
                              "stops at eval.stop_accuracy: set that instead")
    cfg, setup = resolve_task_run(cfg)

    def build(rt: Runtime, micro: int):
        return setup.stream(micro, rt.info.rank, rt.info.world_size), TaskEvaluation(setup, cfg.eval), None

    return start_run(cfg, setup.seq_len, build)


def result_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The fields of a task run's summary that sweeps, reports and the demo read."""
    return {
        "status": summary["status"],
        "steps": summary["step"],
        "stopped_early": summary["status"] == SOLVED,
        "accuracy": summary.get("accuracy", {}),
        "accuracy_greedy": summary.get("accuracy_greedy"),
        "train_seconds": summary.get("elapsed_s"),
        "params": summary.get("params"),
        **({"signal": summary["signal"]} if summary.get("signal") else {}),  # what stopped an interrupted run
    }

