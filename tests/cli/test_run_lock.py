"""One process per directory: a second `train`, `lengen sweep` or `compare` on a directory in use refuses in
one line naming the first process (under torchrun on every rank), and a dead process's lock is taken over.
The first process is a real one: a lock held by this process would say nothing about another."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tinyformer.fileio import LOCK_FILE

COMMON = ["train.max_steps=8", "train.eval_every=4", "train.ckpt_every=2", "train.keep_last=10"]

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


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended early:\n{proc.stderr.read()}")
        if time.monotonic() > end:
            raise AssertionError(f"{what}: timed out")
        time.sleep(0.05)


def test_a_second_process_on_a_run_dir_refuses_naming_the_first_and_a_dead_ones_lock_is_taken_over(
        cli_process, train_lm, tiny_lm_run, tmp_path, one_line_error):
    run = tmp_path / "run"
    lock = run / LOCK_FILE
    first = cli_process.popen(*tiny_lm_run.args(run, "train.max_steps=1000000", "train.eval_every=0",
                                                "train.ckpt_every=0", "train.sample_tokens=0"),
                              stdout=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0,
                  "the first run trains", first)
        assert lock.read_text().startswith(f"pid {first.pid} on ")
        one_line_error(train_lm(run, *COMMON, check=False), f"pid {first.pid}", "in use by another process")
        assert not (run / "checkpoints").exists()  # the second wrote nothing
        first.kill()  # dies holding the lock: its lock file stays behind
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stderr.close()
    assert lock.read_text().startswith(f"pid {first.pid} on ")
    train_lm(run, *COMMON)  # the dead process's lock is taken over
    assert json.loads((run / "summary.json").read_text())["step"] == 8
    assert not lock.exists()  # released at the end


def test_a_sweep_on_a_results_dir_in_use_refuses(held):
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


def test_a_compare_on_an_output_dir_in_use_refuses(cli, tiny_lm_run, held, one_line_error):
    out, pid = held
    train = tiny_lm_run.args(out, "train.max_steps=2")[2:]  # the data, model and train settings, no run_dir
    one_line_error(cli("compare", "--out", out, "--vary", "model.position=learned,rope", *train),
                   f"pid {pid}", "compare output directory")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]


@pytest.mark.slow
def test_under_torchrun_every_rank_refuses_a_run_dir_in_use(cli_process, tiny_task_run, held):
    """Only rank 0 takes the lock; the others learn its answer, so the whole job ends (no rank left waiting).
    In the default run test_a_sweep_on_a_results_dir_in_use_refuses and the second-process test keep the lock's
    behaviour; this adds the ranks."""
    run, pid = held
    proc = cli_process(*tiny_task_run.args(run, "train.max_steps=4", "eval.examples=12", "eval.bins=[1-8]",
                                           "train.batch_size=32", "train.parallel=ddp"), torchrun=True, timeout=60)
    assert proc.returncode != 0
    refusals = [line for line in proc.stderr.splitlines() if line.startswith("tinyformer: error:")]
    assert refusals and all(f"pid {pid}" in line and "in use by another process" in line for line in refusals)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]
