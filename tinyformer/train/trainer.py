"""The training loop: one model, one batch source, a TrainConfig and a run directory; exactly resumable.

`Trainer` knows nothing of tasks or files: it takes any batch source (`next_batch`, `state_dict`,
`load_state_dict`) and an optional `val_batches()` factory. `train_lm(run_config)` in this module wires
token files, a tokenizer and the model into it for language-model runs (what `tinyformer train` calls).
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tinyformer.config import to_dict
from tinyformer.errors import TinyformerError
from tinyformer.train import checkpoint as ckpt
from tinyformer.train.config import RunConfig, TrainConfig
from tinyformer.train.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    init_distributed,
    parallelize,
)
from tinyformer.train.metrics import MetricsLog, Progress, device_peak_flops
from tinyformer.train.optim import build_optimizer
from tinyformer.train.schedule import lr_at

LN2 = math.log(2.0)


# ---------------------------------------------------------------- runtime: device, precision, processes


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    info: DistInfo


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available, else mps, else cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TinyformerError(f"train.device={name} but CUDA is not available here; use train.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TinyformerError(f"train.device={name} but MPS is not available here; use train.device=auto or cpu")
    return device


def cpu_bf16_is_faster(size: int = 512) -> bool:
    """Whether bf16 matmuls beat fp32 by a clear margin on this CPU (true on CPUs with AVX512-BF16 / AMX)."""
    from tinyformer.train.metrics import matmul_ceiling

    return matmul_ceiling("cpu", "bf16", size, 0.1) > 1.3 * matmul_ceiling("cpu", "fp32", size, 0.1)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on CUDA with bf16 support, on CPU when bf16 matmuls are measurably faster; else fp32."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise TinyformerError("train.precision=fp16 needs a GPU; on CPU use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_bf16_is_faster():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def sdpa_backend(name: str):
    """A context choosing the scaled-dot-product-attention kernel (`auto`: leave it to torch)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]
    return sdpa_kernel([backend])


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Device, process group (under torchrun) and precision for a run."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = init_distributed(cfg.parallel, device.type, cfg.dist_backend)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank if info.enabled else (device.index or 0))
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    return Runtime(device, resolve_precision(cfg.precision, device), info)


# ---------------------------------------------------------------- RNG state, for exact resume


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def loss_over(module: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device,
              precision: str) -> tuple[float, float]:
    """(summed cross-entropy in nats, number of target tokens) of `module` over `batches` (-100 = ignore)."""
    loss_sum, count = 0.0, 0.0
    for batch in batches:
        ids = batch["ids"].to(device)
        targets = batch["targets"].to(device)
        kwargs = {k: batch[k].to(device) for k in ("position_ids", "attention_mask") if k in batch}
        with autocast(device, precision):
            logits, _ = module(ids, **kwargs)
        logits = logits[:, : targets.shape[1], :].float()
        loss_sum += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
        count += (targets != -100).sum().item()
    return loss_sum, count


def loss_metrics(loss_sum: float, count: float, bytes_per_token: float | None) -> dict[str, float]:
    """Mean loss, perplexity and (given the file's bytes per token) bits per byte."""
    loss = loss_sum / max(count, 1.0)
    out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": int(count)}
    if bytes_per_token:
        out["val_bpb"] = loss / (LN2 * bytes_per_token)
    return out


