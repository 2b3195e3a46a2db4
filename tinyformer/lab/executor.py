"""Many small runs at once: the executor behind `lengen sweep`, `best`, `reproduce` and the demo (their job
function is `tinyformer.lab.run.train_task`: one task run's summary).

A tiny model cannot keep a machine busy, so the machine runs several at a time. `LocalExecutor` starts
worker processes: on a CPU N one-thread workers (tiny models gain nothing from intra-op threads), on a GPU
several processes sharing the device. Every run starts in a fresh interpreter (spawn, one run per
process), so no result can depend on which runs shared a process: N workers give the same numbers as one
after another. Beyond one machine `RayExecutor` hands each run to an existing Ray cluster as one task with
its resources declared (1 CPU, or a fraction of a GPU), so a sweep spreads over every node; Ray is an
optional extra (`pip install 'tinyformer[ray]'`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tinyformer.errors import Interrupted, TinyformerError
from tinyformer.train.signals import ForwardedSignals
from tinyformer.train.status import INTERRUPTED

Job = Any  # a picklable argument of the run function (a RunConfig)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


GPU_RUNS = 16  # tiny models leave most of a GPU idle: this many runs share it (each its own process)


def default_workers(device: str = "cpu") -> int:
    """One worker per CPU core; on a GPU, GPU_RUNS runs sharing it (at most one per CPU core)."""
    return min(GPU_RUNS, max(1, _cpu_count())) if device.startswith("cuda") else max(1, _cpu_count())


def one_thread(cfg):
    """A RunConfig set to one CPU thread (what a worker among N on N cores should use), unless it set one."""
    if cfg.train.threads:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=1), model_keys=cfg.model_keys)


class LocalExecutor:
    """`workers` processes on this machine (0: everything here, one run after another)."""

    def __init__(self, workers: int | None = None, device: str = "cpu") -> None:
        self.workers = default_workers(device) if workers is None else workers
        if self.workers < 0:
            raise TinyformerError(f"workers must be 0 (run here) or more, got {workers}")

    def map(self, fn: Callable[[Job], Any], jobs: Iterable[Job]) -> Iterator[tuple[int, Any]]:
        """Yield (index of the job, fn(job)) as runs finish. The first SIGINT/SIGTERM (or a run that comes back
        interrupted) stops the map: the runs under way save their checkpoints, none starts, and once the
        running ones are back `Interrupted` is raised (the CLI exits 130 / 143); a second signal gives up."""
        jobs = list(jobs)
        if self.workers == 0 or len(jobs) <= 1 and self.workers <= 1:
            for i, job in enumerate(jobs):  # here: the run's own trainer catches the signal and saves
                result = fn(job)
                yield i, result
                stop_if_interrupted(result)
            return
        yield from self._pool_map(fn, jobs)

    def _pool_map(self, fn: Callable[[Job], Any], jobs: list[Job]) -> Iterator[tuple[int, Any]]:
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        ctx = multiprocessing.get_context("spawn")
        fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
        workers = min(self.workers, len(jobs)) or 1
        todo = list(enumerate(jobs))[::-1]
        running: dict[Any, int] = {}
        # jobs are submitted one per free worker (none waits in the pool's queue), so after a signal no
        # run can start; the workers have their own process group, so a Ctrl-C reaches them only once,
        # forwarded from here
        with ForwardedSignals() as stop, ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                                     initializer=_own_process_group, **fresh) as pool:
            try:
                while todo or running:
                    while todo and len(running) < workers and not stop.signum:
                        i, job = todo.pop()
                        running[pool.submit(fn, job)] = i
                    if not running:
                        break
                    done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                    stop.forward()
                    for future in done:
                        i = running.pop(future)
                        try:
                            result = future.result()
                        except (KeyboardInterrupt, BrokenProcessPool):
                            if stop.signum:  # a worker stopped by the signal before its run caught it
                                continue
                            raise
                        yield i, result
                        stop.signum = stop.signum or interrupted_by(result)
            except BaseException:  # a second signal, an error, or the caller stopped reading: end the runs
                stop.forward(again=True)
                raise
        if stop.signum:
            raise Interrupted(stop.signum)


def interrupted_by(result: Any) -> int | None:
    """The signal that stopped a run, for a run summary (or summary row) with status interrupted."""
    if not isinstance(result, dict) or result.get("status") != INTERRUPTED:
        return None
    try:
        return int(signal.Signals[result.get("signal") or "SIGINT"])
    except KeyError:
        return int(signal.SIGINT)


def stop_if_interrupted(result: Any) -> None:
    """A multi-run command stops at the first interrupted run: raise `Interrupted` (exit 128 + signal)."""
    signum = interrupted_by(result)
    if signum:
        raise Interrupted(signum)


def _own_process_group() -> None:
    """Worker start: leave the terminal's process group, so Ctrl-C reaches the parent only (which forwards
    it once; a second copy would make the run give up without saving)."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()


class RayExecutor:
    """Each run a Ray task on an existing cluster (`address`; None = start or join a local one)."""

    def __init__(self, address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise TinyformerError("the ray executor needs Ray: pip install 'tinyformer[ray]'") from None
        self.ray = ray
        self.address = address
        self.resources = {"num_cpus": num_cpus, "num_gpus": num_gpus}

    def map(self, fn: Callable[[Job], Any], jobs: Iterable[Job]) -> Iterator[tuple[int, Any]]:
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        remote = ray.remote(**self.resources)(fn)
        refs = {remote.remote(job): i for i, job in enumerate(jobs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield refs[ref], ray.get(ref)


def make_executor(kind: str = "local", workers: int | None = None, device: str = "cpu",
                  address: str | None = None):
    if kind == "local":
        return LocalExecutor(workers, device)
    if kind == "ray":
        gpus = 1.0 / default_workers(device) if device.startswith("cuda") else 0.0
        return RayExecutor(address, num_cpus=1.0, num_gpus=gpus)
    raise TinyformerError(f"unknown executor {kind!r}; use local or ray")

