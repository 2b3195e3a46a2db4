"""Multi-process training under torchrun: process-group set-up, and DDP or FSDP2 applied from outside the model.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op (one process).
Multi-node: `torchrun --nnodes=2 --node_rank=K --nproc_per_node=G --rdzv_backend=c10d
--rdzv_endpoint=HOST:PORT -m tinyformer train ...` on every node; nothing here depends on the node count.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from tinyformer.errors import TinyformerError
from tinyformer.model import ModelConfig, Transformer


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(parallel: str, device_type: str, backend: str = "auto", timeout_s: float = 300.0) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; check `parallel` agrees with the launch.
    `timeout_s`: how long a collective waits for the other processes before it fails (`train.dist_timeout`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if parallel == "none":
        raise TinyformerError(
            f"launched with {world} processes but train.parallel=none; pass train.parallel=ddp or train.parallel=fsdp"
        )
    import torch.distributed as dist

    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return info


def parallelize(model: torch.nn.Module, parallel: str, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DDP wrapper, or FSDP2 `fully_shard` on each block then the root (in place); plain model otherwise.

    Returns the module to call in the training loop. With FSDP the returned module *is* `model`, its
    parameters now sharded DTensors."""
    if not info.enabled:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    return model


def full_model(model: torch.nn.Module, parallel: str, info: DistInfo,
               model_config: dict) -> torch.nn.Module | None:
    """The plain module with full weights on rank 0 (None on other ranks), for saving; under FSDP the shards
    are gathered (every process takes part) into a fresh CPU copy, so the file has clean, unsharded names."""
    if parallel != "fsdp" or not info.enabled:
        return model if info.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return None
    with torch.device("cpu"):
        copy = Transformer(ModelConfig.from_dict(model_config))
    copy.load_state_dict(full)
    return copy


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated Transformer blocks: the children of the first ModuleList found."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            return list(module)
    return []


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few floats over all processes (identity with one process)."""
    return _all_reduce(values, info, device, "SUM")


def all_reduce_max(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """The largest of each of a few floats over all processes (identity with one process)."""
    return _all_reduce(values, info, device, "MAX")


def _all_reduce(values: list[float], info: DistInfo, device: torch.device, op: str) -> list[float]:
    if not info.enabled:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t.tolist()


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every process's `obj`, in rank order (just [obj] with one process)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


class ProcessFailed(RuntimeError):
    """What the other processes raise when one process failed a step they all take (an evaluation)."""


def agree_on_failure(error: Exception | None, info: DistInfo) -> Exception | None:
    """Every process's outcome of a step they all take, so that all treat it as failed or none does (one
    process going on alone would leave the others in a collective it never joins): this process's own
    error, else `ProcessFailed` naming the first process that failed and its error, else None."""
    if not info.enabled:
        return error
    mine = None if error is None else f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
    outcomes = all_gather_objects(mine, info)
    if error is not None:
        return error
    failed = [(rank, text) for rank, text in enumerate(outcomes) if text is not None]
    if not failed:
        return None
    rank, text = failed[0]
    return ProcessFailed(f"on process {rank} of {info.world_size}: {text}")


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