# ---------------------------------------------------------------- the loop


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

    `model` is the plain module (on CPU or on the device). `val_batches` returns a fresh iterable of
    batches for one evaluation; `bytes_per_token` turns the loss into bits per byte; `sample_fn(module,
    step) -> str` writes samples at evaluation time; `model_config` and `run_config` (plain dicts) are kept
    in the checkpoint so a resume with a different model is refused.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        run_dir: str | Path,
        train_source: Any,
        runtime: Runtime,
        *,
        val_batches: Callable[[], Iterable[dict[str, torch.Tensor]]] | None = None,
        bytes_per_token: float | None = None,
        sample_fn: Callable[[torch.nn.Module, int], str] | None = None,
        model_config: dict[str, Any] | None = None,
        seq_len: int,
        resume: str = "auto",
    ) -> None:
        self.cfg, self.rt, self.run_dir = cfg, runtime, Path(run_dir)
        self.train_source, self.val_batches = train_source, val_batches
        self.bytes_per_token, self.sample_fn = bytes_per_token, sample_fn
        self.model_config = model_config or {}
        self.seq_len = seq_len
        info = runtime.info
        if cfg.batch_size % (info.world_size * cfg.grad_accum):
            raise TinyformerError(
                f"train.batch_size={cfg.batch_size} must be divisible by processes x grad_accum = "
                f"{info.world_size} x {cfg.grad_accum}"
            )
        self.micro_batch = cfg.batch_size // (info.world_size * cfg.grad_accum)

        self.step, self.tokens, self.elapsed = 0, 0, 0.0
        self.best_val_loss: float | None = None
        self.evals_without_improvement = 0
        resume_from = self._find_resume(resume)
        state = ckpt.load_trainer_state(resume_from) if resume_from else None
        if state is not None:
            self._check_compatible(state, resume_from)
            self._load_weights(model, resume_from)

        self.raw = model.to(runtime.device)
        self.module = parallelize(self.raw, cfg.parallel, info, runtime.device)
        self.optimizer = build_optimizer(
            self.raw, cfg.lr, cfg.weight_decay, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
        )
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
        if cfg.compile:
            self.module = torch.compile(self.module)
        if state is not None:
            self._load_state(state)
            self.resumed_from = resume_from
        else:
            self.resumed_from = None

    # ------------------------------------------------------------ resume

    def _find_resume(self, resume: str) -> Path | None:
        latest = ckpt.latest_checkpoint(self.run_dir)
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

    @staticmethod
    def _load_weights(model: torch.nn.Module, where: Path) -> None:
        from tinyformer.model.io import WEIGHTS_FILE, load_state

        load_state(model, where / WEIGHTS_FILE)

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
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best_val_loss = state.get("best_val_loss")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))

    # ------------------------------------------------------------ checkpoints

    def _full_model_for_save(self) -> torch.nn.Module | None:
        """The plain module with full weights on rank 0 (None on other ranks); under FSDP the shards are
        gathered into a fresh CPU copy, so the file has clean, unsharded names."""
        if self.cfg.parallel != "fsdp" or not self.rt.info.enabled:
            return self.raw if self.rt.info.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.rt.info.is_main:
            return None
        copy = self._build_copy()
        copy.load_state_dict(full)
        return copy

    def _build_copy(self) -> torch.nn.Module:
        from tinyformer.model import ModelConfig, Transformer

        with torch.device("cpu"):
            return Transformer(ModelConfig.from_dict(self.model_config))

    def save(self, val_loss: float | None = None) -> None:
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
                "elapsed": self.elapsed,
                "optimizer": optim_state,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "sampler": self.train_source.state_dict(),
                "rng": rngs,
                "schedule": {
                    "schedule": self.cfg.schedule, "lr": self.cfg.lr, "min_lr": self.cfg.min_lr,
                    "warmup": self.cfg.warmup, "total": self.cfg.max_steps,
                },
                "model_config": self.model_config,
                "seq_len": self.seq_len,
                "best_val_loss": self.best_val_loss,
                "evals_without_improvement": self.evals_without_improvement,
            }
            ckpt.save_checkpoint(self.run_dir, self.step, model, state, val_loss=val_loss, keep_last=self.cfg.keep_last)
        barrier(self.rt.info)

    # ------------------------------------------------------------ one step, evaluation

    def _forward_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kwargs = {k: batch[k].to(self.rt.device) for k in ("position_ids", "attention_mask") if k in batch}
        ids = batch["ids"].to(self.rt.device, non_blocking=True)
        targets = batch["targets"].to(self.rt.device, non_blocking=True)
        with autocast(self.rt.device, self.rt.precision):
            _, loss = self.module(ids, targets=targets, **kwargs)
        return loss

    def train_step(self, lr: float) -> tuple[float, float]:
        """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm before clipping)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        accum = self.cfg.grad_accum
        total = torch.zeros((), device=self.rt.device)
        for micro in range(accum):
            batch = self.train_source.next_batch()
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
        return (total / accum).item(), float(norm)

    def evaluate(self) -> dict[str, float]:
        """Loss summed over every target token of the validation batches (all processes), perplexity and
        bits per byte."""
        assert self.val_batches is not None
        self.module.eval()
        with sdpa_backend(self.cfg.sdpa_backend):
            loss_sum, count = loss_over(self.module, self.val_batches(), self.rt.device, self.rt.precision)
        self.module.train()
        self._reshard()
        loss_sum, count = all_reduce_sum([loss_sum, count], self.rt.info, self.rt.device)
        return loss_metrics(loss_sum, count, self.bytes_per_token)

    # ------------------------------------------------------------ the run

    def _peak_flops(self) -> tuple[float | None, str]:
        if self.cfg.peak_flops:
            return self.cfg.peak_flops, "train.peak_flops"
        if not hasattr(self.raw, "flops_per_token"):
            return None, "model has no flops_per_token"
        return device_peak_flops(str(self.rt.device), self.rt.precision)

    def fit(self) -> dict[str, Any]:
        """Run to `max_steps` (or early stop / signal); returns the summary written to RUN/summary.json."""
        cfg, info = self.cfg, self.rt.info
        main = info.is_main
        log = MetricsLog(self.run_dir / "metrics.jsonl", self.run_dir / "tb" if (cfg.tensorboard and main) else None)
        if main:
            if self.resumed_from is None:
                (self.run_dir / "metrics.jsonl").write_text("")
                (self.run_dir / "samples.txt").unlink(missing_ok=True)
            else:
                log.truncate_after(self.step)
        peak, peak_source = self._peak_flops()
        flops_per_token = self.raw.flops_per_token(self.seq_len) if hasattr(self.raw, "flops_per_token") else None
        tokens_per_step = cfg.batch_size * self.seq_len
        progress = Progress(cfg.max_steps, self.step, cfg.progress and main, cfg.log_every)
        if self.resumed_from is not None:
            progress.note(f"resumed from {self.resumed_from} at step {self.step}")
        status, last_eval, train_loss = "finished", {}, float("nan")
        self.module.train()
        window_time, window_tokens = 0.0, 0
        end_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
        with _StopFlag() as stop:
            while self.step < end_step:
                t0 = time.perf_counter()
                lr = lr_at(self.step, schedule=cfg.schedule, lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup,
                           total=cfg.max_steps)
                loss, grad_norm = self.train_step(lr)
                if not math.isfinite(loss) and self.rt.precision != "fp16":
                    raise TinyformerError(
                        f"training diverged at step {self.step + 1} (loss {loss}); lower train.lr or raise train.warmup"
                    )
                self.step += 1
                self.tokens += tokens_per_step
                window_tokens += tokens_per_step
                step_time = time.perf_counter() - t0
                self.elapsed += step_time
                window_time += step_time
                is_last = self.step == cfg.max_steps
                if (cfg.log_every and self.step % cfg.log_every == 0) or is_last:
                    loss = all_reduce_sum([loss], info, self.rt.device)[0] / info.world_size
                    train_loss = loss
                    tok_s = window_tokens / window_time if window_time > 0 else 0.0  # training time only
                    window_time, window_tokens = 0.0, 0
                    record = {"kind": "train", "step": self.step, "tokens": self.tokens, "lr": lr,
                              "train_loss": loss, "grad_norm": grad_norm, "tokens_per_s": tok_s}
                    if peak and flops_per_token:
                        record["mfu"] = tok_s * flops_per_token / (peak * info.world_size)
                    if main:
                        log.write(record)
                    progress.update(self.step, loss, lr, tok_s)
                val_loss = None
                if self.val_batches is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or is_last):
                    last_eval = self.evaluate()
                    val_loss = last_eval["val_loss"]
                    if peak and peak_source.startswith("measured"):
                        # A ceiling measured while something else ran reads low (MFU over 100%); the best
                        # measurement seen is the truest, so measure again at each evaluation and keep the max.
                        peak = max(peak, self._peak_flops()[0])
                    if main:
                        log.write({"kind": "eval", "step": self.step, "tokens": self.tokens, **last_eval})
                    progress.note(f"step {self.step}: val loss {val_loss:.4f} (ppl {last_eval['val_ppl']:.2f})")
                    if self.best_val_loss is None or val_loss < self.best_val_loss:
                        self.best_val_loss, self.evals_without_improvement = val_loss, 0
                    else:
                        self.evals_without_improvement += 1
                    self._write_sample()
                if info.enabled:  # every process must agree to stop, or collectives would hang
                    stop_now = all_reduce_sum([1.0 if stop.signal else 0.0], info, self.rt.device)[0] > 0
                else:
                    stop_now = stop.signal is not None
                early = cfg.early_stop_patience > 0 and self.evals_without_improvement >= cfg.early_stop_patience
                paused = self.step == end_step and not is_last
                if val_loss is not None or stop_now or early or is_last or paused or (cfg.ckpt_every and self.step % cfg.ckpt_every == 0):
                    self.save(val_loss)
                if paused:
                    status = "paused"
                if stop_now:
                    status = "interrupted"
                    progress.note(f"stopped by signal at step {self.step}; checkpoint saved, resume with resume=auto")
                    break
                if early:
                    status = "early_stopped"
                    progress.note(f"early stop at step {self.step}: no val improvement in {cfg.early_stop_patience} evals")
                    break
        progress.close()
        log.close()
        summary = {
            "status": status, "step": self.step, "tokens": self.tokens, "train_loss": train_loss,
            **{k: v for k, v in last_eval.items()}, "best_val_loss": self.best_val_loss,
            "elapsed_s": round(self.elapsed, 3), "tokens_per_s": self.tokens / self.elapsed if self.elapsed else None,
            "precision": self.rt.precision, "device": str(self.rt.device), "world_size": info.world_size,
            "peak_flops": peak, "peak_flops_source": peak_source,
        }
        if main:
            from tinyformer.fileio import atomic_write

            with atomic_write(self.run_dir / "summary.json") as f:
                import json

                clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
                f.write(json.dumps(clean) + "\n")
            try:
                from tinyformer.train.plot import plot_runs

                plot_runs([self.run_dir], self.run_dir / "plots" / "loss.png")
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
            with open(self.run_dir / "samples.txt", "a", encoding="utf-8") as f:
                f.write(f"=== step {self.step} ===\n{text}\n\n")


# ---------------------------------------------------------------- language-model runs on token files


def _max_token_id(tokens: np.ndarray, chunk: int = 1 << 24) -> int:
    return max(int(tokens[i : i + chunk].max()) for i in range(0, len(tokens), chunk)) if len(tokens) else -1


def check_token_file(path: str, vocab_size: int, fingerprint: str | None, what: str) -> dict[str, Any]:
    """Before the first step: the file exists and parses, its tokenizer is the run's, ids < vocab_size."""
    from tinyformer.train.sampler import open_token_file

    if not path:
        raise TinyformerError(f"data.{what} is not set; pass data.{what}=PATH.bin (make one with `tinyformer data prepare`)")
    tokens, meta = open_token_file(path)
    if fingerprint and meta.get("tokenizer_fingerprint") != fingerprint:
        raise TinyformerError(
            f"{path} was encoded with tokenizer {str(meta.get('tokenizer_fingerprint'))[:12]}..., but the run's "
            f"tokenizer is {fingerprint[:12]}...; re-encode the file or set data.tokenizer to the right one"
        )
    top = _max_token_id(tokens)
    if top >= vocab_size:
        raise TinyformerError(
            f"{path} holds token id {top}, but the model's vocab_size is {vocab_size}; "
            f"set model.vocab_size >= {top + 1} or re-encode with the run's tokenizer"
        )
    return meta


