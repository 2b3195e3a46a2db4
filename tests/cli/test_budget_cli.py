"""`tinyformer train` with train.budget and train.target_loss on a tiny language model: a 2-second budget really
stops the run and writes summary.json and report.md (whose numbers are the summary's and metrics.jsonl's); a
target loss ends it at the evaluation that reaches it; a bad budget is one line and writes nothing."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from tinyformer.train import rundir

LR, MIN_LR = 3e-3, 3e-4  # the tiny runs' train.lr, and its default min_lr (lr / 10)


def card_rows(run: Path) -> dict[str, str]:
    """The rows of RUN/report.md's table, by name."""
    rows = re.findall(r"^\| ([^|]+?) \| (.*) \|$", (run / "report.md").read_text(), flags=re.M)
    return {name: value for name, value in rows if name.strip()}


@pytest.fixture(scope="module")
def budget_run(tiny_lm_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("budget") / "run"
    tiny_lm_run("train.budget=2s", "train.max_steps=1000000", "train.eval_every=0", "train.ckpt_every=0",
                "train.warmup=2", run_dir=run)
    return run


def test_a_budget_stops_the_run_after_the_step_that_spends_it(budget_run, records):
    summary = json.loads((budget_run / "summary.json").read_text())
    train = records(budget_run, "train")
    assert summary["status"] == "budget_spent" and summary["budget_s"] == 2.0
    assert summary["step"] == train[-1]["step"] < 1_000_000
    last_step_s = train[-1]["elapsed_s"] - train[-2]["elapsed_s"]
    assert train[-2]["elapsed_s"] < 2.0 <= train[-1]["elapsed_s"]  # stopped at the first step past the budget
    assert summary["elapsed_s"] == round(train[-1]["elapsed_s"], 3)
    assert summary["wall_s"] >= summary["elapsed_s"]
    evals = records(budget_run, "eval")
    assert [r["step"] for r in evals] == [summary["step"]]  # the stop is evaluated (eval_every=0: only there)
    assert summary["val_loss"] == evals[0]["val_loss"] and summary["val_bpb"] == evals[0]["val_bpb"]
    index = json.loads((budget_run / "checkpoints" / "index.json").read_text())
    assert index["latest"] == f"step-{summary['step']:08d}"
    # the rate decayed over the budget: what is left of the cosine at the last step is at most the last step's
    # share of the time after warmup (warmup: 2 steps)
    after_warmup = 2.0 - train[1]["elapsed_s"]
    left = 0.5 * (1 + math.cos(math.pi * (1 - last_step_s / after_warmup)))
    assert MIN_LR < train[-1]["lr"] <= MIN_LR + (LR - MIN_LR) * left + 1e-12


def test_the_report_card_holds_the_runs_numbers_and_config(budget_run, records):
    import torch

    summary = json.loads((budget_run / "summary.json").read_text())
    rows = card_rows(budget_run)
    assert rows["status"].startswith(f"budget_spent at step {summary['step']}")
    assert rows["parameters"] == f"{summary['params']:,}"
    assert rows["tokens trained"] == f"{summary['tokens']:,}" == f"{records(budget_run, 'train')[-1]['tokens']:,}"
    assert rows["tokens/s"] == f"{summary['tokens_per_s']:,.0f}"
    model = rundir.load_model(budget_run)  # MFU = tokens/s x FLOPs per token / train.peak_flops (1e12)
    assert summary["mfu"] == pytest.approx(summary["tokens_per_s"] * model.flops_per_token(16) / 1e12, rel=1e-9)
    assert rows["MFU"].startswith(f"{summary['mfu']:.2%}")
    assert rows["final val loss"] == f"{summary['val_loss']:.4f}"
    assert rows["final val bits per byte"] == f"{summary['val_bpb']:.4f}"
    assert rows["training time"].startswith(f"{summary['elapsed_s']:.2f} s")
    assert rows["wall time"].startswith(f"{summary['wall_s']:.2f} s")
    assert rows["budget"] == "2 s of training"
    assert rows["device, precision"].startswith("cpu, fp32")
    assert rows["torch"].startswith(f"{torch.__version__}, 1 thread(s)")  # train.threads=1
    assert rows["machine"]
    config = (budget_run / "report.md").read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(config) == yaml.safe_load((budget_run / "config.yaml").read_text())


def test_a_budgeted_run_resumed_goes_on_with_the_time_it_spent(train_lm, tmp_path, records):
    run = tmp_path / "run"
    train_lm(run, "train.budget=1s", "train.max_steps=1000000", "train.stop_at_step=5", "train.eval_every=0")
    paused = records(run, "train")[-1]
    assert json.loads((run / "summary.json").read_text())["status"] == "paused"
    train_lm(run, "train.budget=1s", "train.max_steps=1000000", "train.eval_every=0")
    train = records(run, "train")
    assert train[4] == paused and train[5]["elapsed_s"] > paused["elapsed_s"]  # the clock went on from the checkpoint
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "budget_spent" and train[-2]["elapsed_s"] < 1.0 <= summary["elapsed_s"]


def test_a_target_loss_stops_the_run_at_the_evaluation_that_reaches_it(train_lm, tmp_path, records):
    run = tmp_path / "run"
    out = train_lm(run, "train.target_loss=3.0", "train.eval_every=5", "train.max_steps=400").stdout
    summary = json.loads((run / "summary.json").read_text())
    first = next(r for r in records(run, "eval") if r["val_loss"] <= 3.0)
    assert records(run, "eval")[-1] == first  # no evaluation after the first that reached it
    assert summary["status"] == "target_reached" and summary["step"] == first["step"] < 400
    assert summary["target_reached_at_step"] == first["step"] and summary["target_reached"] is True
    assert summary["time_to_target_s"] == round(first["elapsed_s"], 3)
    assert f"target loss 3 reached at step {first['step']}" in out
    assert card_rows(run)["target loss"].startswith(f"3: reached at step {first['step']} after")


def test_a_target_loss_never_reached_is_said_in_the_summary_and_the_last_line(train_lm, tmp_path):
    run = tmp_path / "run"
    out = train_lm(run, "train.target_loss=0.01", "train.eval_every=3", "train.max_steps=6").stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 6
    assert (summary["target_reached"], summary["target_reached_at_step"], summary["time_to_target_s"]) == (
        False, None, None)
    assert "target loss 0.01 not reached" in out.splitlines()[-1]
    assert card_rows(run)["target loss"] == "0.01: not reached"


@pytest.mark.parametrize("value", ["5min", "-2s", "0", "two"])
def test_a_bad_budget_is_one_line_and_writes_no_run_directory(train_lm, one_line_error, tmp_path, value):
    run = tmp_path / "run"
    one_line_error(train_lm(run, f"train.budget={value}", check=False), "train.budget", "90 (seconds), 30s, 5m")
    assert not run.exists()


def test_a_target_loss_needs_a_validation_file_and_a_language_model(train_lm, cli, tiny_task_run, one_line_error,
                                                                    tmp_path):
    run = tmp_path / "run"
    one_line_error(train_lm(run, "train.target_loss=1", "data.val=null", check=False), "train.target_loss",
                   "data.val")
    assert not run.exists()
    out = tmp_path / "task"
    one_line_error(cli(*tiny_task_run.args(out, "train.target_loss=0.5")), "train.target_loss", "eval.stop_accuracy")
    assert not out.exists()


def test_a_budget_stops_two_ddp_processes_together(cli_process, tiny_lm_run, tmp_path, records):
    """Under torchrun each process times its own steps; they agree on the training time (the slowest one's)
    before each stop decision, so both stop after the same step (a process that stopped alone would leave the
    other waiting in its next all-reduce, and the command would time out) and the run ends like one process's."""
    run = tmp_path / "two"
    cli_process(*tiny_lm_run.args(run, "train.budget=2s", "train.max_steps=1000000", "train.eval_every=0",
                                  "train.ckpt_every=0", "train.warmup=2", "train.batch_size=4",
                                  "train.parallel=ddp"), torchrun=True, check=True, timeout=120)
    summary = json.loads((run / "summary.json").read_text())
    train = records(run, "train")
    assert summary["status"] == "budget_spent" and summary["world_size"] == 2
    assert summary["step"] == train[-1]["step"] < 1_000_000
    assert train[-2]["elapsed_s"] < 2.0 <= train[-1]["elapsed_s"]
    assert [r["step"] for r in records(run, "eval")] == [summary["step"]]
    assert MIN_LR < train[-1]["lr"] < 0.5 * LR  # the schedule followed the budget toward its end
