"""Starting a run, the same for every kind: runtime, seeded model, batch source and evaluation, the Trainer,
then the run directory; it is created (and the resolved config written) only once the Trainer accepted it,
so a start that fails creates nothing and a refused resume leaves its files as they were."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tinyformer.config import to_dict
from tinyformer.errors import TinyformerError
from tinyformer.fileio import directory_lock
from tinyformer.train import rundir
from tinyformer.train.checkpoint import read_settings
from tinyformer.train.config import RunConfig, result_settings, save_run_config
from tinyformer.train.distributed import all_gather_objects, barrier
from tinyformer.train.runtime import Runtime, seed_everything, setup_runtime
from tinyformer.train.trainer import Trainer
from tinyformer.train.trainer_state import check_settings, find_resume

# build(runtime) -> (batch source, evaluation or None, sample_fn or None)
Build = Callable[[Runtime], tuple[Any, Any, Any]]


def start_run(cfg: RunConfig, seq_len: int, build: Build, *, init_state: dict[str, torch.Tensor] | None = None,
              write_extra: Callable[[Path], None] | None = None,
              data_identity: dict[str, str] | None = None) -> dict[str, Any]:
    """Train `cfg` (its `model` fully resolved) to the end; returns the summary. `data_identity`: what
    identifies the data beyond the config (token file contents), kept with the result settings."""
    from tinyformer.model import Transformer

    run_dir = Path(cfg.run_dir)
    rundir.check_writable(run_dir)
    settings = {**result_settings(cfg, seq_len), **(data_identity or {})}
    resume_from, _ = find_resume(run_dir, cfg.resume)
    if resume_from is not None and (saved := read_settings(resume_from)) is not None:
        check_settings(saved, settings, run_dir)  # a refused resume costs no model, data or measurement
    rt = setup_runtime(cfg.train)
    with _locked(run_dir, rt):  # a second process on this run_dir refuses before it reads a checkpoint
        seed_everything(cfg.train.seed)  # the same initial weights on every process
        model = Transformer(cfg.model)
        if init_state is not None:
            model.load_state_dict(init_state)
        seed_everything(cfg.train.seed + 1 + rt.info.rank)  # dropout differs per process
        source, evaluation, sample_fn = build(rt)
        tuned = _autotune(cfg, rt, model, source)
        train_cfg = dataclasses.replace(cfg.train, sdpa_backend=rt.sdpa)  # the kernel autotune chose, if it did
        trainer = Trainer(model, train_cfg, run_dir, source, rt, evaluation=evaluation, sample_fn=sample_fn,
                          model_config=to_dict(cfg.model), seq_len=seq_len, resume=cfg.resume, settings=settings)
        if rt.info.is_main:
            _announce(cfg, model, trainer)
            rundir.prepare(run_dir)
            rundir.remove_temp_files(run_dir)  # what a killed write left, before this run writes anything
            save_run_config(cfg, run_dir / rundir.CONFIG_FILE)
            if write_extra is not None:
                write_extra(run_dir)
        barrier(rt.info)
        summary = trainer.fit()
        if tuned:
            summary["autotune"] = tuned
        return summary


@contextlib.contextmanager
def _locked(run_dir: Path, rt: Runtime) -> Iterator[None]:
    """Hold the lock on `run_dir` while the run starts and trains. Only the main process holds it (the other
    ranks of a torchrun job write nothing into the run directory); they all refuse together when it is held."""
    with contextlib.ExitStack() as stack:
        refused = None
        if rt.info.is_main:
            try:
                stack.enter_context(directory_lock(run_dir, "run_dir"))
            except TinyformerError as exc:
                refused = str(exc)
        if rt.info.enabled:
            refused = all_gather_objects(refused, rt.info)[0]
        if refused:
            raise TinyformerError(refused)
        yield


def _announce(cfg: RunConfig, model: torch.nn.Module, trainer: Trainer) -> None:
    """What a user should know before the first step: the model's size, a warmup the run never finishes,
    a compile that makes the first step slow."""
    import sys

    tcfg = cfg.train
    if tcfg.progress:
        body = model.num_params(embeddings=False)
        print(f"model: {_count(model.num_params())} parameters ({_count(body)} without embeddings), "
              f"{cfg.model.n_layers} layer{'s' if cfg.model.n_layers != 1 else ''}, position={cfg.model.position}",
              flush=True)
    if tcfg.warmup > tcfg.max_steps and trainer.step < tcfg.max_steps:
        from tinyformer.train.schedule import lr_at

        last = lr_at(tcfg.max_steps - 1, schedule=tcfg.schedule, lr=tcfg.lr, min_lr=tcfg.final_lr,
                     warmup=tcfg.warmup, total=tcfg.max_steps)
        print(f"tinyformer: warning: train.warmup={tcfg.warmup} exceeds train.max_steps={tcfg.max_steps}: the "
              f"learning rate never reaches train.lr={tcfg.lr:g} (it ends at {last:.2g}); lower train.warmup",
              file=sys.stderr, flush=True)
    if tcfg.compile and tcfg.progress and trainer.step < tcfg.max_steps:
        print("torch.compile: the first step compiles the model (often a minute or more); its tokens/s "
              "include the compilation", flush=True)


def _count(n: int) -> str:
    """1234567 -> '1.23M': parameter counts as people write them."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _autotune(cfg: RunConfig, rt: Runtime, model: torch.nn.Module, source: Any) -> dict[str, Any] | None:
    """precision=auto on a CPU: the fastest (precision, attention kernel) measured for this run's shape,
    the same on every process (rank 0's measurement). None when nothing was left to choose."""
    if cfg.train.precision != "auto" or rt.device.type != "cpu":
        return None
    import copy

    from tinyformer.train import autotune

    batch = copy.deepcopy(source).next_batch()  # a copy: the run's own stream must not move
    precision, sdpa, report = autotune.choose(model, to_dict(cfg.model), batch, "auto", cfg.train.sdpa_backend,
                                              rt.device, rt.length_groups)
    precision, sdpa, report = all_gather_objects((precision, sdpa, report), rt.info)[0]
    rt.precision, rt.sdpa = precision, sdpa
    if cfg.train.progress and rt.info.is_main:
        times = report.get("seconds_per_step", {})
        detail = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items())
        print(f"precision=auto: {precision} with {sdpa} attention ({report['source']}"
              + (f": {detail} per step" if detail else "") + ")", flush=True)
    return {"precision": precision, "sdpa_backend": sdpa, **report}
