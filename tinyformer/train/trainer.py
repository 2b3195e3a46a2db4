"""The training loop every run goes through: one model, one batch source, an evaluation, a run directory.

`Trainer` knows nothing of tasks or files: it takes any batch source (`next_batch`, `state_dict`,
`load_state_dict`) and an optional `Evaluation` (loss on a validation file for a language model, length-bin
accuracy for a lab task run). It owns the optimizer, schedule, clipping, accumulation, precision, compile,
DDP/FSDP, checkpoints with exact resume, signals, metrics, progress and the summary.
`tinyformer.lm.run` wires token files into it, `tinyformer.lab.run` a synthetic task.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tinyformer.errors import Interrupted, TinyformerError
from tinyformer.train import checkpoint as ckpt
from tinyformer.train import rundir
from tinyformer.train.config import TrainConfig
from tinyformer.train.distributed import (
    agree_on_failure,
    all_reduce_max,
    all_reduce_sum,
    parallelize,
)
from tinyformer.train.evaluation import Evaluation
from tinyformer.train.metrics import MetricsLog, Progress, device_peak_flops
from tinyformer.train.optim import build_optimizer
from tinyformer.train.runtime import Runtime, autocast, sdpa_backend, training_parts
from tinyformer.train.schedule import lr_at
from tinyformer.train.trainer_state import DONE, TrainerState, check_settings, find_resume


def exit_code(summary: dict[str, Any]) -> int:
    """The process exit code for a run's summary: 0 when it ended or paused, 128 + the signal number when a
    signal stopped it after saving (130 for SIGINT, 143 for SIGTERM), so a scheduler can tell them apart."""
    if summary.get("status") != "interrupted":
        return 0
    try:
        return 128 + int(signal.Signals[summary.get("signal") or "SIGINT"])
    except KeyError:
        return 128 + int(signal.SIGINT)


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves a checkpoint and exits cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # second signal: give up at once
            raise Interrupted(signum)
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer(TrainerState):
    """Train `model` on batches from `train_source`; evaluate, checkpoint and log into `run_dir`.

    `model` is the plain module (on CPU or on the device). `evaluation` scores the model at each
    evaluation (and may stop the run once solved); `sample_fn(module, step) -> str` writes samples at
    evaluation time; `model_config` (a plain dict) is kept in the checkpoint (FSDP saves rebuild the model
    from it); `seq_len` is the training context (for MFU); `settings` are the values that decide the result
    (`tinyformer.train.config.result_settings`): kept in the checkpoint, a resume that changes one is refused.
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
        resume: str = "auto",
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.rt, self.run_dir = cfg, runtime, Path(run_dir)
        self.train_source, self.evaluation, self.sample_fn = train_source, evaluation, sample_fn
        self.model_config = model_config or {}
        self.seq_len = seq_len
        self.settings = dict(settings or {})
        self.settings.setdefault("train.seq_len", seq_len)
        if self.model_config:
            self.settings.update({f"model.{k}": v for k, v in self.model_config.items() if f"model.{k}" not in self.settings})
        info = runtime.info
        if cfg.batch_size % (info.world_size * cfg.grad_accum):
            raise TinyformerError(
                f"train.batch_size={cfg.batch_size} must be divisible by processes x grad_accum = "
                f"{info.world_size} x {cfg.grad_accum}"
            )
        self.micro_batch = cfg.batch_size // (info.world_size * cfg.grad_accum)

        self.step, self.tokens, self.examples, self.elapsed = 0, 0, 0, 0.0
        self.best_score: float | None = None
        self.best_checkpoint: str | None = None
        self.evals_without_improvement = 0
        self.eval_pending = False  # the checkpoint of this step was written before its evaluation finished
        self.status: str | None = None  # set when a saved run ended (finished, solved, early_stopped)
        # the schedule's length: max_steps, or the one a finished run completed when it is extended
        self.horizon, self.horizon_kept, self.extended_from = cfg.max_steps, False, None
        self.last_saved: Path | None = None
        self.last_eval: dict[str, Any] = {}
        self.progress: Progress | None = None
        resume_from, self.resume_note = find_resume(self.run_dir, resume)
        state = ckpt.load_trainer_state(resume_from) if resume_from else None
        if state is not None:
            check_settings(state.get("settings"), self.settings, self.run_dir)
            ckpt.load_weights(model, resume_from)

        self.raw = model.to(runtime.device)
        self.module = parallelize(self.raw, cfg.parallel, info, runtime.device)
        self.optimizer = build_optimizer(
            self.raw, cfg.lr, cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
        )
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
        if cfg.compile:
            self.module = torch.compile(self.module)
        self.resumed_from = None
        if state is not None:
            self._load_state(state, resume_from)
            self.resumed_from = self.last_saved = resume_from

    # ------------------------------------------------------------ one step, evaluation

    def _forward_loss(self, batch: dict[str, torch.Tensor], counts: torch.Tensor | None) -> torch.Tensor:
        kwargs = {k: batch[k].to(self.rt.device) for k in ("position_ids", "attention_mask") if k in batch}
        ids = batch["ids"].to(self.rt.device, non_blocking=True)
        targets = batch["targets"].to(self.rt.device, non_blocking=True)
        with autocast(self.rt.device, self.rt.precision):
            _, loss = self.module(ids, targets=targets, return_logits=False, target_counts=counts, **kwargs)
        return loss

    def train_step(self, lr: float) -> tuple[float, float, int]:
        """One optimizer step over grad_accum micro-batches: (mean loss, grad norm before clipping, positions
        this process computed: its micro-batches' tokens, less the padding cut by `split_by_length`)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
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

    def evaluate(self) -> dict[str, Any]:
        """The evaluation's metrics (every process takes part)."""
        assert self.evaluation is not None
        self.module.eval()
        try:
            with torch.random.fork_rng(devices=[]):  # evaluating must not move the training RNG
                return self.evaluation.run(self.module, self.rt)
        finally:
            self.module.train()
            self._reshard()

    def _warn(self, text: str) -> None:
        if self.rt.info.is_main:
            if self.progress is not None:
                self.progress.warn(text)
            else:
                print(f"tinyformer: warning: {text}", file=sys.stderr, flush=True)

    def _failed(self, what: str, exc: Exception) -> None:
        """Log a failure that must not stop training (evaluation, samples): one line on stderr, the
        traceback appended to RUN/errors.log."""
        where = self.run_dir / rundir.ERRORS_FILE
        if self.rt.info.is_main:
            with contextlib.suppress(OSError), open(where, "a", encoding="utf-8") as f:
                f.write(f"=== {what} at step {self.step} ===\n{''.join(traceback.format_exception(exc))}\n")
        message = str(exc).splitlines()[0] if str(exc) else ""
        self._warn(f"{what} at step {self.step} failed ({type(exc).__name__}: {message}); the checkpoint of "
                   f"step {self.step} is saved and training goes on (details in {where})")

    def _evaluate_step(self) -> tuple[float | None, bool]:
        """Evaluate the current (already saved) step, log it, track the best score, write samples.
        A failure is logged and training goes on: (None, False), on every process when one failed."""
        error = None
        try:
            metrics = self.evaluate()
            score = self.evaluation.score(metrics)
            solved = self.evaluation.solved(metrics)
        except Exception as exc:
            error = exc
        if (error := agree_on_failure(error, self.rt.info)) is not None:
            self._failed("evaluation", error)
            return None, False
        if not math.isfinite(score):  # never a best score nothing can beat
            raise self.diverged(f"its evaluation gave {self.evaluation.score_name} {score}")
        self.last_eval = metrics
        if self.peak and self.peak_source.startswith("measured"):
            # A ceiling measured while something else ran reads low (MFU over 100%); the best
            # measurement seen is the truest, so measure again at each evaluation and keep the max.
            self.peak = max(self.peak, self._peak_flops()[0])
        if self.rt.info.is_main:
            self.log.write({"kind": "eval", "step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed,
                            **metrics})
        self.progress.note(f"step {self.step}: {self.evaluation.describe(metrics)}")
        if self.best_score is None or score < self.best_score:
            self.best_score, self.evals_without_improvement = score, 0
        else:
            self.evals_without_improvement += 1
        self._write_sample()
        return score, solved

    def _stop_requested(self, stop: _StopFlag) -> int:
        """The signal that asked this run to stop (0 for none); every process agrees, or collectives would hang."""
        if not self.rt.info.enabled:
            return int(stop.signal or 0)
        return int(all_reduce_max([float(stop.signal or 0)], self.rt.info, self.rt.device)[0])

    # ------------------------------------------------------------ the run

    def _peak_flops(self) -> tuple[float | None, str]:
        if self.cfg.peak_flops:
            return self.cfg.peak_flops, "train.peak_flops"
        if not hasattr(self.raw, "flops_per_token"):
            return None, "model has no flops_per_token"
        return device_peak_flops(str(self.rt.device), self.rt.precision)

    def _open_log(self) -> MetricsLog:
        main = self.rt.info.is_main
        log = MetricsLog(self.run_dir / rundir.METRICS_FILE,
                         self.run_dir / "tb" if (self.cfg.tensorboard and main) else None)
        if main:
            if self.resumed_from is None:
                (self.run_dir / rundir.METRICS_FILE).write_text("")
                (self.run_dir / rundir.SAMPLES_FILE).unlink(missing_ok=True)
                # a stale index (naming checkpoints that never completed) must not outrank this run's scores
                (self.run_dir / rundir.CHECKPOINTS / rundir.INDEX_FILE).unlink(missing_ok=True)
            else:
                # the evaluation of a pending step runs again: drop the records it may have left
                log.truncate_after(self.step, drop_eval_at=self.step if self.eval_pending else None)
                if self.resume_note:
                    self._repair_index()
        return log

    def _end_of_step(self, stop: _StopFlag, end_step: int, pending: bool = False) -> str | None:
        """After a step: checkpoint first, then evaluate (so a failing evaluation or sampler never costs the
        step), then decide whether the run ends. `pending`: only the evaluation a stopped run left undone.
        Returns the run's final status, or None to go on."""
        cfg = self.cfg
        is_last = self.step == cfg.max_steps
        paused = self.step == end_step and not is_last
        if pending:
            due_eval, signum = True, 0
        else:
            due_eval = self.evaluation is not None and (bool(cfg.eval_every and self.step % cfg.eval_every == 0)
                                                        or is_last)
            signum = self._stop_requested(stop)
            if due_eval or signum or is_last or paused or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0):
                self.eval_pending = due_eval
                self.save()
        if not signum:
            score, solved = self._evaluate_step() if due_eval else (None, False)
            self.eval_pending = False
            early = cfg.early_stop_patience > 0 and self.evals_without_improvement >= cfg.early_stop_patience
            status = ("solved" if solved else "early_stopped" if early else "finished" if is_last
                      else "paused" if paused else None)
            if due_eval or status in DONE:
                self._record_outcome(score, status if status in DONE else None)
            if status is not None:
                if status == "solved":
                    self.progress.note(f"solved at step {self.step}: {self.evaluation.describe(self.last_eval)}")
                elif status == "early_stopped":
                    self.progress.note(f"early stop at step {self.step}: no improvement in "
                                       f"{cfg.early_stop_patience} evals")
                return status
            if due_eval:  # a signal that came during the evaluation: the step is saved, stop now
                signum = self._stop_requested(stop)
        if signum:
            self.stop_signal = signal.Signals(signum).name
            self.progress.note(f"stopped by {self.stop_signal} at step {self.step}; checkpoint saved, "
                               "resume with resume=auto")
            return "interrupted"
        return None

    def fit(self) -> dict[str, Any]:
        """Run to `max_steps` (or until solved / early stop / signal); returns the summary written to
        RUN/summary.json. A run that already ended returns its summary without training again."""
        if self.status in DONE and rundir.read_summary(self.run_dir):
            return rundir.read_summary(self.run_dir)
        cfg, info = self.cfg, self.rt.info
        main = info.is_main
        self.log = log = self._open_log()
        self.peak, self.peak_source = self._peak_flops()
        flops_per_token = self.raw.flops_per_token(self.seq_len) if hasattr(self.raw, "flops_per_token") else None
        self.progress = progress = Progress(cfg.max_steps, cfg.progress and main, cfg.log_every)
        if self.resume_note:
            self._warn(self.resume_note)
        if self.resumed_from is not None:
            progress.note(f"resumed from {self.resumed_from} at step {self.step}")
        if self.extended_from is not None:
            final = lr_at(self.horizon, schedule=cfg.schedule, lr=cfg.lr, min_lr=cfg.final_lr, warmup=cfg.warmup,
                          total=self.horizon)
            text = (f"extending the run that finished at step {self.extended_from} to train.max_steps={cfg.max_steps}: "
                    f"the learning-rate schedule keeps its {self.horizon}-step horizon, so the new steps train at its "
                    f"final rate, {final:.3g} (stretching it would raise the rate again and undo the decay)")
            if progress.enabled:
                progress.note(text)
            elif main:  # said even without progress output: the run does not train as its config reads
                print(text, flush=True)
        self.stop_signal: str | None = None
        status, train_loss = None, float("nan")
        self.module.train()
        window_time, window_tokens, window_examples = 0.0, 0, 0
        end_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
        with _StopFlag() as stop:
            if self.eval_pending and self.evaluation is not None:  # stopped while evaluating: evaluate it now
                status = self._end_of_step(stop, end_step, pending=True)
            while status is None and self.step < end_step:
                t0 = time.perf_counter()
                lr = lr_at(self.step, schedule=cfg.schedule, lr=cfg.lr, min_lr=cfg.final_lr, warmup=cfg.warmup,
                           total=self.horizon)
                loss, grad_norm, step_tokens = self.train_step(lr)
                if not math.isfinite(loss) and self.rt.precision != "fp16":
                    raise self.diverged(f"loss {loss}", self.step + 1)
                self.step += 1
                step_tokens *= info.world_size
                self.tokens += step_tokens
                self.examples += cfg.batch_size
                window_tokens += step_tokens
                window_examples += cfg.batch_size
                step_time = time.perf_counter() - t0
                self.elapsed += step_time
                window_time += step_time
                is_last = self.step == cfg.max_steps
                if (cfg.log_every and self.step % cfg.log_every == 0) or is_last:
                    loss = all_reduce_sum([loss], info, self.rt.device)[0] / info.world_size
                    train_loss = loss
                    tok_s = window_tokens / window_time if window_time > 0 else 0.0  # training time only
                    record = {"kind": "train", "step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed, "lr": lr,
                              "train_loss": loss, "grad_norm": grad_norm, "tokens_per_s": tok_s,
                              "examples_per_s": window_examples / window_time if window_time > 0 else 0.0}
                    window_time, window_tokens, window_examples = 0.0, 0, 0
                    if self.peak and flops_per_token:
                        record["mfu"] = tok_s * flops_per_token / (self.peak * info.world_size)
                    if main:
                        log.write(record)
                    progress.update(self.step, loss, lr, tok_s)
                status = self._end_of_step(stop, end_step)
        if status is None:  # resumed at or past its last step (or its stop_at_step): nothing left to train
            status = "finished" if self.step >= cfg.max_steps else "paused"
            if status == "finished":
                self._record_outcome(None, status)
        progress.close()
        log.close()
        summary = {
            "status": status, "step": self.step, "tokens": self.tokens, "examples": self.examples,
            "train_loss": train_loss, **self.last_eval,
            "best_" + (self.evaluation.score_name if self.evaluation else "score"): self.best_score,
            "elapsed_s": round(self.elapsed, 3), "tokens_per_s": self.tokens / self.elapsed if self.elapsed else None,
            "examples_per_s": self.examples / self.elapsed if self.elapsed else None,
            "precision": self.rt.precision, "sdpa_backend": self.cfg.sdpa_backend, "device": str(self.rt.device),
            "world_size": info.world_size,
            "params": self.raw.num_params() if hasattr(self.raw, "num_params") else None,
            "peak_flops": self.peak, "peak_flops_source": self.peak_source,
        }
        if self.stop_signal:
            summary["signal"] = self.stop_signal
        if status in DONE and self.evaluation is not None:
            self.module.eval()
            try:
                with torch.random.fork_rng(devices=[]):
                    summary.update(self.evaluation.final(self.raw, self.rt))
            except Exception as exc:  # the checkpoint is saved; a failing final evaluation costs only its numbers
                self._failed("final evaluation", exc)
            self.module.train()
        if main:
            rundir.write_summary(self.run_dir, summary)
            try:
                from tinyformer.train.plot import plot_runs

                plot_runs([self.run_dir], self.run_dir / rundir.PLOTS_DIR / "curves.png")
            except Exception as exc:  # a plot must never cost a finished run
                progress.note(f"could not draw plots: {exc}")
        return summary

    def _reshard(self) -> None:
        """FSDP2 leaves the root's parameters unsharded after a forward without backward (eval, sampling);
        shard them again so the optimizer's parameters are the registered ones when saving."""
        if self.cfg.parallel == "fsdp" and self.rt.info.enabled:
            for module in self.raw.modules():
                if hasattr(module, "reshard"):
                    module.reshard()

    def _write_sample(self) -> None:
        if self.sample_fn is None or self.cfg.sample_tokens <= 0:
            return
        try:
            with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG
                self.module.eval()
                text = self.sample_fn(self.raw, self.step)
            if self.rt.info.is_main:
                with open(self.run_dir / rundir.SAMPLES_FILE, "a", encoding="utf-8") as f:
                    f.write(f"=== step {self.step} ===\n{text}\n\n")
        except Exception as exc:
            self._failed("sampling", exc)
        finally:
            self.module.train()
            self._reshard()
