"""Starting a run, the same for every kind: runtime and micro-batch, the resume point (its state read and its
settings checked, once), seeded model, batch source and evaluation, the Trainer, then the run directory; it is created (and the resolved config written) only once the Trainer accepted it,
so a start that fails creates nothing and a refused resume leaves its files as they were."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tinyformer.config import to_dict
from tinyformer.errors import TinyformerError
from tinyformer.fileio import directory_lock
from tinyformer.model import Transformer
from tinyformer.train import autotune, rundir
from tinyformer.train.checkpoint import load_trainer_state
from tinyformer.train.config import SETTINGS_BEFORE, RunConfig, TrainConfig, result_settings, save_run_config
from tinyformer.train.distributed import all_gather_objects, barrier
from tinyformer.train.runtime import Runtime, seed_everything, setup_runtime
from tinyformer.train.schedule import lr_at
from tinyformer.train.trackers import check_installed
from tinyformer.train.trainer import Resume, Trainer

# build(runtime, micro_batch) -> (batch source, evaluation or None, sample_fn or None)
Build = Callable[[Runtime, int], tuple[Any, Any, Any]]


def start_run(cfg: RunConfig, seq_len: int, build: Build, *, init_state: dict[str, torch.Tensor] | None = None,
              write_extra: Callable[[Path], None] | None = None, data_identity: dict[str, str] | None = None,
              check_resume: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Train `cfg` (its `model` fully resolved) to the end; returns the summary. `data_identity`: what
    identifies the data beyond the config (token file contents), kept with the result settings;
    `check_resume(run_dir)`: a check of the caller's before a resume (the run's tokenizer)."""
    run_dir = Path(cfg.run_dir)
    rundir.check_writable(run_dir)
    check_installed(cfg.train.loggers)  # before anything is built or written
    settings = {**result_settings(cfg, seq_len), **(data_identity or {})}
    rt = setup_runtime(cfg.train)
    micro = micro_batch(cfg.train, rt.info.world_size)
    with _locked(run_dir, rt):  # a second process on this run_dir refuses before it reads a checkpoint
        # resolved once, before anything costly: a refused resume costs no model, data or measurement
        resume = resume_point(run_dir, cfg.resume, settings, check_resume)
        seed_everything(cfg.train.seed)  # the same initial weights on every process
        model = Transformer(cfg.model)
        if init_state is not None:
            model.load_state_dict(init_state)
        seed_everything(cfg.train.seed + 1 + rt.info.rank)  # dropout differs per process
        source, evaluation, sample_fn = build(rt, micro)
        tuned = _autotune(cfg, rt, model, source)
        train_cfg = dataclasses.replace(cfg.train, sdpa_backend=rt.sdpa)  # the kernel autotune chose, if it did
        trainer = Trainer(model, train_cfg, run_dir, source, rt, evaluation=evaluation, sample_fn=sample_fn,
                          model_config=to_dict(cfg.model), seq_len=seq_len, settings=settings, resume=resume)
        resume = None  # its tensors now live in the trainer's pieces
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


def micro_batch(cfg: TrainConfig, world_size: int) -> int:
    """The rows one process computes per forward: train.batch_size over processes x grad_accum."""
    if cfg.batch_size % (world_size * cfg.grad_accum):
        raise TinyformerError(
            f"train.batch_size={cfg.batch_size} must be divisible by processes x grad_accum = "
            f"{world_size} x {cfg.grad_accum}"
        )
    return cfg.batch_size // (world_size * cfg.grad_accum)


def find_resume(run_dir: Path, resume: str) -> tuple[Path | None, str | None]:
    """(the checkpoint a run in `run_dir` continues from, or None; a note when it fell back from the one
    index.json names), by `resume` = never | auto | must."""
    latest, note = rundir.resume_point(run_dir)
    if resume == "never":
        if latest is not None:
            raise TinyformerError(
                f"run_dir {run_dir} already has checkpoints; pass resume=auto to continue it or choose a new run_dir"
            )
        return None, None
    if resume == "must" and latest is None:
        raise TinyformerError(f"nothing to resume: {run_dir} has no checkpoint; drop --resume to start")
    return latest, note


def check_settings(saved: Any, settings: dict[str, Any], run_dir: Path) -> None:
    """Refuse a resume whose config changes a setting that decides the result (model, data, optimizer,
    schedule, batch, seed, task, evaluation sets), naming it; how long and where the run goes on may change."""
    if not isinstance(saved, dict):
        raise TinyformerError(f"the checkpoint state of {run_dir} has no settings; it is corrupt")
    for key in [*settings, *(k for k in saved if k not in settings)]:
        was, now = saved.get(key, SETTINGS_BEFORE.get(key)), settings.get(key)
        if was != now:
            raise TinyformerError(
                f"cannot resume {run_dir}: {key} was {was!r} when it trained, the config says {now!r} "
                "(a resume may change how long and where it runs, not what it computes); use the run's "
                "config.yaml or start a new run_dir"
            )


def resume_point(run_dir: Path, resume: str, settings: dict[str, Any],
                 check: Callable[[Path], None] | None = None) -> Resume | None:
    """Where a run in `run_dir` continues (None: it starts), its state read once and its settings checked
    against this config's: the one place a start decides whether and from where it resumes."""
    checkpoint, note = find_resume(run_dir, resume)
    if checkpoint is None:
        return None
    if check is not None:
        check(run_dir)
    state = load_trainer_state(checkpoint)
    check_settings(state.get("settings"), settings, run_dir)
    return Resume(checkpoint, state, note)


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
    tcfg = cfg.train
    if tcfg.progress:
        body = model.num_params(embeddings=False)
        print(f"model: {_count(model.num_params())} parameters ({_count(body)} without embeddings), "
              f"{cfg.model.n_layers} layer{'s' if cfg.model.n_layers != 1 else ''}, position={cfg.model.position}",
              flush=True)
    if tcfg.warmup > tcfg.max_steps and trainer.step < tcfg.max_steps:
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
