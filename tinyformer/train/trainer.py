"""The training loop every run goes through: one model, one batch source, an evaluation, a run directory.

`Trainer` knows nothing of tasks or files: it takes any batch source (`next_batch`, `state_dict`,
`load_state_dict`) and an optional `Evaluation` (loss on a validation file for a language model, length-bin
accuracy for a lab task run). It owns the optimizer, schedule, clipping, accumulation, precision, compile,
DDP/FSDP, checkpoints with exact resume, signals, metrics, progress and the summary.
`tinyformer.train.lm` wires token files into it, `tinyformer.lab.run` a synthetic task.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tinyformer import rundir
from tinyformer.errors import TinyformerError
from tinyformer.train import checkpoint as ckpt
from tinyformer.train.config import TrainConfig
from tinyformer.train.distributed import all_gather_objects, all_reduce_sum, barrier, parallelize
from tinyformer.train.evaluation import Evaluation
from tinyformer.train.metrics import MetricsLog, Progress, device_peak_flops
from tinyformer.train.optim import build_optimizer
from tinyformer.train.runtime import Runtime, autocast, rng_state, sdpa_backend, set_rng_state
from tinyformer.train.schedule import lr_at

DONE = ("finished", "solved", "early_stopped")  # statuses after which a run does not train again


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
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Train `model` on batches from `train_source`; evaluate, checkpoint and log into `run_dir`.

    `model` is the plain module (on CPU or on the device). `evaluation` scores the model at each
    evaluation (and may stop the run once solved); `sample_fn(module, step) -> str` writes samples at
    evaluation time; `model_config` (a plain dict) is kept in the checkpoint so a resume with a different
    model is refused; `seq_len` is the training context (for MFU and the resume check).
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
    ) -> None:
        self.cfg, self.rt, self.run_dir = cfg, runtime, Path(run_dir)
        self.train_source, self.evaluation, self.sample_fn = train_source, evaluation, sample_fn
        self.model_config = model_config or {}
        self.seq_len = seq_len
        info = runtime.info
        if cfg.batch_size % (info.world_size * cfg.grad_accum):
            raise TinyformerError(
                f"train.batch_size={cfg.batch_size} must be divisible by processes x grad_accum = "
                f"{info.world_size} x {cfg.grad_accum}"
            )
        self.micro_batch = cfg.batch_size // (info.world_size * cfg.grad_accum)

        self.step, self.tokens, self.examples, self.elapsed = 0, 0, 0, 0.0
        self.best_score: float | None = None
        self.evals_without_improvement = 0
        self.status: str | None = None  # set when a saved run ended (finished, solved, early_stopped)
        resume_from = self._find_resume(resume)
        state = ckpt.load_trainer_state(resume_from) if resume_from else None
        if state is not None:
            self._check_compatible(state, resume_from)
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
            self._load_state(state)
            self.resumed_from = resume_from

    # ------------------------------------------------------------ resume

    def _find_resume(self, resume: str) -> Path | None:
        latest = rundir.latest_checkpoint(self.run_dir)
        if resume == "never":
            if latest is not None:
                raise TinyformerError(
                    f"run_dir {self.run_dir} already has checkpoints; pass resume=auto to continue it "
                    "or choose a new run_dir"
                )
            return None
        if resume == "must" and latest is None:
            raise TinyformerError(f"nothing to resume: {self.run_dir} has no checkpoint; drop --resume to start")
        return latest

    def _check_compatible(self, state: dict[str, Any], where: Path) -> None:
        saved = state.get("model_config") or {}
        if self.model_config and saved != self.model_config:
            diff = sorted(k for k in set(saved) | set(self.model_config) if saved.get(k) != self.model_config.get(k))
            detail = ", ".join(f"model.{k}: {saved.get(k)!r} -> {self.model_config.get(k)!r}" for k in diff[:3])
            raise TinyformerError(
                f"cannot resume {where}: the config changed the model ({detail}); "
                "use the run's config.yaml or start a new run_dir"
            )
        if state.get("seq_len") != self.seq_len:
            raise TinyformerError(
                f"cannot resume {where}: it trained with seq_len {state.get('seq_len')}, the config says "
                f"{self.seq_len}; use the run's config.yaml or start a new run_dir"
            )

    def _load_state(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(
            self.raw, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.train_source.load_state_dict(state["sampler"])
        rngs = state["rng"]
        set_rng_state(rngs[self.rt.info.rank] if self.rt.info.rank < len(rngs) else rngs[0])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.examples = int(state.get("examples", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best_score = state.get("best_score", state.get("best_val_loss"))
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.status = state.get("status")

    # ------------------------------------------------------------ checkpoints

    def _full_model_for_save(self) -> torch.nn.Module | None:
        """The plain module with full weights on rank 0 (None on other ranks); under FSDP the shards are
        gathered into a fresh CPU copy, so the file has clean, unsharded names."""
        if self.cfg.parallel != "fsdp" or not self.rt.info.enabled:
            return self.raw if self.rt.info.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from tinyformer.model import ModelConfig, Transformer

        full = get_model_state_dict(self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.rt.info.is_main:
            return None
        with torch.device("cpu"):
            copy = Transformer(ModelConfig.from_dict(self.model_config))
        copy.load_state_dict(full)
        return copy

    def save(self, score: float | None = None, status: str | None = None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optim_state = get_optimizer_state_dict(
            self.raw, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        rngs = all_gather_objects(rng_state(), self.rt.info)
        model = self._full_model_for_save()
        if self.rt.info.is_main:
            state = {
                "step": self.step,
                "tokens": self.tokens,
                "examples": self.examples,
                "elapsed": self.elapsed,
                "optimizer": optim_state,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "sampler": self.train_source.state_dict(),
                "rng": rngs,
                "schedule": {
                    "schedule": self.cfg.schedule, "lr": self.cfg.lr, "min_lr": self.cfg.final_lr,
                    "warmup": self.cfg.warmup, "total": self.cfg.max_steps,
                },
                "model_config": self.model_config,
                "seq_len": self.seq_len,
                "best_score": self.best_score,
                "evals_without_improvement": self.evals_without_improvement,
                "status": status,
            }
            ckpt.save_checkpoint(self.run_dir, self.step, model, state, score=score, keep_last=self.cfg.keep_last)
        barrier(self.rt.info)

    # ------------------------------------------------------------ one step, evaluation

    def _forward_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kwargs = {k: batch[k].to(self.rt.device) for k in ("position_ids", "attention_mask") if k in batch}
        ids = batch["ids"].to(self.rt.device, non_blocking=True)
        targets = batch["targets"].to(self.rt.device, non_blocking=True)
        with autocast(self.rt.device, self.rt.precision):
            _, loss = self.module(ids, targets=targets, **kwargs)
        return loss

    def train_step(self, lr: float) -> tuple[float, float, int]:
        """One optimizer step over grad_accum micro-batches: (mean loss, grad norm before clipping, tokens
        in this process's micro-batches, padding included)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum = self.cfg.grad_accum
        total = torch.zeros((), device=self.rt.device)
        tokens = 0
        for micro in range(accum):
            batch = self.train_source.next_batch()
            tokens += batch["ids"].numel()
            sync = micro == accum - 1 or self.cfg.parallel != "ddp" or not self.rt.info.enabled
            ctx = contextlib.nullcontext() if sync else self.module.no_sync()
            with ctx, sdpa_backend(self.cfg.sdpa_backend):
                loss = self._forward_loss(batch)
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
        with torch.random.fork_rng(devices=[]):  # evaluating must not move the training RNG
            metrics = self.evaluation.run(self.module, self.rt)
        self.module.train()
        self._reshard()
        return metrics

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
            else:
                log.truncate_after(self.step)
        return log

    def fit(self) -> dict[str, Any]:
        """Run to `max_steps` (or until solved / early stop / signal); returns the summary written to
        RUN/summary.json. A run that already ended returns its summary without training again."""
        if self.status in DONE and rundir.read_summary(self.run_dir):
            return rundir.read_summary(self.run_dir)
        cfg, info = self.cfg, self.rt.info
        main = info.is_main
        log = self._open_log()
        peak, peak_source = self._peak_flops()
        flops_per_token = self.raw.flops_per_token(self.seq_len) if hasattr(self.raw, "flops_per_token") else None
        progress = Progress(cfg.max_steps, self.step, cfg.progress and main, cfg.log_every)
        if self.resumed_from is not None:
            progress.note(f"resumed from {self.resumed_from} at step {self.step}")
        status, last_eval, train_loss = "finished", {}, float("nan")
        self.module.train()
        window_time, window_tokens, window_examples = 0.0, 0, 0
        end_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
        with _StopFlag() as stop:
            while self.step < end_step:
                t0 = time.perf_counter()
                lr = lr_at(self.step, schedule=cfg.schedule, lr=cfg.lr, min_lr=cfg.final_lr, warmup=cfg.warmup,
                           total=cfg.max_steps)
                loss, grad_norm, step_tokens = self.train_step(lr)
                if not math.isfinite(loss) and self.rt.precision != "fp16":
                    raise TinyformerError(
                        f"training diverged at step {self.step + 1} (loss {loss}); lower train.lr or raise train.warmup"
                    )
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
                    record = {"kind": "train", "step": self.step, "tokens": self.tokens, "lr": lr,
                              "train_loss": loss, "grad_norm": grad_norm, "tokens_per_s": tok_s,
                              "examples_per_s": window_examples / window_time if window_time > 0 else 0.0}
                    window_time, window_tokens, window_examples = 0.0, 0, 0
                    if peak and flops_per_token:
                        record["mfu"] = tok_s * flops_per_token / (peak * info.world_size)
                    if main:
                        log.write(record)
                    progress.update(self.step, loss, lr, tok_s)
                score, solved = None, False
                if self.evaluation is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or is_last):
                    last_eval = self.evaluate()
                    score = self.evaluation.score(last_eval)
                    solved = self.evaluation.solved(last_eval)
                    if peak and peak_source.startswith("measured"):
                        # A ceiling measured while something else ran reads low (MFU over 100%); the best
                        # measurement seen is the truest, so measure again at each evaluation and keep the max.
                        peak = max(peak, self._peak_flops()[0])
                    if main:
                        log.write({"kind": "eval", "step": self.step, "tokens": self.tokens, **last_eval})
                    progress.note(f"step {self.step}: {self.evaluation.describe(last_eval)}")
                    if self.best_score is None or score < self.best_score:
                        self.best_score, self.evals_without_improvement = score, 0
                    else:
                        self.evals_without_improvement += 1
                    self._write_sample()
                if info.enabled:  # every process must agree to stop, or collectives would hang
                    stop_now = all_reduce_sum([1.0 if stop.signal else 0.0], info, self.rt.device)[0] > 0
                else:
                    stop_now = stop.signal is not None
                early = cfg.early_stop_patience > 0 and self.evals_without_improvement >= cfg.early_stop_patience
                paused = self.step == end_step and not is_last
                if stop_now:
                    status = "interrupted"
                elif solved:
                    status = "solved"
                elif early:
                    status = "early_stopped"
                elif paused:
                    status = "paused"
                ends = is_last or solved or early
                if score is not None or stop_now or ends or paused or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0):
                    self.save(score, status if ends else None)
                if stop_now:
                    progress.note(f"stopped by signal at step {self.step}; checkpoint saved, resume with resume=auto")
                    break
                if solved:
                    progress.note(f"solved at step {self.step}: {self.evaluation.describe(last_eval)}")
                    break
                if early:
                    progress.note(f"early stop at step {self.step}: no improvement in {cfg.early_stop_patience} evals")
                    break
        progress.close()
        log.close()
        summary = {
            "status": status, "step": self.step, "tokens": self.tokens, "examples": self.examples,
            "train_loss": train_loss, **last_eval,
            "best_" + (self.evaluation.score_name if self.evaluation else "score"): self.best_score,
            "elapsed_s": round(self.elapsed, 3), "tokens_per_s": self.tokens / self.elapsed if self.elapsed else None,
            "examples_per_s": self.examples / self.elapsed if self.elapsed else None,
            "precision": self.rt.precision, "device": str(self.rt.device), "world_size": info.world_size,
            "params": self.raw.num_params() if hasattr(self.raw, "num_params") else None,
            "peak_flops": peak, "peak_flops_source": peak_source,
        }
        if status in DONE and self.evaluation is not None:
            self.module.eval()
            with torch.random.fork_rng(devices=[]):
                summary.update(self.evaluation.final(self.raw, self.rt))
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
        with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG
            self.module.eval()
            text = self.sample_fn(self.raw, self.step)
            self.module.train()
        self._reshard()
        if self.rt.info.is_main:
            with open(self.run_dir / rundir.SAMPLES_FILE, "a", encoding="utf-8") as f:
                f.write(f"=== step {self.step} ===\n{text}\n\n")
