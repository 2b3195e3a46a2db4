"""Starting a run, the same for every kind: runtime, run directory, seeded model, batch source and
evaluation, the Trainer; the resolved config is written only once the Trainer accepted the run directory
(a refused resume leaves its files as they were)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tinyformer import rundir
from tinyformer.config import to_dict
from tinyformer.train.config import RunConfig, save_run_config
from tinyformer.train.distributed import barrier
from tinyformer.train.runtime import Runtime, seed_everything, setup_runtime
from tinyformer.train.trainer import Trainer

# build(runtime) -> (batch source, evaluation or None, sample_fn or None)
Build = Callable[[Runtime], tuple[Any, Any, Any]]


def start_run(cfg: RunConfig, seq_len: int, build: Build, *, init_state: dict[str, torch.Tensor] | None = None,
              write_extra: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Train `cfg` (its `model` fully resolved) to the end; returns the summary."""
    from tinyformer.model import Transformer

    run_dir = Path(cfg.run_dir)
    rt = setup_runtime(cfg.train)
    if rt.info.is_main:
        rundir.prepare(run_dir)
    seed_everything(cfg.train.seed)  # the same initial weights on every process
    model = Transformer(cfg.model)
    if init_state is not None:
        model.load_state_dict(init_state)
    seed_everything(cfg.train.seed + 1 + rt.info.rank)  # dropout differs per process
    source, evaluation, sample_fn = build(rt)
    trainer = Trainer(model, cfg.train, run_dir, source, rt, evaluation=evaluation, sample_fn=sample_fn,
                      model_config=to_dict(cfg.model), seq_len=seq_len, resume=cfg.resume)
    if rt.info.is_main:
        save_run_config(cfg, run_dir / rundir.CONFIG_FILE)
        if write_extra is not None:
            write_extra(run_dir)
    barrier(rt.info)
    return trainer.fit()
