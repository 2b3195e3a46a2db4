"""GPU check: one command that tests and measures tinyformer's CUDA path, cheapest and most telling steps first.

    python bench/gpu_check.py --out gpu-check --work /tmp/gpu-check-work   # on a GPU machine (docs/gpu.md)
    python bench/gpu_check.py --out /tmp/gpu-check --dry-run               # on CPU, tiny sizes (tests/cli/test_gpu_check.py)

Steps: 1 `env` (versions, measured bf16/tf32 matmul ceilings); 2 `correctness` (`pytest -m gpu
tests/unit/test_gpu.py`); 3 throughput (GPT-2 124M compiled and eager, the TinyStories preset shape, the lab's
4x4x256 alone and as several processes); 4 `train` (a real `tinyformer train` run: tokenizer, token files,
train, stop, resume, HF export); 5 `torchrun` (the same command under torchrun, and DDP over NCCL).

Each step runs in its own process group under its own time limit, inside one overall budget; a failure or a
timeout is recorded (status, seconds, the tail of its output) and the next step runs. OUT/results.json and
OUT/results.md are rewritten after every step, so a run cut short keeps what it measured; OUT/logs/STEP.log
holds each step's whole output. Needs no network; uses only the CLI, `tinyformer.model` and TrainConfig keys.
The dry run puts the CPU in the device's place everywhere (gloo for NCCL, torch.compile's aot_eager
backend for inductor, tiny models); the one thing a CPU cannot stand in for, fp16 training with GradScaler, is
a test that step 2 reports as skipped with its reason.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
TEST_DEVICE_ENV = "TINYFORMER_TEST_DEVICE"  # read by tests/unit/test_gpu.py: the device that stands in for CUDA
MFU_TARGET = 0.45  # GPT-2 124M, bf16, compiled, against the measured bf16 matmul ceiling
FLOOR_S = 20.0  # every later step keeps at least this much of the overall budget
OK, FAILED, TIMED_OUT, NO_TIME = "ok", "failed", "timed out", "skipped (out of time)"


class CheckFailed(Exception):
    """A check that ran and did not pass: the step is reported failed with this one-line message."""


@dataclass
class Context:
    """What a step sees: where to write, whether this is the dry run, and what it has found so far."""

    out: Path
    work: Path  # this step's scratch directory
    dry_run: bool
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def earlier(self, step: str) -> dict[str, Any]:
        """Results of an earlier step of this run ({} if it did not run or wrote none)."""
        path = self.out / "steps" / f"{step}.json"
        return json.loads(path.read_text()).get("results", {}) if path.exists() else {}

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables.append({"title": title, "columns": columns, "rows": rows})


# ---------------------------------------------------------------- small helpers shared by the steps


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the source tree importable (no install needed) and unbuffered output."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **(extra or {})}


def run(cmd: list[Any], what: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command (output copied into this step's log); CheckFailed naming `what` if it fails."""
    cmd = [str(c) for c in cmd]
    print(f"$ {shlex.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(env), capture_output=True, text=True)
    sys.stdout.write(proc.stdout + proc.stderr)
    sys.stdout.flush()
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise CheckFailed(f"{what} exited {proc.returncode}: {last[:300]}")
    return proc


def tinyformer(*args: Any, what: str | None = None, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """`python -m tinyformer ARGS`, as a user runs it (or under `launcher`, e.g. torchrun)."""
    cmd = [*(launcher or [sys.executable]), "-m", "tinyformer", *args]
    return run(cmd, what or f"tinyformer {' '.join(map(str, args[:2]))}")


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_ceiling(device: str, dtype: str, n: int, seconds: float = 1.0) -> float:
    """Best FLOP/s of n x n x n matmuls: dtype bf16, tf32 (fp32 inputs, TF32 tensor cores) or fp32 (strict)."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        a = torch.randn(n, n, device=device, dtype=tdtype)
        b = torch.randn(n, n, device=device, dtype=tdtype)
        repeats = 10 if device.startswith("cuda") else 2
        for _ in range(3):
            a @ b  # warm-up: allocation, cuBLAS heuristics, clocks
        sync(device)
        best, start = 0.0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            for _ in range(repeats):
                a @ b
            sync(device)
            best = max(best, repeats * 2 * n**3 / (time.perf_counter() - t0))
        return best
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def model_config(fields: dict[str, Any]):
    from tinyformer.model import ModelConfig

    fields = dict(fields)
    preset = fields.pop("preset", None)
    return ModelConfig.preset(preset, **fields) if preset else ModelConfig.from_dict(fields)


def adamw(model) -> Any:
    """Fused AdamW, weight decay on matrices only (as the engine builds it)."""
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.95), fused=True)


def attention_kernel(name: str):
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([{"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}[name]])


def autocast(device: str, precision: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def train_step_fn(model, step_model, optimizer, inputs: dict[str, Any], device: str, precision: str,
                  attention: str) -> Callable[[], Any]:
    """One full optimizer step (forward, backward, clipping, AdamW), with no host sync."""
    import torch

    def step():
        with attention_kernel(attention), autocast(device, precision):
            _, loss = step_model(**inputs)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def graph_breaks() -> int | None:
    try:  # dynamo's counters are not public API: report them when they exist
        from torch._dynamo.utils import counters

        return sum(counters["graph_break"].values())
    except Exception:
        return None


def nccl_version() -> str:
    import torch

    version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in old ones
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def fmt_flops(value: float | None) -> str:
    if not value:
        return "-"
    return f"{value / 1e12:,.1f} TFLOP/s" if value >= 1e12 else f"{value / 1e9:,.1f} GFLOP/s"


# ---------------------------------------------------------------- step 1: environment


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    names = ["numpy", "regex", "safetensors", "pyyaml", "matplotlib", "tqdm", "pytest", "transformers",
             "tokenizers", "triton"]
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def step_env(ctx: Context) -> str:
    import importlib.util

    import torch

    r = ctx.results
    r.update(python=platform.python_version(), torch=torch.__version__, cuda_runtime=torch.version.cuda,
             cuda_available=torch.cuda.is_available(), packages=package_versions(),
             tokenizer_c_extension=importlib.util.find_spec("tinyformer.tokenizer._bpe") is not None)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        r.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                 memory_gib=round(props.total_memory / 2**30, 1), device_count=torch.cuda.device_count(),
                 cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported(),
                 nccl=nccl_version() if torch.distributed.is_nccl_available() else None)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            r["nvidia_smi"] = smi.stdout.strip()
    elif not ctx.dry_run:
        raise CheckFailed(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda})")
    else:
        r["device_name"] = f"CPU ({platform.processor() or platform.machine()}), dry run"
    n = 256 if ctx.dry_run else 8192
    r["matmul_size"] = n
    # tf32 on CPU is plain fp32: the dry run only checks the code path
    r["ceilings"] = {dtype: matmul_ceiling(ctx.device, dtype, n, 0.2 if ctx.dry_run else 1.0)
                     for dtype in ("bf16", "tf32", "fp32")}
    ctx.table("Matmul ceilings", ["dtype", f"{n}^3 matmul"], [[k, fmt_flops(v)] for k, v in r["ceilings"].items()])
    missing = [name for name in ("numpy", "regex", "safetensors", "pyyaml", "pytest") if not r["packages"][name]]
    if not r["packages"]["transformers"]:
        ctx.notes.append("transformers is not installed: the HF export checks will skip")
    if missing:
        raise CheckFailed(f"missing packages the later steps need: {', '.join(missing)}")
    c = r["ceilings"]
    return (f"{r['device_name']}, torch {r['torch']} (CUDA {r['cuda_runtime']}), bf16 {fmt_flops(c['bf16'])}, "
            f"tf32 {fmt_flops(c['tf32'])}, fp32 {fmt_flops(c['fp32'])}")


def ceiling(ctx: Context, precision: str) -> float:
    """The measured matmul ceiling for `precision`, from step 1 (or measured now if step 1 did not run)."""
    import torch

    dtype = precision if precision == "bf16" else ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
    found = ctx.earlier("env").get("ceilings", {}).get(dtype)
    return found or matmul_ceiling(ctx.device, dtype, 256 if ctx.dry_run else 8192)


# ---------------------------------------------------------------- step 2: correctness (pytest -m gpu)


def step_correctness(ctx: Context) -> str:
    import xml.etree.ElementTree as ET

    junit = ctx.work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/unit/test_gpu.py", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    print(f"$ {shlex.join(cmd)}", flush=True)
    env = child_env({TEST_DEVICE_ENV: "cpu"} if ctx.dry_run else None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    sys.stdout.write(proc.stdout + proc.stderr)
    if not junit.exists():
        raise CheckFailed(f"pytest exited {proc.returncode} without a report: {(proc.stdout + proc.stderr).strip()[-300:]}")
    passed, failed, skipped = [], [], []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name")
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            failed.append([name, (problem.get("message") or "").strip().split("\n")[0][:200]])
        elif case.find("skipped") is not None:
            skipped.append([name, (case.find("skipped").get("message") or "")[:200]])
        else:
            passed.append(name)
    ctx.results.update(passed=len(passed), failed=failed, skipped=skipped)
    if failed or skipped:
        ctx.table("Tests not passed", ["test", "outcome", "message"],
                  [[n, "failed", m] for n, m in failed] + [[n, "skipped", m] for n, m in skipped])
    summary = f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped"
    if proc.returncode != 0 or failed:
        raise CheckFailed(summary + (f"; first failure {failed[0][0]}: {failed[0][1]}" if failed else ""))
    if not passed:
        raise CheckFailed(f"nothing ran: {summary}" + (f" ({skipped[0][1]})" if skipped else ""))
    return summary


# ---------------------------------------------------------------- step 3: throughput

GPT2_124M = dict(preset="gpt2", vocab_size=50304, n_layers=12, n_heads=12, d_model=768, max_seq_len=1024)
TINY_GPT2 = dict(preset="gpt2", vocab_size=512, n_layers=2, n_heads=4, d_model=64, max_seq_len=64)
# the lab's published configuration: 4 layers x 4 heads x 256, learned (APE) positions at random offsets,
# batch 64, task lengths 1-50 -> sequences of up to ~104 tokens; eager, one host sync per step (the engine
# reads the loss every step), in fp32 and in bf16 (what train.precision=auto picks on CUDA)
LAB = dict(preset="gpt2", vocab_size=32, n_layers=4, n_heads=4, d_model=256, max_seq_len=320)
LAB_BATCH, LAB_SEQ = 64, 104
TINY_LAB = dict(preset="gpt2", vocab_size=32, n_layers=1, n_heads=2, d_model=32, max_seq_len=64)
LAB_PRECISIONS = ("fp32", "bf16")


def measure(ctx: Context, label: str, fields: dict, batch: int, seq_len: int, precision: str, compiled: bool,
            attention: str) -> dict[str, Any]:
    """Median tokens/s of full training steps (3 rounds after warm-up) and MFU against the measured ceiling."""
    import torch

    from tinyformer.model import Transformer

    device = ctx.device
    cfg = model_config(fields)
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    optimizer = adamw(model)
    # the dry run checks graph capture (dynamo + AOT autograd) but not inductor's code generation
    step_model = torch.compile(model, backend="aot_eager" if ctx.dry_run else "inductor") if compiled else model
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    inputs = {"ids": ids[:, :-1].to(device), "targets": ids[:, 1:].to(device)}
    step = train_step_fn(model, step_model, optimizer, inputs, device, precision, attention)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    sync(device)
    first_step_s = time.perf_counter() - t0  # includes compilation
    for _ in range(2):
        step()
    rounds, per_round = (2, 2) if ctx.dry_run else (3, 10)
    rates = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(per_round):
            loss = step()
        sync(device)
        rates.append(per_round * batch * seq_len / (time.perf_counter() - t0))
    loss_value = float(loss)
    if not math.isfinite(loss_value):
        raise CheckFailed(f"{label} {precision}: loss is {loss_value}")
    tokens_per_s = statistics.median(rates)
    flops_per_token = model.flops_per_token(seq_len)
    peak = ceiling(ctx, precision)
    row = {
        "shape": label, "batch": batch, "seq_len": seq_len, "params_m": round(model.num_params() / 1e6, 2),
        "precision": precision, "compiled": compiled, "attention": attention, "tokens_per_s": round(tokens_per_s),
        "steps_per_s": round(tokens_per_s / (batch * seq_len), 2), "flops_per_token": flops_per_token,
        "model_flops": tokens_per_s * flops_per_token, "ceiling": peak, "mfu": tokens_per_s * flops_per_token / peak,
        "first_step_s": round(first_step_s, 2), "loss": loss_value,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None,
        "graph_breaks": graph_breaks() if compiled else None,
    }
    print(json.dumps(row), flush=True)
    del step_model, model, optimizer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


THROUGHPUT_COLUMNS = ["shape", "batch x ctx", "params", "precision", "compile", "attention", "tokens/s", "steps/s",
                      "model FLOP/s", "MFU vs measured ceiling", "first step s", "peak GiB"]


def throughput_table(ctx: Context, rows: list[dict]) -> None:
    ctx.results["rows"] = rows
    ctx.table("Throughput", THROUGHPUT_COLUMNS, [
        [r["shape"], f"{r['batch']} x {r['seq_len']}", f"{r['params_m']}M", r["precision"],
         ("aot_eager" if ctx.dry_run else "inductor") if r["compiled"] else "eager", r["attention"],
         f"{r['tokens_per_s']:,}", r["steps_per_s"], fmt_flops(r["model_flops"]), f"{r['mfu']:.1%}",
         r["first_step_s"], r["peak_memory_gib"] if r["peak_memory_gib"] is not None else "-"]
        for r in rows])


def gpt2_shape(ctx: Context) -> tuple[dict, int, int]:
    return (TINY_GPT2, 2, 64) if ctx.dry_run else (GPT2_124M, 32, 1024)


def step_gpt2_compiled(ctx: Context) -> str:
    fields, batch, seq = gpt2_shape(ctx)
    row = measure(ctx, "GPT-2 124M" + (" (tiny)" if ctx.dry_run else ""), fields, batch, seq, "bf16", True, "flash")
    throughput_table(ctx, [row])
    met = row["mfu"] >= MFU_TARGET
    ctx.results["target"] = {"mfu": MFU_TARGET, "met": met}
    target = "" if ctx.dry_run else f" (target >= {MFU_TARGET:.0%}: {'met' if met else 'MISSED'})"
    return (f"{row['tokens_per_s']:,} tokens/s, MFU {row['mfu']:.1%}{target}, compile+first step "
            f"{row['first_step_s']} s, graph breaks {row['graph_breaks']}")


def step_gpt2_eager(ctx: Context) -> str:
    fields, batch, seq = gpt2_shape(ctx)
    row = measure(ctx, "GPT-2 124M" + (" (tiny)" if ctx.dry_run else ""), fields, batch, seq, "bf16", False, "flash")
    throughput_table(ctx, [row])
    compiled = ctx.earlier("gpt2-compiled").get("rows")
    speedup = f", compiled is {compiled[0]['tokens_per_s'] / row['tokens_per_s']:.2f}x" if compiled else ""
    return f"{row['tokens_per_s']:,} tokens/s, MFU {row['mfu']:.1%}{speedup}"


def step_tinystories(ctx: Context) -> str:
    import yaml

    preset = yaml.safe_load((ROOT / "configs" / "tinystories.yaml").read_text())
    fields = dict(preset["model"])
    batch = int(preset.get("train", {}).get("batch_size", 16))
    seq = int(preset.get("train", {}).get("seq_len") or fields["max_seq_len"])
    if ctx.dry_run:
        fields.update(vocab_size=512, n_layers=1, d_model=64, n_heads=4, d_ff=128, max_seq_len=64)
        batch, seq = 2, 64
    # eager is what `tinyformer train` runs by default; the dry run leaves compiling to gpt2-compiled
    variants = [(False, "auto")] + ([] if ctx.dry_run else [(True, "flash")])
    rows = [measure(ctx, "TinyStories preset", fields, batch, seq, "bf16", compiled, attention)
            for compiled, attention in variants]
    throughput_table(ctx, rows)
    return ", ".join(f"{'compiled' if r['compiled'] else 'eager'} {r['tokens_per_s']:,} tokens/s (MFU {r['mfu']:.1%})"
                     for r in rows)


def lab_shape(dry_run: bool) -> tuple[dict, int, int]:
    return (TINY_LAB, 8, 24) if dry_run else (LAB, LAB_BATCH, LAB_SEQ)


def wait_for_all(pool: Path, name: str, size: int) -> None:
    """A file barrier between the pool's processes."""
    deadline = time.time() + 120
    while len(list(pool.glob(f"{name}-*"))) < size:
        if time.time() > deadline:
            raise CheckFailed(f"lab workers: only {len(list(pool.glob(f'{name}-*')))} of {size} reached {name}")
        time.sleep(0.01)


def lab_worker(pool: Path, index: int, size: int, seconds: float, dry_run: bool) -> None:
    """One of `size` processes: for each precision, warm up, wait for the others, then count lab training
    steps for `seconds` (all processes measure at the same time)."""
    import torch

    from tinyformer.model import Transformer

    device = "cpu" if dry_run else "cuda"
    if dry_run:
        torch.set_num_threads(1)
    fields, batch, seq = lab_shape(dry_run)
    cfg = model_config(fields)
    torch.manual_seed(index)
    model = Transformer(cfg).to(device)
    optimizer = adamw(model)
    gen = torch.Generator().manual_seed(index)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=gen)
    offsets = torch.randint(0, cfg.max_seq_len - seq + 1, (batch, 1), generator=gen)
    inputs = {"ids": ids[:, :-1].to(device), "targets": ids[:, 1:].to(device),
              "position_ids": (offsets + torch.arange(seq)).to(device)}  # random offsets, as the lab trains APE
    result = {"index": index}
    for precision in LAB_PRECISIONS:
        step = train_step_fn(model, model, optimizer, inputs, device, precision, "auto")
        for _ in range(2 if dry_run else 10):
            float(step())
        (pool / f"ready-{precision}-{index}").touch()
        wait_for_all(pool, f"ready-{precision}", size)
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            loss = float(step())
            steps += 1
        result[precision] = {"steps": steps, "steps_per_s": steps / (time.perf_counter() - t0), "loss": loss}
        (pool / f"done-{precision}-{index}").touch()
        wait_for_all(pool, f"done-{precision}", size)  # nobody starts the next phase while others measure
    (pool / f"result-{index}.json").write_text(json.dumps(result))


def lab_pool(ctx: Context, size: int) -> list[dict[str, Any]]:
    """`size` separate processes training the lab configuration on one device at the same time; one row
    per precision."""
    pool = ctx.work / f"pool-{size}"
    pool.mkdir(parents=True, exist_ok=True)
    seconds = 0.3 if ctx.dry_run else 5.0
    procs = []
    for i in range(size):
        cmd = [sys.executable, str(SCRIPT), "--out", str(ctx.out), "--lab-worker", str(i), "--pool-dir", str(pool),
               "--pool-size", str(size), "--seconds", str(seconds)] + (["--dry-run"] if ctx.dry_run else [])
        print(f"$ {shlex.join(cmd)}", flush=True)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=child_env()))
    codes = [p.wait() for p in procs]
    results = []
    for i, code in enumerate(codes):
        path = pool / f"result-{i}.json"
        if code != 0 or not path.exists():
            raise CheckFailed(f"lab worker {i} of {size} exited {code} (see the log above)")
        results.append(json.loads(path.read_text()))
    fields, batch, seq = lab_shape(ctx.dry_run)
    rows = []
    for precision in LAB_PRECISIONS:
        rates = [r[precision]["steps_per_s"] for r in results]
        if not all(math.isfinite(r[precision]["loss"]) for r in results):
            raise CheckFailed(f"lab {precision}: a loss is not finite")
        rows.append({"processes": size, "precision": precision, "batch": batch, "seq_len": seq,
                     "layers": fields["n_layers"], "d_model": fields["d_model"], "steps_per_s": rates,
                     "total_steps_per_s": sum(rates)})
    ctx.results["rows"] = rows
    ctx.table("Lab configuration (eager, a host sync per step as the engine does)",
              ["processes", "precision", "model", "batch x ctx", "steps/s per process", "steps/s in all"],
              [[r["processes"], r["precision"], f"{r['layers']} x {r['d_model']}", f"{r['batch']} x {r['seq_len']}",
                ", ".join(f"{x:.1f}" for x in r["steps_per_s"]), f"{r['total_steps_per_s']:.1f}"] for r in rows])
    return rows


