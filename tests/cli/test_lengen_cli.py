"""`tinyformer lengen` (train, sweep, best, report) and `tinyformer demo` end to end: reports from a results tree,
bad input in one line, the demo's table, a signal that stops a multi-run command and the same command resuming."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tinyformer.lab.sweep import read_rows, sweep


def test_cli_report_from_a_results_tree(tmp_path: Path, cli, fake_task_train):
    calls: list = []
    sweep({"task.name": "UL", "model.position": "learned"}, {"model.n_layers": [2, 4]}, tmp_path,
          train=fake_task_train(calls), log=lambda s: None)
    proc = cli("lengen", "report", "--results", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| UL | ape | 1 | 1.000 | 0.450 | 0.225 | 1.000 | 0.996 |" in proc.stdout
    assert (tmp_path / "report.csv").exists() and (tmp_path / "heatmap.png").exists()

def test_report_says_which_bins_the_published_table_covers_when_it_shows_none(tmp_path: Path, cli):
    def short_bins(cfg, run_dir: Path) -> dict:  # a CPU-sized sweep: bins the published table does not have
        return {"steps": 10, "stopped_early": False, "train_seconds": 0.1,
                "accuracy": {"1-10": 1.0, "11-20": 0.5}}

    sweep({"task.name": "UR", "model.position": "alibi"}, {"model.n_layers": [2]}, tmp_path, train=short_bins,
          log=lambda s: None)
    sweep({"task.name": "UR", "model.position": "rope"}, {"model.n_layers": [2]}, tmp_path, train=short_bins,
          log=lambda s: None)
    proc = cli("lengen", "report", "--results", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "published" not in proc.stdout.splitlines()[0]  # no published column: and the reason is given
    for text in (proc.stdout, (tmp_path / "report.md").read_text()):
        assert "cover only the bins 51-100, 101-150" in text
        assert "none of this report's bins (1-10, 11-20) is among them" in text
        assert "none for UR/alibi: the reference study published no such row" in text

@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--task", "UX", "--pe", "rope"], "unknown task 'UX'; valid tasks: UF, UB, NF, NB, UL, UR, NLFirst"),
        (["train", "--task", "UR", "--pe", "rotary"], "unknown position scheme 'rotary'.*valid schemes: ape, learned"),
        (["train", "--task", "UF", "--pe", "ape", "model.n_positions=120"],
         "bin 101-150 of task UF needs 302 learned positions but model.n_positions=120"),
        (["train", "--task", "UL", "--pe", "rope", "eval.bins=[1-3]"], "task UL cannot build examples"),
        (["train", "--task", "UL", "--pe", "rope", "model.n_layers=two"], "model.n_layers: expected an integer"),
        (["train", "--task", "UL", "model.d_modle=64"], "unknown config key 'model.d_modle'; did you mean 'd_model'"),
        (["train", "--task", "UL", "train.lrr=1"], "unknown config key 'train.lrr'; did you mean 'lr'"),
        (["train", "--task", "UL", "task.nmae=UR"], "unknown config key 'task.name'|unknown config key 'task.nmae'"),
        (["train", "--task", "UL", "eval.bin=[1-3]"], "unknown config key 'eval.bin'; did you mean 'bins'"),
        (["train", "--task", "UL", "trian.lr=1"], "unknown config key 'trian'; did you mean 'train'"),
        (["sweep", "--task", "UR", "--pe", "rope", "--grid", "GRID"], "unknown config key 'model.hedas'.*'n_heads'"),
        (["sweep", "--task", "UR", "--pe", "rope", "--grid", "MISSING"], "does not exist"),
        (["best", "--task", "UR", "--pe", "rope", "--results", "RES"], "no sweep results"),
        (["report", "--results", "RES"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_error_and_leaves_nothing(cli, tmp_path: Path, one_line_error, args, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text("model.hedas: [4, 8]\n")
    args = [str({"GRID": grid, "MISSING": tmp_path / "nope.yaml", "RES": tmp_path / "res"}.get(a, a)) for a in args]
    extra = ["--out", str(tmp_path / "out")] if args[0] == "train" else []
    assert re.search(message, one_line_error(cli("lengen", *args, *extra)))
    assert not (tmp_path / "out").exists() and not (tmp_path / "res").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--task", "add:base=20", "--pe", "abacus"], "between 2 and 16"),
        (["--task", "add", "--pe", "abacus", "task.train_lengths=1-10", "eval.bins=[9-3]"], "not valid"),
        (["--task", "add", "--pe", "abacus", "task.train_lengths=1-10", "eval.bins=[1-10,11-40]",
          "model.n_positions=20"], "model.n_positions"),
        (["--task", "add", "--pe", "ape", "task.train_lengths=1-10", "eval.bins=[1-40]",
          "model.n_positions=64"], "model.n_positions"),
        (["--task", "ur", "--pe", "rope"], "unknown task 'ur'; did you mean 'UR'?"),
    ],
)
def test_a_bad_task_or_its_bins_is_one_line_and_writes_nothing(cli, tmp_path, one_line_error, args, message):
    out = tmp_path / "run"
    one_line_error(cli("lengen", "train", *args, "--steps", "1", "train.device=cpu", "--out", out), message)
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--scale", "huge"], "unknown scale 'huge'; use --scale cpu or --scale full"),
    (["--schemes", "alibi"], "the published protocol defines no scheme 'alibi'; it has: ape, rope; our extra "
     "columns (presets/published_extra.yaml): rope-rand, alibi-rand, fire, coupled-relative"),
    (["--rows", "XX"], "the published table has no row 'XX'"),
    (["train.max_steps=7"], "holds a reproduction made with another overrides"),
])
def test_reproduce_refuses_bad_input_in_one_line(cli, tmp_path, one_line_error, args, message):
    from tinyformer.lab import reproduce

    results = tmp_path / "res"
    results.mkdir()
    (results / "protocol.json").write_text(json.dumps(
        {"protocol": "published", "scale": "cpu", "overrides": {"train.max_steps": 5},
         "preset_sha256": reproduce.hashlib.sha256(json.dumps(reproduce.load_protocol("cpu"), sort_keys=True)
                                                   .encode()).hexdigest()}))
    one_line_error(cli("lengen", "reproduce", "--results", results, "--workers", "0", *args), message)
    assert sorted(p.name for p in results.iterdir()) == ["protocol.json"]


def test_lengen_train_after_an_early_stop_says_the_run_ended(cli, tiny_task_run, tmp_path):
    proc = cli(*tiny_task_run.args(tmp_path / "run", "train.max_steps=20", "train.eval_every=1", "train.lr=0",
                                   "train.early_stop_patience=1", "eval.examples=4", "eval.bins=[1-8]",
                                   "train.batch_size=4"), check=True)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "early_stopped"
    assert "again to continue" not in proc.stdout and "stopped early" in proc.stdout


def check_demo_output(out: str, where: Path, tasks, schemes) -> str:
    """The demo's table (one line per task and scheme), its heatmap and CSV; returns the table."""
    table = out[out.index("exact-match accuracy per length bin"):]
    for task in tasks:
        for pe in schemes:
            assert re.search(rf"^{task}\s+{pe}\s+[01]\.\d{{3}}\s+[01]\.\d{{3}}\s+[01]\.\d{{3}}\s+\d+$", table, re.M), table
    heatmap = where / "heatmap.png"
    assert f"heatmap: {heatmap}" in out and heatmap.read_bytes()[:4] == b"\x89PNG"
    csv_rows = list(csv.DictReader((where / "report.csv").open()))
    assert {(r["task"], r["scheme"]) for r in csv_rows} == {(t, p) for t in tasks for p in schemes}
    return table.split("\nfinished in")[0]


