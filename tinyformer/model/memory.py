"""Memory a request needs, estimated before anything is allocated, against what the device has free: a
request that cannot fit (a KV cache for ten million tokens, a forward over 100,000-token sequences) is a
one-line error instead of an out-of-memory crash. The forward estimate counts the attention scores
B x H x T x T as the explicit attention path holds them: fused kernels need less memory, never less work."""

from __future__ import annotations

from pathlib import Path

import torch

from tinyformer.errors import TinyformerError

GIB = 2**30
SMALL = 256 * 2**20  # requests below this are never checked


def free_bytes(device: torch.device | str) -> int | None:
    """Bytes free on `device` (CUDA: the driver's count; CPU: MemAvailable, within a cgroup limit); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:  # a container's own limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = min(free if free is not None else 2**62, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free if free is None else max(0, free)


def kv_cache_bytes(cfg, batch: int, length: int) -> int:
    """What `KVCache(cfg, batch, length)` allocates (float32 keys and values of every layer, positions, flags)."""
    return 2 * cfg.n_layers * batch * cfg.num_kv_heads * length * cfg.head_dim * 4 + batch * length * 9


def forward_bytes(cfg, batch: int, seq_len: int) -> int:
    """Peak memory of one inference forward of `batch` x `seq_len` tokens: a layer's activations, the logits
    and the attention scores."""
    per_token = max(4 * cfg.d_model, 2 * cfg.ffn_dim) + cfg.vocab_size
    return batch * seq_len * per_token * 4 + batch * cfg.n_heads * seq_len * seq_len * 4


def require_fits(nbytes: int, device: torch.device | str, request: str, fix: str) -> None:
    """A one-line error when `nbytes` exceeds half of what `device` has free (the rest is the model, the
    data and everything else the process holds)."""
    if nbytes < SMALL:  # every ordinary request: no reading of the device's state
        return
    free = free_bytes(device)
    if free is not None and nbytes > free // 2:
        raise TinyformerError(f"{request} needs about {nbytes / GIB:,.1f} GiB, more than half of the "
                              f"{free / GIB:,.1f} GiB free on {torch.device(device).type}; {fix}")