def _model_config(cfg: RunConfig, vocab_size: int | None):
    from tinyformer.model import ModelConfig

    fields = dict(cfg.model)
    preset = fields.pop("preset", None)
    if "vocab_size" not in fields and vocab_size is not None:
        fields["vocab_size"] = vocab_size
    return ModelConfig.preset(preset, **fields) if preset else ModelConfig.from_dict(fields)


def _initial_weights(source: str, model_section: dict[str, Any]):
    """(ModelConfig, state dict) of the model to fine-tune: an HF directory (config.json) or a tinyformer
    run/checkpoint. The model section may only change dropout: the shape is the source's."""
    import dataclasses

    from tinyformer.model import io as model_io

    path = Path(source)
    if not path.exists():
        raise TinyformerError(f"train.init_from {source} does not exist; pass an HF model directory or a run directory")
    if (path / "config.json").is_file():
        from tinyformer.model.hf import import_hf

        model = import_hf(path)
    else:
        try:
            model = model_io.load_model(path, which="best")
        except TinyformerError:
            model = model_io.load_model(path, which="latest")
    model_cfg = model.config
    for key, value in model_section.items():
        if key == "dropout":
            model_cfg = dataclasses.replace(model_cfg, dropout=value)
        elif key == "preset" or getattr(model_cfg, key) != value:
            raise TinyformerError(
                f"model.{key} conflicts with train.init_from={source}, whose weights fix the model's shape; "
                "remove it from the model section (only model.dropout can change when fine-tuning)"
            )
    return model_cfg, model.state_dict()