DEMO = ["--steps-scale", "0.005", "--eval-examples", "16"]


def test_demo_prints_the_table_and_says_where_the_heatmap_went(cli, tmp_path: Path, monkeypatch):
    from tinyformer.verbs import demo

    assert len(demo.DEMO_TASKS) >= 2 and len(demo.DEMO_SCHEMES) >= 3
    # a quarter of the runs, one task and two schemes (all of them: the slow test below)
    monkeypatch.setattr(demo, "DEMO_TASKS", demo.DEMO_TASKS[:1])
    monkeypatch.setattr(demo, "DEMO_SCHEMES", demo.DEMO_SCHEMES[:2])
    proc = cli("demo", "--out", tmp_path / "demo", *DEMO, "--workers", "0", check=True)
    table = check_demo_output(proc.stdout, tmp_path / "demo", demo.DEMO_TASKS, demo.DEMO_SCHEMES)
    # started again: the finished runs are read back and the table is the same
    again = cli("demo", "--out", tmp_path / "demo", *DEMO, "--workers", "0", check=True)
    assert check_demo_output(again.stdout, tmp_path / "demo", demo.DEMO_TASKS, demo.DEMO_SCHEMES) == table


@pytest.mark.slow
def test_the_whole_demo_prints_the_same_table_from_one_process_or_two_workers(cli, tmp_path: Path):
    """Every run of the demo, one after another and on two worker processes (the default run keeps
    test_demo_prints_the_table_and_says_where_the_heatmap_went, on half the schemes, in one process)."""
    from tinyformer.verbs.demo import DEMO_SCHEMES, DEMO_TASKS

    tables = [check_demo_output(cli("demo", "--out", tmp_path / name, *DEMO, "--workers", workers, check=True).stdout,
                                tmp_path / name, DEMO_TASKS, DEMO_SCHEMES) for name, workers in (("one", "0"), ("two", "2"))]
    assert tables[0] == tables[1]


