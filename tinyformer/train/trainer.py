"""The training loop every run goes through: one model, one batch source, an evaluation, a run directory.

`Trainer` knows nothing of tasks or files: it takes any batch source (`next_batch`, `state_dict`,
`load_state_dict`) and an optional `Evaluation` (loss on a validation file for a language model, length-bin
accuracy for a lab task run). `fit` is the loop; each concern it calls is one object: the `Validator` (when
to evaluate, the best score), the `Checkpointer` (when to save, what, the index), the `StepMeter`
(tokens/s, MFU), `StopSignals`, and the Stateful pieces of `tinyformer.train.trainer_state`.
`tinyformer.train.start` resolves the resume point and hands it in; `tinyformer.lm.run` wires token files
into it, `tinyformer.lab.run` a synthetic task.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinyformer.train import checkpoint as ckpt
from tinyformer.train import rundir
from tinyformer.train.budget import Limits
from tinyformer.train.checkpoint import Checkpointer
from tinyformer.train.config import TrainConfig
from tinyformer.train.distributed import (
    agree_on_failure,
    all_reduce_max,
    all_reduce_sum,
    full_model,
    parallelize,
)
from tinyformer.train.evaluation import Evaluation, Validator
from tinyformer.train.metrics import MetricsLog, Progress, StepMeter
from tinyformer.train.optim import optimizer_for, set_lr
from tinyformer.train.plot import plot_runs
from tinyformer.train.report import write_report
from tinyformer.train.runtime import Runtime, autocast, sdpa_backend, training_parts
from tinyformer.train.signals import StopSignals
from tinyformer.train.status import DONE, EARLY_STOPPED, FINISHED, INTERRUPTED, PAUSED, SOLVED
from tinyformer.train.trackers import Trackers
from tinyformer.train.trainer_state import OptimizerState, RNGState, ScalerState, TrainState


@dataclass
class Resume:
    """Where a run continues: its checkpoint, the trainer state read from it (the settings already checked),
    and a note when it is not the one index.json names."""

    checkpoint: Path
    state: dict[str, Any]
    note: str | None = None


class Trainer:
    """Train `model` on batches from `train_source`; evaluate, checkpoint and log into `run_dir`.

    `model` is the plain module (on CPU or on the device). `evaluation` scores the model at each
    evaluation (and may stop the run once solved); `sample_fn(module, step) -> str` writes samples at
    evaluation time; `model_config` (a plain dict) is kept in the checkpoint (FSDP saves rebuild the model
    from it); `seq_len` is the training context (for MFU); `settings` are the values that decide the result
    (`tinyformer.train.config.result_settings`), kept in the checkpoint; `resume`: where to continue from;
    `clock` times the training steps (`tinyformer.train.budget`: a test drives a fake one).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        run_dir: str | Path,
        train_source: Any,
        runtime: Runtime,
        *,
        evaluation: Evaluation | None = None,
        sample_fn: Callable[[torch.nn.Module, int], str] | None = None,
        model_config: dict[str, Any] | None = None,
        seq_len: int,
        settings: dict[str, Any] | None = None,
        resume: Resume | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        info = runtime.info
        self.cfg, self.rt, self.run_dir = cfg, runtime, Path(run_dir)
        self.train_source, self.sample_fn = train_source, sample_fn
        self.end_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)  # where this invocation stops
        if resume is not None:
            ckpt.load_weights(model, resume.checkpoint)
        self.raw = model.to(runtime.device)
        self.module = parallelize(self.raw, cfg.parallel, info, runtime.device)
        self.optimizer = optimizer_for(self.raw, cfg)  # AdamW, or Muon + AdamW as one (tinyformer.train.optim)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
        if cfg.compile:
            self.module = torch.compile(self.module)
        self.state = TrainState()
        self.limits = Limits(cfg, self.state, clock, runtime)  # train.budget, train.target_loss
        self.schedule = self.limits.schedule()
        self.validator = Validator(evaluation, self.state, eval_every=cfg.eval_every, max_steps=cfg.max_steps,
                                   patience=cfg.early_stop_patience)
        model_config = model_config or {}
        self.checkpointer = Checkpointer(
            self.run_dir, cfg, self.state,
            pieces={"optimizer": OptimizerState(self.raw, self.optimizer), "scaler": ScalerState(self.scaler),
                    "sampler": train_source, "rng": RNGState(info), "schedule": self.schedule},
            constants={"model_config": model_config, "seq_len": seq_len, "settings": dict(settings or {})},
            model=lambda: full_model(self.raw, cfg.parallel, info, model_config), info=info, device=runtime.device)
        flops = self.raw.flops_per_token(seq_len) if hasattr(self.raw, "flops_per_token") else None
        self.meter = StepMeter(flops, info.world_size, peak_flops=cfg.peak_flops, device=str(runtime.device),
                               precision=runtime.precision)
        self.log = MetricsLog(self.run_dir / rundir.METRICS_FILE,
                              Trackers(cfg.loggers, self.run_dir, cfg.tracker_project) if info.is_main else None)
        self.progress = Progress(cfg.max_steps, cfg.progress and info.is_main, cfg.log_every, cfg.budget_s)
        self.resumed_from: Path | None = None
        self.resume_note: str | None = None
        self.extended_from: int | None = None  # the step a finished run ended at, when it is extended
        self.stop_signal: str | None = None  # the name of the signal that stopped this invocation
        if resume is not None:
            self._resume(resume)

    @property
    def step(self) -> int:
        return self.state.step

    def _resume(self, resume: Resume) -> None:
        self.checkpointer.load(resume.state, resume.checkpoint)
        self.resumed_from, self.resume_note = resume.checkpoint, resume.note
        if self.state.status == FINISHED and self.cfg.max_steps > self.state.step:
            # a finished run extended to a larger max_steps keeps the horizon its schedule completed
            self.schedule.keep_horizon()
            self.state.status, self.extended_from = None, self.state.step

    # ------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Run to `max_steps` (or until solved / early stop / signal); returns the summary written to
        RUN/summary.json. A run that already ended returns its summary without training again. An error
        finishes the trackers as failed (a wandb run is marked crashed, not left running) and goes on up."""
        try:
            return self._fit()
        except BaseException:
            self.log.close(failed=True)
            raise

    def _fit(self) -> dict[str, Any]:
        state, cfg = self.state, self.cfg
        if state.status in DONE and (summary := rundir.read_summary(self.run_dir)):
            return summary
        state.status = None  # whatever it was, this run trains on
        self._begin()
        status, train_loss = None, float("nan")
        self.module.train()
        with StopSignals() as stop:
            if state.eval_pending and self.validator.enabled:  # stopped while evaluating: evaluate it now
                status = self._end_of_step(stop, pending=True)
            while status is None and state.step < self.end_step:
                t0 = self.limits.clock()
                lr = self.schedule.lr(state.step)
                loss, grad_norm, tokens = self.train_step(lr)  # accumulate, clip, step
                if not math.isfinite(loss) and self.rt.precision != "fp16":
                    raise self.checkpointer.diverged(state.step, f"loss {loss}", named=state.step + 1)
                tokens *= self.rt.info.world_size
                seconds = self.limits.clock() - t0
                state.advance(tokens, cfg.batch_size, seconds)
                self.meter.add(tokens, cfg.batch_size, seconds)
                if (cfg.log_every and state.step % cfg.log_every == 0) or state.step == cfg.max_steps:
                    train_loss = self._log(lr, loss, grad_norm)
                status = self._end_of_step(stop)  # checkpoint and evaluate, if due
        if status is None:  # resumed at or past its last step (or its stop_at_step): nothing left to train
            status = FINISHED if state.step >= cfg.max_steps else PAUSED
            if status == FINISHED:
                state.status = status
                self.checkpointer.record(state.step, None)
        return self._finish(status, train_loss)

    def train_step(self, lr: float) -> tuple[float, float, int]:
        """One optimizer step over grad_accum micro-batches: (mean loss, grad norm before clipping, positions
        this process computed: its micro-batches' tokens, less the padding cut by `split_by_length`)."""
        set_lr(self.optimizer, lr)
        accum = self.cfg.grad_accum
        total = torch.zeros((), device=self.rt.device)
        tokens = 0
        for micro in range(accum):
            batch = self.train_source.next_batch()
            # rows of similar length with their trailing padding cut: the same loss, fewer positions
            parts, counts = training_parts(batch, self.rt.length_groups, self.raw.config.n_predict, self.rt.device)
            tokens += sum(part["ids"].numel() for part in parts)
            for i, part in enumerate(parts):
                last = micro == accum - 1 and i == len(parts) - 1
                sync = last or self.cfg.parallel != "ddp" or not self.rt.info.enabled
                ctx = contextlib.nullcontext() if sync else self.module.no_sync()
                with ctx, sdpa_backend(self.cfg.sdpa_backend):
                    loss = self._forward_loss(part, counts)
                    self.scaler.scale(loss / accum).backward()
                total += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return (total / accum).item(), float(norm), tokens

    def _forward_loss(self, batch: dict[str, torch.Tensor], counts: torch.Tensor | None) -> torch.Tensor:
        kwargs = {k: batch[k].to(self.rt.device) for k in ("position_ids", "attention_mask") if k in batch}
        ids = batch["ids"].to(self.rt.device, non_blocking=True)
        targets = batch["targets"].to(self.rt.device, non_blocking=True)
        with autocast(self.rt.device, self.rt.precision):
            _, loss = self.module(ids, targets=targets, return_logits=False, target_counts=counts, **kwargs)
        return loss

    def _log(self, lr: float, loss: float, grad_norm: float) -> float:
        """The train record of this step (the loss averaged over processes), and the progress line."""
        info, state = self.rt.info, self.state
        loss = all_reduce_sum([loss], info, self.rt.device)[0] / info.world_size
        record = {"kind": "train", "step": state.step, "tokens": state.tokens, "elapsed_s": state.elapsed,
                  "lr": lr, "train_loss": loss, "grad_norm": grad_norm, **self.meter.rates()}
        if info.is_main:
            self.log.write(record)
        self.progress.update(state.step, loss, lr, record["tokens_per_s"], state.elapsed)
        return loss

    def _end_of_step(self, stop: StopSignals, pending: bool = False) -> str | None:
        """After a step: checkpoint first, then evaluate (so a failing evaluation or sampler never costs the
        step), then decide whether the run ends. `pending`: only the evaluation a stopped run left undone.
        Returns the run's final status, or None to go on."""
        step, spent = self.state.step, self.limits.spent()
        evaluate = pending or self.validator.should_validate(step, last=spent)
        signum = 0 if pending else self._stop_requested(stop)
        if not pending:
            self.state.eval_pending = evaluate  # a kill during the evaluation leaves it to the resume
            self.checkpointer.save(step, last_step=step == self.end_step or spent, force=evaluate or bool(signum))
        if not signum:
            score, solved = self._validate() if evaluate else (None, False)
            self.state.eval_pending = False
            status = SOLVED if solved else self.limits.status(score) or (  # train.budget, train.target_loss
                EARLY_STOPPED if self.validator.early_stopped else FINISHED if step == self.cfg.max_steps else
                PAUSED if step == self.end_step else None)
            if evaluate or status in DONE:
                self.state.status = status if status in DONE else None
                self.checkpointer.record(step, score)
            if status == SOLVED:
                self.progress.note(f"solved at step {step}: "
                                   f"{self.validator.evaluation.describe(self.validator.last_metrics)}")
            elif status == EARLY_STOPPED:
                self.progress.note(f"early stop at step {step}: no improvement in {self.validator.patience} evals")
            if status is not None:
                return status
            if evaluate:  # a signal that came during the evaluation: the step is saved, stop now
                signum = self._stop_requested(stop)
        if signum:
            self.stop_signal = signal.Signals(signum).name
            self.progress.note(f"stopped by {self.stop_signal} at step {step}; checkpoint saved, resume with "
                               "resume=auto")
            return INTERRUPTED
        return None

    def _validate(self) -> tuple[float | None, bool]:
        """Evaluate the current (already saved) step, log it, track the best score, write samples.
        A failure is logged and training goes on: (None, False), on every process when one failed."""
        error = None
        self.module.eval()
        try:
            metrics, score, solved = self.validator.run(self.module, self.rt)
        except Exception as exc:
            error = exc
        finally:
            self.module.train()
            self._reshard()
        if (error := agree_on_failure(error, self.rt.info)) is not None:
            self._failed("evaluation", error)
            return None, False
        if not math.isfinite(score):  # never a best score nothing can beat
            raise self.checkpointer.diverged(self.state.step, f"its evaluation gave {self.validator.score_name} {score}")
        self.meter.remeasure()
        if self.rt.info.is_main:
            self.log.write({"kind": "eval", "step": self.state.step, "tokens": self.state.tokens,
                            "elapsed_s": self.state.elapsed, **metrics})
        self.progress.note(f"step {self.state.step}: {self.validator.evaluation.describe(metrics)}")
        self.validator.record(metrics, score)
        self._write_sample()
        return score, solved

    def _stop_requested(self, stop: StopSignals) -> int:
        """The signal that asked this run to stop (0 for none); every process agrees, or collectives would hang."""
        if not self.rt.info.enabled:
            return int(stop.signum or 0)
        return int(all_reduce_max([float(stop.signum or 0)], self.rt.info, self.rt.device)[0])

    # ------------------------------------------------------------ before and after

    def _begin(self) -> None:
        """Before the first step: the metrics file (new, or cut back to the resumed step), the index, the peak
        FLOP/s for MFU, and what the user should know about the start."""
        state, main = self.state, self.rt.info.is_main
        self.log.open(resumed=self.resumed_from is not None)
        if main and self.resumed_from is None:
            (self.run_dir / rundir.METRICS_FILE).write_text("")
            (self.run_dir / rundir.SAMPLES_FILE).unlink(missing_ok=True)
        elif main:  # the evaluation of a pending step runs again: drop the records it may have left
            self.log.truncate_after(state.step, drop_eval_at=state.step if state.eval_pending else None)
        if main:
            self.checkpointer.begin(fell_back=self.resume_note is not None)
        self.meter.start()
        if self.resume_note:
            self._warn(self.resume_note)
        if self.resumed_from is not None:
            self.progress.note(f"resumed from {self.resumed_from} at step {state.step}")
        if self.extended_from is not None:
            horizon = self.schedule.horizon
            text = (f"extending the run that finished at step {self.extended_from} to train.max_steps="
                    f"{self.cfg.max_steps}: the learning-rate schedule keeps its {horizon}-step horizon, so the new "
                    f"steps train at its final rate, {self.schedule.lr(horizon):.3g} (stretching it would raise "
                    f"the rate again and undo the decay)")
            if self.progress.enabled:
                self.progress.note(text)
            elif main:  # said even without progress output: the run does not train as its config reads
                print(text, flush=True)

    def _finish(self, status: str, train_loss: float) -> dict[str, Any]:
        """The summary (with the final evaluation of a run that ended), written with the run's plots."""
        self.progress.close()
        state, info = self.state, self.rt.info
        summary = {
            "status": status, "step": state.step, "tokens": state.tokens, "examples": state.examples,
            "train_loss": train_loss, **self.validator.last_metrics,
            f"best_{self.validator.score_name}": state.best_score, "elapsed_s": round(state.elapsed, 3),
            "tokens_per_s": state.tokens / state.elapsed if state.elapsed else None,
            "examples_per_s": state.examples / state.elapsed if state.elapsed else None,
            "precision": self.rt.precision, "sdpa_backend": self.cfg.sdpa_backend, "device": str(self.rt.device),
            "world_size": info.world_size, "params": self.raw.num_params() if hasattr(self.raw, "num_params") else None,
            "peak_flops": self.meter.peak, "peak_flops_source": self.meter.peak_source,
            "mfu": self.meter.mfu(state.tokens, state.elapsed), **self.limits.summary(status),
        }
        if self.stop_signal:
            summary["signal"] = self.stop_signal
        if status in DONE and self.validator.enabled:
            self.module.eval()
            try:
                with torch.random.fork_rng(devices=[]):
                    summary.update(self.validator.evaluation.final(self.raw, self.rt))
            except Exception as exc:  # the checkpoint is saved; a failing final evaluation costs only its numbers
                self._failed("final evaluation", exc)
            self.module.train()
        if info.is_main:
            rundir.write_summary(self.run_dir, summary)
            write_report(self.run_dir, summary, self.rt)
            self.log.close(summary)
            try:
                plot_runs([self.run_dir], self.run_dir / rundir.PLOTS_DIR / "curves.png")
            except Exception as exc:  # a plot must never cost a finished run
                self.progress.note(f"could not draw plots: {exc}")
        return summary

    def _write_sample(self) -> None:
        if self.sample_fn is None or self.cfg.sample_tokens <= 0:
            return
        try:
            with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG
                self.module.eval()
                text = self.sample_fn(self.raw, self.state.step)
            if self.rt.info.is_main:
                with open(self.run_dir / rundir.SAMPLES_FILE, "a", encoding="utf-8") as f:
                    f.write(f"=== step {self.state.step} ===\n{text}\n\n")
        except Exception as exc:
            self._failed("sampling", exc)
        finally:
            self.module.train()
            self._reshard()

    def _reshard(self) -> None:
        """FSDP2 leaves the root's parameters unsharded after a forward without backward (eval, sampling);
        shard them again so the optimizer's parameters are the registered ones when saving."""
        if self.cfg.parallel == "fsdp" and self.rt.info.enabled:
            for module in self.raw.modules():
                if hasattr(module, "reshard"):
                    module.reshard()

    def _warn(self, text: str) -> None:
        if self.rt.info.is_main:
            self.progress.warn(text)

    def _failed(self, what: str, exc: Exception) -> None:
        """Log a failure that must not stop training (evaluation, samples): one line on stderr, the
        traceback appended to RUN/errors.log."""
        where, step = self.run_dir / rundir.ERRORS_FILE, self.state.step
        if self.rt.info.is_main:
            with contextlib.suppress(OSError), open(where, "a", encoding="utf-8") as f:
                f.write(f"=== {what} at step {step} ===\n{''.join(traceback.format_exception(exc))}\n")
        message = str(exc).splitlines()[0] if str(exc) else ""
        self._warn(f"{what} at step {step} failed ({type(exc).__name__}: {message}); the checkpoint of "
                   f"step {step} is saved and training goes on (details in {where})")
