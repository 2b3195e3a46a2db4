"""What a run reports: metrics.jsonl records (and the trackers), a progress bar, and MFU's peak FLOP/s.

MFU = tokens/s x model.flops_per_token(seq_len) / peak FLOP/s. The peak is, in order: `train.peak_flops`
when set; the published dense peak of a known CUDA device for the precision in use; otherwise a matmul
ceiling measured on this machine (square matmuls in the run's dtype), which is what CPUs get: measured at
start and again at each evaluation, keeping the highest, since a measurement taken under load reads low.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tinyformer.fileio import atomic_write, writing
from tinyformer.train import rundir
from tinyformer.train.trackers import Trackers

# Published dense (non-sparse) peaks in FLOP/s: (bf16/fp16 tensor core, tf32 tensor core).
KNOWN_CUDA_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 494e12),
    "H100": (989e12, 494e12),  # SXM; PCIe parts are lower, set train.peak_flops for them
    "A100": (312e12, 156e12),
    "A10G": (125e12, 62.5e12),
    "L4": (121e12, 60e12),
    "RTX 4090": (165e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
}


def matmul_ceiling(device: str = "cpu", dtype: str = "fp32", size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of repeated `size`x`size` matmuls in `dtype` on `device`: the best this machine does."""
    import torch

    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    gen = torch.Generator().manual_seed(0)  # its own generator: measuring must not move the training RNG
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=tdtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=tdtype)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(2):
        a @ b  # warm-up: first calls pay for allocation and kernel selection
    sync()
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t0))
    return best