def step_lab_single(ctx: Context) -> str:
    rows = lab_pool(ctx, 1)
    return ", ".join(f"{r['precision']} {r['total_steps_per_s']:.1f} steps/s" for r in rows) + (
        f" (batch {rows[0]['batch']}, {rows[0]['seq_len']} tokens)")


def step_lab_shared(ctx: Context) -> str:
    rows = lab_pool(ctx, 2 if ctx.dry_run else 4)
    single = {r["precision"]: r["total_steps_per_s"] for r in ctx.earlier("lab-single").get("rows", [])}
    parts = []
    for r in rows:
        ratio = f" = {r['total_steps_per_s'] / single[r['precision']]:.2f}x one" if r["precision"] in single else ""
        parts.append(f"{r['precision']} {r['total_steps_per_s']:.1f} steps/s in all{ratio}")
    return f"{rows[0]['processes']} processes: " + ", ".join(parts)


# ---------------------------------------------------------------- step 4: a real training run

WORDS = {  # slot -> words a story draws from
    "name": "Lily Tom Mia Ben Sara Max Anna Sam Lucy Jack Emma Leo Zoe Tim Ruby Finn Nora Owen",
    "animal": "cat dog bird fish bunny frog duck bear fox owl mouse puppy turtle lion",
    "thing": "ball kite box hat cake book car boat flower tree rock shell cup drum apple toy",
    "place": "park garden forest house beach school farm river hill shop kitchen yard",
    "adj": "big small red happy shiny soft little old new funny kind blue green loud",
    "verb": "found saw liked wanted lost shared painted hugged kicked carried fixed hid",
    "feel": "happy sad scared excited proud tired angry surprised glad sleepy",
}
SENTENCES = [
    "{name} went to the {place} with a {adj} {thing}.",
    "One day, {name} {verb} a {adj} {thing} in the {place}.",
    "{name} felt {feel} because the {thing} was {adj}.",
    '"Can I play with your {thing}?" asked {name2}.',
    "{name} and {name2} {verb} the {thing} together.",
    "The {animal} ran to the {place} and {verb} a {thing}.",
    '{name} said, "I am so {feel} today!"',
    "They played in the {place} until the sun went down.",
    "In the end, {name} was {feel} and the {animal} was {feel2}.",
]


