"""Faults a run must survive (issue 21): extending a finished run, two processes on one directory, a full
disk, a diverging run, a damaged checkpoint that still loads, and directories synced after each rename.
Tiny runs through the CLI's main() in this process (helpers from test_hardening), a second real process
where the fault needs one."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_hardening as hardening
import torch
from safetensors.torch import load_file, save_file
from test_hardening import (
    COMMON,
    FAST,
    MODEL,
    data_args,
    one_line_error,
    records,
    same_weights,
    train,
    weights,
)

from tinyformer.fileio import LOCK_FILE

corpus, straight = hardening.corpus, hardening.straight  # the same fixtures


def ckpt_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


# ---------------------------------------------------------------- 8: extending a finished run


def test_a_finished_run_extended_trains_on_at_the_schedules_final_rate_and_resumes_exactly(cli, tmp_path, corpus):
    base = ["train.eval_every=4", "train.ckpt_every=2", "train.keep_last=10"]
    runs = {k: tmp_path / k for k in ("straight", "paused")}
    for run in runs.values():
        train(cli, run, corpus, *base, "train.max_steps=4")
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    proc = train(cli, runs["straight"], corpus, *base, "train.max_steps=8", "--resume")
    summary = json.loads((runs["straight"] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 8, proc.stdout + proc.stderr
    assert "keeps its 4-step horizon" in proc.stdout
    lrs = {r["step"]: r["lr"] for r in records(runs["straight"], "train")}
    assert sorted(lrs) == list(range(1, 9))
    assert [lrs[s] for s in range(5, 9)] == pytest.approx([3e-4] * 4)  # train.lr=3e-3 -> min_lr lr/10
    # the extension paused half way and resumed gives the same weights and records as the one in one go
    train(cli, runs["paused"], corpus, *base, "train.max_steps=8", "train.stop_at_step=6")
    assert json.loads((runs["paused"] / "summary.json").read_text())["status"] == "paused"
    train(cli, runs["paused"], corpus, *base, "train.max_steps=8")
    assert records(runs["paused"]) == records(runs["straight"])
    assert same_weights(weights(runs["paused"], 8), weights(runs["straight"], 8))


# ---------------------------------------------------------------- 9: lengen train after an early stop


def test_lengen_train_after_an_early_stop_says_the_run_ended(cli, tmp_path):
    args = ["lengen", "train", "--task", "UR", "--pe", "rope", "--out", tmp_path / "run", "model.n_layers=1",
            "model.d_model=16", "model.n_heads=2", "train.max_steps=20", "train.eval_every=1", "train.lr=0",
            "train.early_stop_patience=1", "eval.examples=4", "task.train_lengths=1-8", "eval.bins=[1-8]",
            "train.batch_size=4", "train.precision=fp32", "train.progress=false", "train.threads=1"]
    proc = cli(*args, check=True)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "early_stopped"
    assert "again to continue" not in proc.stdout and "stopped early" in proc.stdout


# ---------------------------------------------------------------- 15: one process per directory


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended early:\n{proc.stderr.read()}")
        if time.monotonic() > end:
            raise AssertionError(f"{what}: timed out")
        time.sleep(0.05)


def test_a_second_process_on_a_run_dir_refuses_naming_the_first_and_a_dead_ones_lock_is_taken_over(
        cli, tmp_path, corpus):
    run = tmp_path / "run"
    lock = run / LOCK_FILE
    first = subprocess.Popen(
        [sys.executable, "-m", "tinyformer", "train", f"run_dir={run}", *data_args(corpus), *MODEL, *FAST,
         "train.max_steps=1000000", "train.eval_every=0", "train.ckpt_every=0", "train.sample_tokens=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_for(lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0,
                  "the first run trains", first)
        assert lock.read_text().startswith(f"pid {first.pid} on ")
        line = one_line_error(train(cli, run, corpus, *COMMON, check=False))
        assert f"pid {first.pid}" in line and "in use by another process" in line
        assert not (run / "checkpoints").exists()  # the second wrote nothing
        first.kill()  # dies holding the lock: its lock file stays behind
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stderr.close()
    assert lock.read_text().startswith(f"pid {first.pid} on ")
    train(cli, run, corpus, *COMMON)  # the dead process's lock is taken over
    assert json.loads((run / "summary.json").read_text())["step"] == 8
    assert not lock.exists()  # released at the end


HOLD = ("import sys, time\nfrom tinyformer.fileio import directory_lock\n"
        "with directory_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


@pytest.fixture
def held(tmp_path):
    """A directory locked by another process (through the one lock helper) while the test runs."""
    path = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield path, proc.pid
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_sweep_on_a_results_dir_in_use_refuses(tmp_path, held):
    from tinyformer.errors import TinyformerError
    from tinyformer.lab.sweep import sweep

    results, pid = held
    calls = []

    def fake_train(cfg, run_dir):  # never reached
        calls.append(cfg)
        return {"accuracy": {"1-50": 1.0}}

    with pytest.raises(TinyformerError, match=f"sweep results directory {results} is in use .*pid {pid} "):
        sweep({"task.name": "UR", "model.position": "rope"}, {"model.n_layers": [1, 2]}, results,
              train=fake_train, log=lambda s: None)
    assert calls == [] and sorted(p.name for p in results.iterdir()) == [LOCK_FILE]


def test_a_compare_on_an_output_dir_in_use_refuses(cli, corpus, held):
    out, pid = held
    line = one_line_error(cli("compare", "--out", out, "--vary", "model.position=learned,rope", *data_args(corpus),
                              *MODEL, *FAST, "train.max_steps=2", check=False))
    assert f"pid {pid}" in line and "compare output directory" in line
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


# ---------------------------------------------------------------- 16: a full disk


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a real ENOSPC on every write)")
def test_a_full_disk_is_one_line_naming_the_file_and_the_run_resumes_exactly(cli, tmp_path, corpus, straight):
    """metrics.jsonl is a link to /dev/full, where every write fails with a real ENOSPC: the run stops at
    step 4 (its first record; step 2's checkpoint is saved), and resumes exactly once space is back."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    line = one_line_error(train(cli, run, corpus, *COMMON, "train.log_every=4", check=False))
    assert f"no space left on the device (or the disk quota is used up) while writing {run / 'metrics.jsonl'}" in line
    assert "free some space, then run the same command again" in line
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002"]
    (run / "metrics.jsonl").unlink()  # space is back
    train(cli, run, corpus, *COMMON)
    assert same_weights(weights(run, 8), weights(straight, 8))
    assert [r for r in records(run) if r["step"] > 2] == [r for r in records(straight) if r["step"] > 2]


# ---------------------------------------------------------------- 17: divergence


def finite_checkpoints(run: Path) -> list[bool]:
    return [all(torch.isfinite(t).all() for t in load_file(p / "model.safetensors").values())
            for p in sorted((run / "checkpoints").glob("step-*"))]


def test_a_diverging_run_writes_no_broken_checkpoint_and_its_restart_command_works(cli, tmp_path, corpus):
    run = tmp_path / "run"
    line = one_line_error(train(cli, run, corpus, "train.lr=1e4", "train.eval_every=1", "train.ckpt_every=1",
                                "train.max_steps=20", check=False))
    assert "training diverged" in line
    assert finite_checkpoints(run) and all(finite_checkpoints(run))
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index.get("best_score") is None or isinstance(index["best_score"], float)
    # the printed way on, followed as written (the same command with the settings it names) until a run ends
    for hop in range(6):
        words = line.split()
        init = next(w for w in words if w.startswith("train.init_from="))
        lower = next(w for w in words if w.startswith("train.lr="))
        assert "run_dir=NEW_RUN_DIR" in words
        restart = tmp_path / f"restart-{hop}"
        proc = train(cli, restart, corpus, "train.lr=1e4", "train.eval_every=1", "train.ckpt_every=1",
                     "train.max_steps=20", init, lower, check=False)
        if proc.returncode == 0:
            break
        line = one_line_error(proc)
        assert "training diverged" in line and all(finite_checkpoints(restart))
    assert json.loads((restart / "summary.json").read_text())["status"] == "finished"
    assert hop >= 1  # 1e4 and 1e3 both diverge with this model: the suggestion is followed more than once


def test_a_score_that_is_not_finite_never_becomes_the_best(cli, tmp_path, corpus):
    run = tmp_path / "run"
    proc = train(cli, run, corpus, "train.lr=1e5", "train.warmup=1000", "train.eval_every=5", "train.max_steps=1000",
                 check=False)
    assert "training diverged" in one_line_error(proc)
    index_file = run / "checkpoints" / "index.json"
    if index_file.exists():
        best = json.loads(index_file.read_text()).get("best_score")
        assert best is None or (isinstance(best, float) and best == best)
    assert all(finite_checkpoints(run))


# ---------------------------------------------------------------- 18: a damaged checkpoint that loads


def damage(path: Path, how: str, name: str | None = None) -> None:
    tensors = load_file(path)
    name = name or next(k for k, t in tensors.items() if t.is_floating_point() and t.dim() == 2)
    t = tensors[name]
    tensors[name] = {"nan": t.clone().fill_(float("nan")), "inf": t.clone().fill_(float("inf")),
                     "int32": torch.ones_like(t, dtype=torch.int32)}[how]
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture
def paused(cli, tmp_path, corpus) -> Path:
    run = tmp_path / "run"
    train(cli, run, corpus, *COMMON, "train.stop_at_step=2")
    return run


@pytest.mark.parametrize("how", ["nan", "inf", "int32"])
def test_damaged_weights_are_refused_by_eval_sample_and_resume_naming_the_file(cli, corpus, paused, how):
    weights_file = ckpt_dir(paused, 2) / "model.safetensors"
    damage(weights_file, how)
    for args in (["eval", "--ckpt", paused], ["sample", "--ckpt", paused, "--max-new-tokens", "4"]):
        line = one_line_error(cli(*args, check=False))
        assert str(weights_file) in line and "damaged" in line
    line = one_line_error(train(cli, paused, corpus, *COMMON, check=False))
    assert str(weights_file) in line and "train.lr" not in line and f"delete {ckpt_dir(paused, 2)}" in line


def test_damaged_optimizer_moments_are_refused_on_resume_naming_the_file(cli, corpus, paused):
    state_file = ckpt_dir(paused, 2) / "trainer_state.safetensors"
    name = next(k for k in load_file(state_file) if k.endswith("exp_avg_sq"))
    damage(state_file, "inf", name)
    line = one_line_error(train(cli, paused, corpus, *COMMON, check=False))
    assert str(state_file) in line and "exp_avg_sq" in line and "train.lr" not in line


# ---------------------------------------------------------------- 21: durability


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads the path of an fd from /proc")
def test_every_rename_is_followed_by_an_fsync_of_its_directory(cli, tmp_path, corpus, monkeypatch):
    """A power loss cannot be simulated here: record what is synced, in order, around each rename."""
    events: list[tuple[str, str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(("fsync", kind, os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        real_replace(src, dst, **kw)
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = tmp_path / "run"
    train(cli, run, corpus, "train.max_steps=2", "train.eval_every=2", "train.ckpt_every=1")
    monkeypatch.setattr(os, "fsync", real_fsync)
    monkeypatch.setattr(os, "replace", real_replace)
    renames = [(i, e) for i, e in enumerate(events) if e[0] == "replace"]
    assert any(Path(dst).name == "step-00000002" for _, (_, _, dst) in renames)
    assert any(Path(dst).name == "index.json" for _, (_, _, dst) in renames)
    for i, (_, src, dst) in renames:
        parent = os.path.dirname(dst)
        assert ("fsync", "dir", parent) in events[i + 1:], f"{dst} renamed, its directory never synced after"
        if Path(dst).name.startswith("step-"):  # the step directory's own entries, before it is renamed
            assert ("fsync", "dir", src) in events[:i], f"{src} not synced before its rename"
    # checkpoints/ itself was created by the first checkpoint: the run directory is synced after
    assert ("fsync", "dir", os.path.realpath(run)) in events


@pytest.mark.slow
def test_under_torchrun_every_rank_refuses_a_run_dir_in_use(held):
    """Only rank 0 takes the lock; the others learn its answer, so the whole job ends (no rank left waiting)."""
    run, pid = held
    args = ["lengen", "train", "--task", "UR", "--pe", "rope", "model.n_layers=1", "model.d_model=16",
            "model.n_heads=2", "train.max_steps=4", "eval.examples=12", "task.train_lengths=1-8", "eval.bins=[1-8]",
            "train.batch_size=32", "train.precision=fp32", "train.progress=false", "train.threads=1",
            "train.device=cpu", "train.parallel=ddp", "--out", str(run)]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tinyformer", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    refusals = [line for line in proc.stderr.splitlines() if line.startswith("tinyformer: error:")]
    assert refusals and all(f"pid {pid}" in line and "in use by another process" in line for line in refusals)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]
