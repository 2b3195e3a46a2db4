"""A run's status (summary.json "status", one of STATUSES) decides what `lengen train` and a sweep
tell the user: an ended run (DONE: finished, solved, early_stopped) is reported as done and never
as something to continue; a paused one is."""

from __future__ import annotations

import json

from tinyformer.lab.sweep import sweep
from tinyformer.train import rundir
from tinyformer.train.status import DONE, EARLY_STOPPED, PAUSED, STATUSES

AGAIN = "run the same command again to continue"  # what a run that can continue is told
# a task that a model with lr 0 never learns: the second evaluation shows no improvement, so patience 1 stops it
TINY = ["model.n_layers=1", "model.d_model=16", "model.n_heads=2", "train.lr=0", "train.warmup=0",
        "task.train_lengths=1-5", "eval.bins=[1-5]", "eval.examples=8", "eval.greedy=false", "train.batch_size=4",
        "train.precision=fp32", "train.progress=false", "train.threads=1", "train.max_steps=40"]
EARLY = ["train.eval_every=2", "train.early_stop_patience=1"]


def _status(run) -> str:
    return json.loads((run / rundir.SUMMARY_FILE).read_text(encoding="utf-8"))["status"]


def test_an_early_stopped_lengen_train_says_it_ended_and_so_does_running_it_again(cli, tmp_path):
    run = tmp_path / "run"
    args = ["lengen", "train", "--task", "UR", "--pe", "rope", "--out", run, *TINY, *EARLY]
    first = cli(*args, check=True)
    assert _status(run) == EARLY_STOPPED
    assert EARLY_STOPPED in DONE and EARLY_STOPPED in STATUSES
    steps = json.loads((run / rundir.SUMMARY_FILE).read_text(encoding="utf-8"))["step"]
    assert steps < 40  # it stopped before max_steps
    again = cli(*args, check=True)  # the run has ended: read back, not trained further
    assert json.loads((run / rundir.SUMMARY_FILE).read_text(encoding="utf-8"))["step"] == steps
    for proc in (first, again):
        assert AGAIN not in proc.stdout + proc.stderr
        assert f"done after {steps} steps" in proc.stdout
        assert "stopped early: no improvement" in proc.stdout and "does not continue it" in proc.stdout


def test_a_paused_lengen_train_is_told_to_run_again(cli, tmp_path):
    run = tmp_path / "run"
    proc = cli("lengen", "train", "--task", "UR", "--pe", "rope", "--out", run, *TINY,
                    "train.eval_every=10", "train.stop_at_step=4", check=True)
    assert _status(run) == PAUSED and PAUSED not in DONE
    assert f"{PAUSED} at step 4; {AGAIN}" in proc.stdout
    assert "done after" not in proc.stdout


def test_a_sweep_records_an_early_stopped_run_as_ended(tmp_path):
    settings = {"task.name": "UR", "model.position": "rope", "model.n_layers": 1, "model.d_model": 16,
                "model.n_heads": 2, "train.lr": 0.0, "train.warmup": 0, "task.train_lengths": "1-5",
                "eval.bins": ["1-5"], "eval.examples": 8, "eval.greedy": False, "train.batch_size": 4,
                "train.precision": "fp32", "train.progress": False, "train.threads": 1, "train.max_steps": 40,
                "train.eval_every": 2, "train.early_stop_patience": 1}
    log: list[str] = []
    rows = sweep(settings, {"train.seed": [0]}, tmp_path / "results", log=log.append)
    assert [r["status"] for r in rows] == [EARLY_STOPPED]
    assert not any("not recorded" in line for line in log)  # only a run that did not end goes unrecorded