def prepare_run_dir(run_dir: Path, main: bool) -> None:
    """Create the run directory and make sure it can be written, before any work starts."""
    if not main:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise TinyformerError(f"cannot write to run_dir {run_dir}: {exc.strerror}; choose a writable run_dir") from None


def train_lm(cfg: RunConfig) -> dict[str, Any]:
    """A language-model run from a RunConfig: checks, run dir, model, samplers, Trainer.fit()."""
    from tinyformer.config import save_config
    from tinyformer.model import Transformer
    from tinyformer.train.sampler import TokenFileBatches, eval_batches

    run_dir = Path(cfg.run_dir)
    tokenizer = None
    if cfg.data.tokenizer:
        from tinyformer.tokenizer import Tokenizer

        if not Path(cfg.data.tokenizer).is_dir():
            raise TinyformerError(f"data.tokenizer {cfg.data.tokenizer} is not a tokenizer directory; check the path")
        tokenizer = Tokenizer.load(cfg.data.tokenizer)
    if not cfg.data.train:
        raise TinyformerError("data.train is not set; pass data.train=PATH.bin (make one with `tinyformer data prepare`)")
    from tinyformer.train.sampler import open_token_file

    train_meta = open_token_file(cfg.data.train)[1]
    vocab_guess = tokenizer.vocab_size if tokenizer is not None else train_meta.get("vocab_size")
    init_state = None
    if cfg.train.init_from:
        model_cfg, init_state = _initial_weights(cfg.train.init_from, cfg.model)
    else:
        model_cfg = _model_config(cfg, vocab_guess)
    seq_len = cfg.train.seq_len or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len and model_cfg.position in ("learned", "abacus"):
        raise TinyformerError(f"train.seq_len={seq_len} exceeds model.max_seq_len={model_cfg.max_seq_len}")
    fingerprint = tokenizer.fingerprint if tokenizer is not None else train_meta.get("tokenizer_fingerprint")
    train_meta = check_token_file(cfg.data.train, model_cfg.vocab_size, fingerprint, "train")
    if cfg.data.val:
        check_token_file(cfg.data.val, model_cfg.vocab_size, fingerprint, "val")

    rt = setup_runtime(cfg.train)
    prepare_run_dir(run_dir, rt.info.is_main)
    resolved = RunConfig(run_dir=cfg.run_dir, resume=cfg.resume, model=to_dict(model_cfg), data=cfg.data, train=cfg.train)
    if tokenizer is not None and (run_dir / "tokenizer").is_dir() and cfg.resume != "never":
        from tinyformer.tokenizer import Tokenizer

        if ckpt.latest_checkpoint(run_dir) and Tokenizer.load(run_dir / "tokenizer").fingerprint != tokenizer.fingerprint:
            raise TinyformerError(
                f"cannot resume {run_dir}: it was trained with another tokenizer than {cfg.data.tokenizer}; "
                "use the run's data or start a new run_dir"
            )

    seed_everything(cfg.train.seed)  # same initial weights on every process
    model = Transformer(model_cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    seed_everything(cfg.train.seed + 1 + rt.info.rank)  # dropout differs per process
    micro = cfg.train.batch_size // max(1, rt.info.world_size * cfg.train.grad_accum)
    source = TokenFileBatches(
        cfg.data.train, max(1, micro), seq_len, sampling=cfg.data.sampling, seed=cfg.train.seed,
        shuffle=cfg.data.shuffle, rank=rt.info.rank, world_size=rt.info.world_size,
    )
    val_batches = None
    if cfg.data.val:
        val_path = cfg.data.val

        def val_batches():
            return eval_batches(val_path, max(1, micro), seq_len, max_tokens=cfg.data.eval_tokens,
                                seed=cfg.train.seed, rank=rt.info.rank, world_size=rt.info.world_size)

    sample_fn = _lm_sampler(tokenizer, cfg.train, model_cfg) if tokenizer is not None else None
    trainer = Trainer(
        model, cfg.train, run_dir, source, rt, val_batches=val_batches,
        bytes_per_token=_bytes_per_token(cfg.data.val) if cfg.data.val else train_meta.get("bytes_per_token"),
        sample_fn=sample_fn, model_config=to_dict(model_cfg), seq_len=seq_len, resume=cfg.resume,
    )
    if rt.info.is_main:  # only now: a refused resume must leave the run's files as they were
        save_config(resolved, run_dir / "config.yaml")
        if tokenizer is not None and not (run_dir / "tokenizer").exists():
            tokenizer.save(run_dir / "tokenizer")
    barrier(rt.info)
    return trainer.fit()


def _bytes_per_token(path: str) -> float | None:
    from tinyformer.train.sampler import open_token_file

    return open_token_file(path)[1].get("bytes_per_token")


def _lm_sampler(tokenizer, tcfg: TrainConfig, model_cfg) -> Callable[[torch.nn.Module, int], str]:
    def sample(model: torch.nn.Module, step: int) -> str:
        device = next(model.parameters()).device
        if tcfg.sample_prompt:
            prompt = tokenizer.encode(tcfg.sample_prompt, allowed_special="all")
        else:
            prompt = [tokenizer.eot_id if tokenizer.eot_id is not None else 0]
        prompt = prompt[-model_cfg.max_seq_len // 2 :]
        n_new = tcfg.sample_tokens
        if model_cfg.position in ("learned", "abacus"):  # stay inside the position table
            n_new = max(1, min(n_new, model_cfg.position_table_size - len(prompt)))
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        out = model.generate(ids, n_new, temperature=tcfg.sample_temperature,
                             top_k=tcfg.sample_top_k, seed=tcfg.seed + step)
        return tokenizer.decode(out[0].tolist())

    return sample