def story(rng: random.Random) -> str:
    """A TinyStories-like story from templates: small vocabulary, simple sentences."""
    pick = {slot: rng.choice(words.split()) for slot, words in WORDS.items()}
    pick.update(name2=rng.choice(WORDS["name"].split()), feel2=rng.choice(WORDS["feel"].split()))
    first = "Once upon a time, there was a {adj} {animal} named {name}.".format(**pick)
    return " ".join([first] + [rng.choice(SENTENCES).format(**pick) for _ in range(rng.randint(4, 9))])


def write_stories(path: Path, n_bytes: int, seed: int) -> None:
    rng, parts, size = random.Random(seed), [], 0
    while size < n_bytes:
        parts.append(story(rng) + "\n<|endoftext|>\n")
        size += len(parts[-1])
    path.write_text("".join(parts), encoding="utf-8")


def prepare_corpus(ctx: Context) -> list[str]:
    """Generated stories -> `tinyformer tokenizer train` -> `tinyformer tokenizer encode`, into WORK/data
    (made once, shared by the `train` and `torchrun` steps); returns the run's data overrides.

    The tokenizer stops short of 2048 ids (the stories' vocabulary is small), and model.vocab_size follows
    it: samples at evaluation are decoded, so the model may not emit ids the tokenizer lacks."""
    from tinyformer.tokenizer import Tokenizer

    where = ctx.work.parent / "data"
    train_bytes = 60_000 if ctx.dry_run else 1_000_000
    stamp = where / "corpus.json"
    if not stamp.exists() or json.loads(stamp.read_text()) != {"train_bytes": train_bytes}:
        where.mkdir(parents=True, exist_ok=True)
        write_stories(where / "train.txt", train_bytes, seed=0)
        write_stories(where / "val.txt", train_bytes // 10, seed=1)
        workers = ["--workers", "1"] if ctx.dry_run else []
        tinyformer("tokenizer", "train", where / "train.txt", "--vocab-size", 2048, "--special-tokens",
                   "<|endoftext|>", "--out", where / "tok", "--force", "--no-progress", *workers)
        for name in ("train", "val"):
            tinyformer("tokenizer", "encode", "--tokenizer", where / "tok", where / f"{name}.txt", "--out",
                       where / f"{name}.bin", "--allowed-special", "all", "--force", *workers)
        stamp.write_text(json.dumps({"train_bytes": train_bytes}))
    vocab_size = Tokenizer.load(where / "tok").vocab_size
    return [f"data.train={where / 'train.bin'}", f"data.val={where / 'val.bin'}", f"data.tokenizer={where / 'tok'}",
            "data.eval_tokens=null", f"model.vocab_size={vocab_size}"]


def preset_run(ctx: Context, run_dir: Path, data: list[str], steps: int) -> list[str]:
    """`tinyformer train` arguments for the TinyStories preset on `data` (tiny model in the dry run)."""
    args = ["--config", "configs/tinystories.yaml", f"run_dir={run_dir}", *data, f"train.device={ctx.device}",
            f"train.max_steps={steps}", "train.progress=false"]
    if ctx.dry_run:
        return args + ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.d_ff=64",
                       "model.max_seq_len=32", "train.batch_size=4", "train.warmup=2", "train.log_every=1",
                       "train.sample_tokens=8", "train.threads=1", f"train.eval_every={steps // 2}",
                       f"train.ckpt_every={steps // 2}"]
    return args + ["train.warmup=30", "train.log_every=10", "train.sample_tokens=50",
                   f"train.eval_every={steps // 3}", f"train.ckpt_every={steps // 3}"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_checkpoint(run_dir: Path) -> Path:
    latest = json.loads((run_dir / "checkpoints" / "index.json").read_text())["latest"]
    return run_dir / "checkpoints" / latest


def compare_hf_export(ctx: Context, export_dir: Path, ckpt: Path, tokenizer_dir: Path) -> str:
    """Load the export with transformers on the device; logits and tokenizer ids must equal ours."""
    try:
        import transformers
    except ImportError:
        ctx.notes.append("HF check skipped: transformers is not installed")
        return "HF check skipped (no transformers)"
    import torch

    from tinyformer.model import load_model
    from tinyformer.tokenizer import Tokenizer

    torch.backends.cuda.matmul.allow_tf32 = False
    text = "Once upon a time, there was a little fox named Mia. Mia found a red ball in the park."
    ids = Tokenizer.load(tokenizer_dir).encode(text)
    hf_ids = transformers.AutoTokenizer.from_pretrained(export_dir)(text)["input_ids"]
    if hf_ids != ids:
        raise CheckFailed(f"HF tokenizer ids differ from ours: {hf_ids[:12]} vs {ids[:12]}")
    ours = load_model(ckpt).to(ctx.device).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(export_dir).to(ctx.device).eval()
    batch = torch.tensor([ids], device=ctx.device)
    with torch.no_grad():
        a = ours(batch)[0].float()
        b = theirs(batch).logits.float()
    err = ((a - b).abs().max() / a.abs().max()).item()
    ctx.results["hf_logit_error"] = err
    if err > 1e-4:
        raise CheckFailed(f"HF logits on {ctx.device} differ from ours by {err:.2e} of the largest (> 1e-4)")
    return f"HF {type(theirs).__name__} on {ctx.device}: logits within {err:.1e}, tokenizer ids equal"


def step_train(ctx: Context) -> str:
    data = prepare_corpus(ctx)
    run_dir, steps = ctx.work / "run", (6 if ctx.dry_run else 300)
    args = preset_run(ctx, run_dir, data, steps)
    # the first half compiled (the engine's torch.compile path, and a compiled model's checkpoint), the
    # second half eager after --resume; inductor needs a GPU, so the dry run stays eager
    tinyformer("train", *args, f"train.stop_at_step={steps // 2}", f"train.compile={str(not ctx.dry_run).lower()}")
    paused = json.loads((run_dir / "summary.json").read_text())
    if paused["status"] != "paused" or paused["step"] != steps // 2:
        raise CheckFailed(f"train.stop_at_step={steps // 2} ended with {paused['status']} at step {paused['step']}")
    tinyformer("train", *args, "--resume")
    summary = json.loads((run_dir / "summary.json").read_text())
    ctx.results["summary"] = summary
    if summary["status"] != "finished" or summary["step"] != steps:
        raise CheckFailed(f"the resumed run ended with {summary['status']} at step {summary['step']}, not {steps}")
    train_records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    bad = [r["step"] for r in train_records if r["train_loss"] is None or not math.isfinite(r["train_loss"])]
    if bad:
        raise CheckFailed(f"train loss not finite at steps {bad[:5]}")
    if len(evals) < 2 or not evals[-1]["val_loss"] < evals[0]["val_loss"]:
        raise CheckFailed(f"validation loss did not fall: {[round(r['val_loss'], 3) for r in evals]}")
    half, compiled = steps // 2, not ctx.dry_run
    halves = {f"1-{half}, {'compiled' if compiled else 'eager'}": [r for r in train_records if 1 < r["step"] <= half],
              f"{half + 1}-{steps}, eager after --resume": [r for r in train_records if r["step"] > half + 1]}
    rows = []
    for label, records in halves.items():
        records = records[1:] or records  # the first window of each process holds its warm-up (and compilation)
        tps = statistics.median(r["tokens_per_s"] for r in records)
        mfus = [r["mfu"] for r in records if r.get("mfu") is not None]
        ctx.results.setdefault("engine", {})[label] = {"tokens_per_s": tps, "mfu": statistics.median(mfus) if mfus else None}
        rows.append([label, f"{tps:,.0f}", f"{statistics.median(mfus):.1%}" if mfus else "-",
                     f"{records[-1]['train_loss']:.3f}"])
    ctx.table("Training run through the engine (metrics.jsonl)",
              ["steps", "tokens/s (median)", "MFU (engine's peak)", "train loss at the end"], rows)
    export_dir = ctx.work / "export"
    tinyformer("export", "--ckpt", run_dir, "--format", "hf", "--out", export_dir, "--which", "latest", "--force")
    hf = compare_hf_export(ctx, export_dir, latest_checkpoint(run_dir), ctx.work.parent / "data" / "tok")
    curve = " -> ".join(f"{r['val_loss']:.2f}" for r in evals)
    return (f"{summary['precision']} on {summary['device']}, {steps} steps (stop at {half}, resume): val loss "
            f"{curve}; {hf}")


# ---------------------------------------------------------------- step 5: torchrun and DDP


def ddp_smoke(ctx: Context) -> dict[str, Any]:
    """Join a one-process group (NCCL, or gloo in the dry run), wrap a model in DDP, train a few steps and
    all-reduce: what `train.parallel=ddp` needs from this machine, even though one torchrun process skips it."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from tinyformer.model import Transformer

    device = ctx.device
    if not ctx.dry_run:
        torch.cuda.set_device(0)
    store = ctx.work / "ddp-store"
    store.unlink(missing_ok=True)
    dist.init_process_group("gloo" if ctx.dry_run else "nccl", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = Transformer(model_config(TINY_GPT2)).to(device)
        ddp = DistributedDataParallel(model, device_ids=None if ctx.dry_run else [0])
        optimizer = adamw(model)
        ids = torch.randint(0, TINY_GPT2["vocab_size"], (4, 65), device=device)
        losses = []
        for _ in range(5):
            with autocast(device, "fp32" if ctx.dry_run else "bf16"):
                _, loss = ddp(ids[:, :-1], targets=ids[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
        total = torch.ones(1, device=device)
        dist.all_reduce(total)
        return {"backend": dist.get_backend(), "losses": losses, "all_reduce_ok": total.item() == 1.0,
                "nccl": None if ctx.dry_run else nccl_version()}
    finally:
        dist.destroy_process_group()


def step_torchrun(ctx: Context) -> str:
    data = prepare_corpus(ctx)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    run_dir, steps = ctx.work / "run", (4 if ctx.dry_run else 60)
    tinyformer("train", *preset_run(ctx, run_dir, data, steps), "train.parallel=ddp", launcher=torchrun,
               what="torchrun --nproc_per_node=1 -m tinyformer train train.parallel=ddp")
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["status"] != "finished":
        raise CheckFailed(f"the torchrun run ended with {summary['status']} at step {summary['step']}")
    ctx.notes.append("with one process the engine starts no process group (world size 1), so `torchrun "
                     "--nproc_per_node=1 ... train.parallel=ddp` checks the launch, not DDP; the DDP smoke test "
                     "joins a real one-process group")
    smoke = ddp_smoke(ctx)
    ctx.results.update(summary=summary, ddp_smoke=smoke)
    if not smoke["all_reduce_ok"] or not all(math.isfinite(x) for x in smoke["losses"]):
        raise CheckFailed(f"DDP smoke test over {smoke['backend']}: all-reduce ok {smoke['all_reduce_ok']}, "
                          f"losses {smoke['losses']}")
    return (f"tinyformer train under torchrun: {summary['status']} at step {summary['step']} on {summary['device']}; "
            f"DDP over {smoke['backend']}" + (f" (NCCL {smoke['nccl']})" if smoke["nccl"] else "")
            + f": {len(smoke['losses'])} steps, all-reduce ok")


# ---------------------------------------------------------------- the plan, the runner, the report


@dataclass(frozen=True)
class Step:
    name: str
    title: str  # what it checks, for the report
    limit_s: float  # on the GPU machine
    dry_limit_s: float
    fn: Callable[[Context], str]


STEPS = [
    Step("env", "versions; bf16 / tf32 / fp32 matmul ceilings (8192^3)", 45, 30, step_env),
    Step("correctness", "pytest -m gpu tests/unit/test_gpu.py: parity, KV cache, bf16/fp16, exact resume, HF", 120, 90,
         step_correctness),
    Step("gpt2-compiled", "GPT-2 124M, bf16, torch.compile, flash SDPA, fused AdamW: tokens/s, MFU", 110, 40,
         step_gpt2_compiled),
    Step("gpt2-eager", "the same, eager", 35, 30, step_gpt2_eager),
    Step("tinystories", "TinyStories preset shape (configs/tinystories.yaml), bf16 eager and compiled", 60, 40,
         step_tinystories),
    Step("lab-single", "lab 4x4x256, batch 64, ~104 tokens, fp32 and bf16: steps/s, one process", 40, 30,
         step_lab_single),
    Step("lab-shared", "the same as 4 processes sharing the device", 40, 30, step_lab_shared),
    Step("train", "tinyformer train (preset, generated stories): stop, resume, export --format hf", 110, 60,
         step_train),
    Step("torchrun", "torchrun --nproc_per_node=1 ... train.parallel=ddp; DDP over NCCL", 60, 45, step_torchrun),
]


def run_child_step(name: str, out: Path, work: Path, dry_run: bool) -> int:
    """Child mode: run one step in this process and write OUT/steps/NAME.json."""
    step = next(s for s in STEPS if s.name == name)
    ctx = Context(out=out, work=work / name, dry_run=dry_run)
    ctx.work.mkdir(parents=True, exist_ok=True)
    code, record = 0, {}
    try:
        record = {"status": OK, "summary": step.fn(ctx)}
    except CheckFailed as exc:
        code, record = 1, {"status": FAILED, "summary": str(exc), "error": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        code, record = 1, {"status": FAILED, "summary": f"{type(exc).__name__}: {exc}"[:400],
                           "error": f"{type(exc).__name__}: {exc}"}
    record.update(results=ctx.results, notes=ctx.notes, tables=ctx.tables)
    (out / "steps").mkdir(parents=True, exist_ok=True)
    (out / "steps" / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"{name}: {record['status']}: {record['summary']}", flush=True)
    return code


@dataclass
class Outcome:
    returncode: int | None  # None: killed at its time limit
    seconds: float


def run_command(argv: list[str], timeout: float, log_path: Path, env: dict[str, str] | None = None) -> Outcome:
    """Run `argv` in its own process group, output to `log_path`; at `timeout` the whole group is stopped
    (SIGTERM, then SIGKILL), so no worker it started outlives it."""
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env or child_env(),
                                start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            code = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the step's group still running
    return Outcome(code, time.perf_counter() - start)


def tail(path: Path, chars: int = 2500) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return text[-chars:]


def run_plan(plan: list[tuple[str, str, list[str], float]], out: Path, budget_s: float,
             on_step: Callable[[dict], None] = lambda record: None) -> list[dict]:
    """Run (name, title, argv, limit) in order, each within its limit and the overall budget (every later
    step keeps FLOOR_S); record status, seconds and, when not ok, the tail of its log."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "steps").mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + budget_s
    records = []
    for i, (name, title, argv, limit) in enumerate(plan):
        reserve = sum(min(later[3], FLOOR_S) for later in plan[i + 1:])
        timeout = min(limit, deadline - time.perf_counter() - reserve)
        record: dict[str, Any] = {"name": name, "title": title, "timeout_s": round(max(timeout, 0), 1)}
        result_path, log_path = out / "steps" / f"{name}.json", out / "logs" / f"{name}.log"
        result_path.unlink(missing_ok=True)
        if timeout < min(limit, 5):  # too little left to start a step
            record.update(status=NO_TIME, seconds=0.0, summary=f"overall budget of {budget_s:.0f} s spent")
        else:
            outcome = run_command(argv, timeout, log_path)
            found = json.loads(result_path.read_text()) if result_path.exists() else {}
            record["seconds"] = round(outcome.seconds, 1)
            record.update({k: found[k] for k in ("summary", "results", "notes", "tables") if k in found})
            if outcome.returncode is None:
                record.update(status=TIMED_OUT, summary=f"stopped at its {timeout:.0f} s limit")
            elif not found:
                record.update(status=FAILED, summary=f"exited {outcome.returncode} without writing a result")
            elif outcome.returncode != 0 and found.get("status") == OK:
                record.update(status=FAILED, summary=f"exited {outcome.returncode}: {found.get('summary', '')}")
            else:
                record["status"] = found["status"]
            if record["status"] != OK:
                record["error_tail"] = tail(log_path)
        records.append(record)
        on_step(record)
    return records


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    """The summary table, then each kind of detail table once (rows from every step that made one), notes,
    and the log tail of every step that did not pass."""
    lines = [f"# tinyformer GPU check{' (DRY RUN: CPU, tiny sizes)' if report['dry_run'] else ''}", "",
             f"- started {report['started']}, {report['seconds']:.0f} s in all (budget {report['budget_s']:.0f} s)",
             f"- device: {report.get('device') or '?'}",
             f"- command: `{report['command']}`", f"- source: {report.get('commit') or 'unknown commit'}", "",
             "| # | step | what it checks | status | seconds | result |", "|---|---|---|---|---|---|"]
    for i, s in enumerate(report["steps"], 1):
        lines.append(f"| {i} | {s['name']} | {cell(s['title'])} | **{s['status']}** | {s.get('seconds', 0):.1f} | "
                     f"{cell(s.get('summary', ''))} |")
    tables: dict[str, dict[str, Any]] = {}
    for s in report["steps"]:
        for t in s.get("tables", []):
            tables.setdefault(t["title"], {"columns": t["columns"], "rows": []})["rows"] += t["rows"]
    for title, t in tables.items():
        lines += ["", f"## {title}", "", "| " + " | ".join(t["columns"]) + " |", "|" + "---|" * len(t["columns"])]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in t["rows"]]
    notes = [f"- {s['name']}: {note}" for s in report["steps"] for note in s.get("notes", [])]
    if notes:
        lines += ["", "## Notes", "", *notes]
    failures = [s for s in report["steps"] if s.get("error_tail")]
    if failures:
        lines += ["", "## Failures (the tail of each log; whole logs in logs/)"]
        for s in failures:
            lines += ["", f"### {s['name']}: {s['status']}", "", "```", s["error_tail"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    for name, text in (("results.json", json.dumps(report, indent=1, default=str)), ("results.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)


def git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if proc.returncode == 0:
            return proc.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results.md, results.json and logs/")
    parser.add_argument("--work", type=Path, help="scratch folder for runs, checkpoints and exports (default OUT/work)")
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU at tiny sizes")
    parser.add_argument("--only", help="comma-separated step names (default: all): " + ", ".join(s.name for s in STEPS))
    parser.add_argument("--budget", type=float, help="overall seconds for all steps (default 420; dry run 400)")
    hidden = argparse.SUPPRESS
    parser.add_argument("--step", help=hidden)
    parser.add_argument("--lab-worker", type=int, help=hidden)
    parser.add_argument("--pool-dir", type=Path, help=hidden)
    parser.add_argument("--pool-size", type=int, help=hidden)
    parser.add_argument("--seconds", type=float, help=hidden)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    work = (args.work or out / "work").resolve()
    if args.step:
        return run_child_step(args.step, out, work, args.dry_run)
    if args.lab_worker is not None:
        lab_worker(args.pool_dir, args.lab_worker, args.pool_size, args.seconds, args.dry_run)
        return 0

    names = [s.name for s in STEPS]
    chosen = args.only.split(",") if args.only else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        parser.error(f"unknown step {unknown[0]!r}; steps: {', '.join(names)}")
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:  # tiny models: one CPU thread per process, so the steps' processes do not fight for cores
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    budget = args.budget or (400.0 if args.dry_run else 420.0)
    plan = []
    for s in STEPS:
        if s.name in chosen:
            argv_ = [sys.executable, str(SCRIPT), "--step", s.name, "--out", str(out), "--work", str(work)]
            plan.append((s.name, s.title, argv_ + (["--dry-run"] if args.dry_run else []),
                         s.dry_limit_s if args.dry_run else s.limit_s))
    started = time.perf_counter()
    report: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dry_run": args.dry_run, "budget_s": budget, "seconds": 0.0, "commit": git_commit(),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]), "python": sys.executable, "steps": [],
    }

    def on_step(record: dict) -> None:
        report["steps"].append(record)
        report["seconds"] = time.perf_counter() - started
        if record["name"] == "env" and record.get("results"):
            report["device"] = record["results"].get("device_name")
        write_report(out, report)
        print(f"[{len(report['steps'])}/{len(plan)}] {record['name']}: {record['status']} "
              f"({record.get('seconds', 0):.1f} s) {record.get('summary', '')}", flush=True)

    records = run_plan(plan, out, budget, on_step)
    print(f"report: {out / 'results.md'}")
    return 0 if all(r["status"] == OK for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