# ---------------------------------------------------------------- a signal stops a multi-run command

SIGNAL_RUNS = ["--task", "UR", "--pe", "rope", "model.n_heads=2", "model.d_model=16", "train.max_steps=150",
               "train.eval_every=0", "eval.examples=24", "task.train_lengths=1-8", "eval.bins=[1-8,9-16]",
               "train.batch_size=8", "train.log_every=1", "train.precision=fp32", "train.device=cpu",
               "eval.greedy=false", "train.progress=true", "train.peak_flops=1e12"]


def training_runs(results: Path) -> list[Path]:
    """Run directories under RESULTS/UR/runs/rope that have logged a training step."""
    return [p.parent for p in sorted(results.glob("UR/runs/rope/*/metrics.jsonl")) if '"kind": "train"' in p.read_text()]


def signal_when_training(results: Path, signum: int, skip: int = 0) -> threading.Thread:
    """Send `signum` to this process once more than `skip` runs are training (a real signal: the trainer's
    handler catches it in the main thread, as from a terminal)."""
    def wait_and_signal():
        deadline = time.time() + 60
        while time.time() < deadline and len(training_runs(results)) <= skip:
            time.sleep(0.02)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=wait_and_signal, daemon=True)
    thread.start()
    return thread

def test_ctrl_c_stops_a_sweep_once_its_run_saved_and_the_same_command_resumes(tmp_path: Path, cli, cli_process,
                                                                               records):
    results, grid = tmp_path / "res", tmp_path / "grid.yaml"
    grid.write_text("model.n_layers: [1, 2]\n")
    args = ["lengen", "sweep", "--grid", str(grid), "--results", str(results), *SIGNAL_RUNS]
    # worker processes (the default executor): Ctrl-C reaches the whole process group of the terminal
    proc = cli_process.popen(*args, "--workers", "1", start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not training_runs(results):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    runs = list((results / "UR" / "runs" / "rope").iterdir())
    assert len(runs) == 1, "the next combination must not start after Ctrl-C"
    stopped = json.loads((runs[0] / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGINT" and 0 < stopped["step"] < 150
    assert f"stopped by SIGINT at step {stopped['step']}; checkpoint saved" in out
    assert not (results / "UR" / "summary-rope.jsonl").exists()
    # the same command again (here, in this process): the interrupted run resumes from its checkpoint
    again = cli(*args, "--workers", "0", check=True)
    assert f"resumed from {runs[0] / 'checkpoints'}" in again.stdout and f"at step {stopped['step']}" in again.stdout
    steps = [r["step"] for r in records(runs[0], "train")]
    assert steps == list(range(1, 151))
    assert len(read_rows(results / "UR" / "summary-rope.jsonl")) == 2

    # `best` over two more seeds: SIGTERM during the first stops it (143), the second seed never starts
    signal_when_training(results, signal.SIGTERM, skip=2)
    proc = cli("lengen", "best", "--task", "UR", "--pe", "rope", "--seeds", "1,2", "--results", results,
               "--workers", "0")
    assert proc.returncode == 143, proc.stderr
    assert len(list((results / "UR" / "runs" / "rope").iterdir())) == 3
    assert not (results / "UR" / "best-rope.json").exists()
