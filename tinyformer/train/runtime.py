"""Where and how a run computes: device, processes (under torchrun), precision, attention kernel, RNG state.

Everything here is applied from outside the model, so the model file stays free of devices and parallelism.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tinyformer.batch import split_by_length
from tinyformer.errors import TinyformerError
from tinyformer.model.attention import float32_kernel
from tinyformer.model.transformer import target_counts
from tinyformer.train.config import DEVICE, TrainConfig
from tinyformer.train.distributed import DistInfo, init_distributed


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    info: DistInfo
    sdpa: str = "auto"  # the attention kernel (train.sdpa_backend, or the one autotune measured fastest)
    length_groups: int = 1  # how many groups of rows a training batch may be split into (`length_groups`)


CPU_LENGTH_GROUPS = 4


def length_groups(device: torch.device, compiled: bool) -> int:
    """At most how many sub-batches `tinyformer.batch.split_by_length` may cut a training batch into.
    On a CPU, time follows the number of positions computed, so several groups of similar length pay off
    (the lab's tasks, lengths 1-50: 1.5x the steps per second, `bench/lengen_throughput.py`). Elsewhere one
    group, which still cuts the batch's trailing padding: on a GPU a tiny model's step costs kernel launches
    more than positions (not measured), and under torch.compile every new shape recompiles."""
    return CPU_LENGTH_GROUPS if device.type == "cpu" and not compiled else 1


def training_parts(batch: dict[str, torch.Tensor], groups: int, n_predict: int,
                   device: torch.device) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor | None]:
    """A training batch as its length groups (`tinyformer.batch.split_by_length`), and the whole batch's
    `target_counts` on `device` that the parts' losses divide by (None when the batch stays whole)."""
    parts = split_by_length(batch, groups)
    counts = target_counts(batch["targets"], n_predict).to(device) if len(parts) > 1 else None
    return parts, counts


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available, else mps, else cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not DEVICE.fullmatch(name):
        raise TinyformerError(f"device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count() > 0:
        raise TinyformerError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} "
                              "CUDA device(s); use cuda or cuda:0")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TinyformerError(f"train.device={name} but CUDA is not available here; use train.device=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TinyformerError(f"train.device={name} but MPS is not available here; use train.device=auto or cpu")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on CUDA with bf16 support (else fp16); fp32 elsewhere until measured (on a CPU
    `tinyformer.train.autotune` replaces it with the fastest precision for the run's shape)."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise TinyformerError("train.precision=fp16 needs a GPU; on CPU use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def sdpa_backend(name: str):
    """A context choosing the scaled-dot-product-attention kernel (`auto`: leave it to torch; `fp32`: torch's
    choice, on float32 q, k, v even under autocast)."""
    if name == "auto":
        return contextlib.nullcontext()
    if name == "fp32":
        return float32_kernel()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]
    return sdpa_kernel([backend])


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)
HEAP_BLOCKS_UP_TO = 32 << 20  # glibc's largest mmap threshold: blocks up to this size come from the heap
KEEP_FREE_UP_TO = 1 << 30  # free memory at the heap's top kept before any is given back to the OS
_reused = False


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; True once applied (False where it is not glibc).

    By default glibc serves blocks above a moving threshold (128 KB up to 32 MB) with fresh mmap calls and
    gives free memory at the top of its heap back to the OS once it exceeds twice that threshold. A training
    step allocates and frees the same tens of MB of activations and logit blocks every step, so each step
    page-faults them in again, zero-filled: 40-50 thousand faults per TinyStories step on this CPU, about 9%
    of its time. With blocks up to 32 MB taken from the heap and up to 1 GiB of free memory kept, a step
    reuses the pages of the previous one. The process's resident memory then stays at its peak.
    Process-wide and for the rest of the process (like LD_PRELOAD of jemalloc or tcmalloc, which torch's CPU
    tuning guide recommends for the same reason); applied once."""
    global _reused
    if _reused:
        return True
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO) == 1 and libc.mallopt(M_TRIM_THRESHOLD,
                                                                                    KEEP_FREE_UP_TO) == 1
    except (OSError, AttributeError):
        return False
    _reused = ok
    return ok


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Device, process group (under torchrun) and precision for a run."""
    device = resolve_device(cfg.device)
    if cfg.sdpa_backend in ("efficient", "cudnn") and device.type != "cuda":
        raise TinyformerError(f"train.sdpa_backend={cfg.sdpa_backend} needs a CUDA device, this run is on "
                              f"{device.type}; use auto, math or flash")
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.reuse_memory and device.type == "cpu":
        reuse_freed_memory()
    info = init_distributed(cfg.parallel, device.type, cfg.dist_backend, cfg.dist_timeout)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank if info.enabled else (device.index or 0))
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    return Runtime(device, precision, info, cfg.sdpa_backend, length_groups(device, cfg.compile))


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