def device_peak_flops(device: str, precision: str) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from) for MFU on `device` at `precision` (fp32/bf16/fp16)."""
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(device)
        for key, (half, tf32) in KNOWN_CUDA_PEAKS.items():
            if key in name:
                return (half if precision in ("bf16", "fp16") else tf32), f"published peak of {name}"
    return matmul_ceiling(device, precision), f"measured {precision} matmul ceiling on {device}"


class StepMeter:
    """Throughput of the steps since the last record, over training time only (evaluations and checkpoints
    excluded): tokens/s, examples/s, and MFU = tokens/s x `flops_per_token` / (peak FLOP/s x processes).
    The peak is resolved by `start` (see the module's docstring); a measured one is measured again at each
    `remeasure` and the highest kept."""

    def __init__(self, flops_per_token: float | None, world_size: int = 1, *, peak_flops: float | None = None,
                 device: str = "cpu", precision: str = "fp32") -> None:
        self.flops_per_token, self.world_size = flops_per_token, world_size
        self.configured_peak, self.device, self.precision = peak_flops, device, precision
        self.peak: float | None = None
        self.peak_source = "not resolved"
        self.seconds, self.tokens, self.examples = 0.0, 0, 0

    def start(self) -> None:
        """Resolve the peak: train.peak_flops, else the device's published or measured one."""
        if self.configured_peak:
            self.peak, self.peak_source = self.configured_peak, "train.peak_flops"
        elif self.flops_per_token is None:
            self.peak, self.peak_source = None, "model has no flops_per_token"
        else:
            self.peak, self.peak_source = device_peak_flops(self.device, self.precision)

    def remeasure(self) -> None:
        """A ceiling measured while something else ran reads low (MFU over 100%): measure again, keep the max."""
        if self.peak and self.peak_source.startswith("measured"):
            self.peak = max(self.peak, device_peak_flops(self.device, self.precision)[0])

    def add(self, tokens: int, examples: int, seconds: float) -> None:
        """One step: the tokens and examples all processes computed, and its training time."""
        self.tokens += tokens
        self.examples += examples
        self.seconds += seconds

    def mfu(self, tokens: int, seconds: float) -> float | None:
        """The MFU of `tokens` trained (all processes) in `seconds` of training; None when unknown."""
        if not (self.peak and self.flops_per_token and seconds > 0):
            return None
        return tokens / seconds * self.flops_per_token / (self.peak * self.world_size)

    def rates(self) -> dict[str, float]:
        """tokens_per_s, examples_per_s (and mfu when the peak is known) since the last call; starts over."""
        seconds = self.seconds
        out = {"tokens_per_s": self.tokens / seconds if seconds > 0 else 0.0,
               "examples_per_s": self.examples / seconds if seconds > 0 else 0.0}
        if self.peak and self.flops_per_token:
            out["mfu"] = out["tokens_per_s"] * self.flops_per_token / (self.peak * self.world_size)
        self.seconds, self.tokens, self.examples = 0.0, 0, 0
        return out


class MetricsLog:
    """Appends one JSON object per line to RUN/metrics.jsonl, and hands each record to the run's `trackers`
    (TensorBoard, wandb, trackio: `tinyformer.train.trackers`), started by `open` and finished by `close`."""

    def __init__(self, path: Path, trackers: Trackers | None = None) -> None:
        self.path, self.trackers = path, trackers

    def open(self, resumed: bool = False) -> None:
        """Start the trackers: a `resumed` run continues its tracker runs."""
        if self.trackers is not None:
            self.trackers.start(resumed)

    def truncate_after(self, step: int, drop_eval_at: int | None = None) -> None:
        """Before resuming: drop records past `step` (left by a run that died after its last checkpoint),
        the evaluation records of step `drop_eval_at` (an evaluation that runs again) and a torn line (a
        crash or a full disk mid-write); the file is replaced atomically."""
        if not self.path.exists():
            return
        keep = [r for r in parse_records(self.path.read_text(encoding="utf-8", errors="replace"))
                if r["step"] <= step and not (r.get("kind") == "eval" and r["step"] == drop_eval_at)]
        with atomic_write(self.path) as f:
            f.write("".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with writing(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        if self.trackers is not None:
            self.trackers.log(record)

    def close(self, summary: dict[str, Any] | None = None, failed: bool = False) -> None:
        """Hand the trackers the run's summary (when it has one) and finish them (`failed`: an error ended the
        run); a second close does nothing."""
        if self.trackers is not None:
            if summary is not None:
                self.trackers.summary(summary)
            self.trackers.finish(failed)


def parse_records(text: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl text; a line that is not a whole record (torn by a crash) is skipped."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            records.append(record)
    return records


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of RUN/metrics.jsonl (empty if the run has none yet)."""
    path = Path(run_dir) / rundir.METRICS_FILE
    if not path.is_file():
        return []
    try:
        return parse_records(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []


class Progress:
    """A tqdm bar (loss, lr, tokens/s, ETA) on a terminal; plain log lines when output is not a terminal.

    The ETA counts only the steps after the first update of this process: the steps before it pay for
    compiling, kernel selection and warm-up (minutes on a run of seconds per step), so the first line says
    `eta ?` and the bar appears then. Under a budget (`budget_s`, training seconds) the run ends at whichever
    comes first, so the ETA is the smaller of the steps' estimate and the budget's training seconds left
    (`elapsed`: the run's training seconds spent, passed with each update), and each line says how much of
    the budget is spent."""

    def __init__(self, total: int, enabled: bool, log_every: int, budget_s: float | None = None) -> None:
        self.enabled, self.log_every, self.total, self.budget_s = enabled, max(1, log_every), total, budget_s
        self.tty = enabled and sys.stderr.isatty()
        self.origin: tuple[int, float] | None = None  # (step, time) of the first update: where the ETA starts
        self.bar = None

    def eta(self, step: int, now: float, elapsed: float | None) -> float | None:
        """Seconds left (None before anything is measured): steps left at the measured rate, capped by the
        budget's training seconds left."""
        origin_step, origin_time = self.origin
        if step == origin_step:
            return None
        left = (self.total - step) * (now - origin_time) / (step - origin_step)
        if self.budget_s is not None and elapsed is not None:
            left = min(left, max(0.0, self.budget_s - elapsed))
        return left

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float, elapsed: float | None = None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        first = self.origin is None
        if first:
            self.origin = (step, now)
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, initial=step, unit="step", dynamic_ncols=True)
            extra = {}
            if self.budget_s is not None and elapsed is not None:
                extra["budget"] = f"{elapsed:.0f}/{self.budget_s:g}s"
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", **extra,
                                 refresh=False)
            self.bar.update(step - self.bar.n)
        elif step % self.log_every == 0 or step == self.total:
            left = None if first else self.eta(step, now, elapsed)
            eta = "?" if left is None else f"{int(left // 60)}m{int(left % 60):02d}s"
            spent = (f" budget {elapsed:.1f}/{self.budget_s:g}s" if self.budget_s is not None and elapsed is not None
                     else "")
            print(f"step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} tok/s {tokens_per_s:,.0f}{spent} eta {eta}",
                  flush=True)

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def warn(self, text: str) -> None:
        """A warning, printed even when progress output is off."""
        if self.bar is not None:
            self.bar.write(f"tinyformer: warning: {text}", file=sys.stderr)
        else:
            print(f"tinyformer: warning: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
