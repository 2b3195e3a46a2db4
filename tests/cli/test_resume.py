"""Exact resume through `tinyformer train`: a run stopped any way (train.stop_at_step, a signal, a kill during
its evaluation, a full disk, the torn files a kill leaves, an extension of a finished run) and started again
equals the run that never stopped, bit for bit; a resume that would change the result is refused in one line
and touches nothing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

COMMON = ["train.max_steps=8", "train.eval_every=4", "train.ckpt_every=2", "train.keep_last=10"]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


@pytest.fixture(scope="module")
def straight(tiny_lm_run) -> Path:
    """The uninterrupted 8-step run every stopped-and-resumed run must equal bit for bit."""
    return tiny_lm_run(*COMMON)


@pytest.fixture
def equals_straight(straight, records):
    """equals_straight(run, after=0): the straight run's records past step `after` (all but measured times)
    and its final weights, exactly."""

    def check(run: Path, after: int = 0) -> None:
        def later(r):
            return [x for x in records(r, timing=False) if x["step"] > after]

        assert later(run) == later(straight)
        mine, theirs = weights(run, 8), weights(straight, 8)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    return check


# ---------------------------------------------------------------- stopped on purpose


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_a_run_stopped_half_way_and_resumed_equals_the_straight_run(train_lm, tmp_path, records, sampling):
    common = [*COMMON, f"data.sampling={sampling}"]
    train_lm(tmp_path / "straight", *common)
    train_lm(tmp_path / "split", *common, "train.stop_at_step=4")
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["status"] == "paused"
    train_lm(tmp_path / "split", *common, "--resume")
    assert [r["step"] for r in records(tmp_path / "split", "train")] == list(range(1, 9))
    assert records(tmp_path / "split", timing=False) == records(tmp_path / "straight", timing=False)
    assert all(torch.equal(a, b) for a, b in zip(weights(tmp_path / "split", 8).values(),
                                                 weights(tmp_path / "straight", 8).values()))


def test_records_carry_training_time_that_a_resume_continues(cli, train_lm, tmp_path, records):
    from tinyformer.train.plot import draw_runs

    run, common = tmp_path / "run", ["train.max_steps=6", "train.eval_every=3"]
    train_lm(run, *common, "train.stop_at_step=3")
    first = records(run, "train")
    train_lm(run, *common, "--resume")
    trained, evals = records(run, "train"), records(run, "eval")
    times = [r["elapsed_s"] for r in trained]
    assert [r["step"] for r in trained] == list(range(1, 7)) and trained[:3] == first
    assert times[0] > 0 and all(a < b for a, b in zip(times, times[1:]))
    # the resumed process started its clock at the saved time, not at 0: step 4 comes after step 3's total
    assert times[3] > times[2] > times[3] - times[2]
    # evaluation time is excluded: an evaluation reads the clock of its step's training record
    assert [e["elapsed_s"] for e in evals] == [times[2], times[5]]
    assert json.loads((run / "summary.json").read_text())["elapsed_s"] == round(times[-1], 3)

    out = tmp_path / "time.png"
    cli("plot", run, "--x", "time", "--out", out, check=True)
    assert out.read_bytes()[:4] == b"\x89PNG"
    train_axes = draw_runs([run], x="time").axes[0]
    assert train_axes.get_xlabel() == "training time (s, evaluation excluded)"
    assert train_axes.get_lines()[0].get_xdata().tolist() == times


def test_a_finished_run_extended_trains_on_at_the_schedules_final_rate_and_resumes_exactly(train_lm, tmp_path,
                                                                                          records):
    base = ["train.eval_every=4", "train.ckpt_every=2", "train.keep_last=10"]
    runs = {k: tmp_path / k for k in ("straight", "paused")}
    for run in runs.values():
        train_lm(run, *base, "train.max_steps=4")
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    proc = train_lm(runs["straight"], *base, "train.max_steps=8", "--resume")
    summary = json.loads((runs["straight"] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 8, proc.stdout + proc.stderr
    assert "keeps its 4-step horizon" in proc.stdout
    lrs = {r["step"]: r["lr"] for r in records(runs["straight"], "train")}
    assert sorted(lrs) == list(range(1, 9))
    assert [lrs[s] for s in range(5, 9)] == pytest.approx([3e-4] * 4)  # train.lr=3e-3 -> min_lr lr/10
    # the extension paused half way and resumed gives the same weights and records as the one in one go
    train_lm(runs["paused"], *base, "train.max_steps=8", "train.stop_at_step=6")
    assert json.loads((runs["paused"] / "summary.json").read_text())["status"] == "paused"
    train_lm(runs["paused"], *base, "train.max_steps=8")
    assert records(runs["paused"], timing=False) == records(runs["straight"], timing=False)
    assert all(torch.equal(a, b) for a, b in zip(weights(runs["paused"], 8).values(),
                                                 weights(runs["straight"], 8).values()))


# ---------------------------------------------------------------- stopped by a signal or a kill


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_exits_128_plus_signal_and_resumes_bit_exactly(train_lm, tmp_path, equals_straight,
                                                                          monkeypatch, sig):
    from tinyformer.train.trainer import Trainer

    original = Trainer.train_step

    def step_then_signal(self, lr):
        out = original(self, lr)
        if self.step == 2:  # during step 3: the run finishes it, saves step 3 and stops
            os.kill(os.getpid(), sig)
        return out

    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    proc = train_lm(run, *COMMON, check=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert proc.returncode == 128 + sig, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] == 3 and summary["signal"] == sig.name
    assert (run / "checkpoints" / "step-00000003" / "trainer_state.json").is_file()
    assert train_lm(run, *COMMON).returncode == 0
    equals_straight(run)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_gives_up_at_once_with_that_signals_exit_code(train_lm, tmp_path, monkeypatch, sig):
    """A scheduler that sends SIGTERM twice must still see 143 (not 130, the code of a Ctrl-C)."""
    from tinyformer.train.trainer import Trainer

    original = Trainer.train_step

    def step_then_two_signals(self, lr):
        out = original(self, lr)
        if self.step == 2:
            os.kill(os.getpid(), sig)
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_two_signals)
    proc = train_lm(tmp_path / "run", *COMMON, check=False)
    assert proc.returncode == 128 + sig, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"tinyformer: interrupted ({sig.name})"


def test_a_run_stopped_during_its_evaluation_evaluates_on_resume(train_lm, tmp_path, straight, equals_straight,
                                                                 monkeypatch):
    from tinyformer.train.evaluation import LossEvaluation

    original = LossEvaluation.run
    calls = []

    def killed_at_step_4(self, module, runtime):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # a second Ctrl-C (or a kill) in the middle of the evaluation of step 4
        return original(self, module, runtime)

    run = tmp_path / "run"
    monkeypatch.setattr(LossEvaluation, "run", killed_at_step_4)
    assert train_lm(run, *COMMON, check=False).returncode == 130
    state = json.loads((run / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())["state"]
    assert state["eval_pending"] is True  # the step was saved before its evaluation began
    train_lm(run, *COMMON)
    equals_straight(run)
    assert json.loads((run / "checkpoints" / "index.json").read_text()) == \
        json.loads((straight / "checkpoints" / "index.json").read_text())


@pytest.mark.slow
def test_sigterm_from_outside_saves_a_checkpoint_and_exits_143(cli_process, tiny_lm_run, tmp_path, records):
    """The same as test_an_interrupted_run_exits_128_plus_signal_and_resumes_bit_exactly, from another process."""
    import time

    run = tmp_path / "run"
    proc = cli_process.popen(*tiny_lm_run.args(run, "train.max_steps=100000", "train.eval_every=0",
                                               "train.ckpt_every=0"))
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(records(run, "train")) >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # 143: a scheduler tells it from a finished run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] >= 3 and summary["signal"] == "SIGTERM"
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["latest"] == f"step-{summary['step']:08d}"
    state = json.loads((run / "checkpoints" / index["latest"] / "trainer_state.json").read_text())
    assert state["state"]["step"] == summary["step"]


# ---------------------------------------------------------------- what a kill or a full disk leaves


def test_a_torn_metrics_line_and_stray_temp_files_are_survived(train_lm, tmp_path, equals_straight):
    run = tmp_path / "run"
    train_lm(run, *COMMON, "train.stop_at_step=6")
    # what kills leave: a torn last metrics line (past the checkpoint), temp files of every atomic write
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 7, "tokens": 4')
    ckpts = run / "checkpoints"
    stray_dirs = [ckpts / ".step-00000008.k2j3.tmp", ckpts / ".step-00000004.old"]
    stray_files = [ckpts / ".index.json.a1b2.tmp", run / ".summary.json.x9.tmp", run / ".metrics.jsonl.q.tmp",
                   run / ".config.yaml.z.tmp"]
    for path in stray_dirs:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"partial")
    for path in stray_files:
        path.write_text("partial")
    train_lm(run, *COMMON)
    assert not any(p.exists() for p in stray_dirs + stray_files)
    equals_straight(run)  # the torn line is gone and the rest is exact


def test_resume_falls_back_to_the_newest_complete_checkpoint_and_says_so(train_lm, tmp_path, straight,
                                                                         equals_straight):
    run = tmp_path / "run"
    train_lm(run, *COMMON, "train.stop_at_step=6")
    (run / "checkpoints" / "step-00000006" / "trainer_state.safetensors").unlink()  # step 6 incomplete
    proc = train_lm(run, *COMMON)
    assert "index.json names step-00000006" in proc.stderr and "step-00000004" in proc.stderr
    equals_straight(run)
    # index.json gone as well: the same fallback, and the index is rebuilt with the remembered best
    run2 = tmp_path / "run2"
    train_lm(run2, *COMMON, "train.stop_at_step=6")
    (run2 / "checkpoints" / "index.json").unlink()
    proc = train_lm(run2, *COMMON)
    assert "index.json is missing" in proc.stderr and "step-00000006" in proc.stderr
    equals_straight(run2)
    index = json.loads((run2 / "checkpoints" / "index.json").read_text())
    assert index == json.loads((straight / "checkpoints" / "index.json").read_text())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a real ENOSPC on every write)")
def test_a_full_disk_is_one_line_naming_the_file_and_the_run_resumes_exactly(train_lm, tmp_path, one_line_error,
                                                                             equals_straight):
    """metrics.jsonl is a link to /dev/full, where every write fails with a real ENOSPC: the run stops at
    step 4 (its first record; step 2's checkpoint is saved), and resumes exactly once space is back."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    one_line_error(train_lm(run, *COMMON, "train.log_every=4", check=False),
                   f"no space left on the device (or the disk quota is used up) while writing {run / 'metrics.jsonl'}",
                   "free some space, then run the same command again")
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002"]
    (run / "metrics.jsonl").unlink()  # space is back
    train_lm(run, *COMMON)
    equals_straight(run, after=2)


# ---------------------------------------------------------------- a resume that would change the result


CHANGES = ["train.lr=1e-3", "train.min_lr=1e-5", "train.schedule=linear", "train.warmup=3", "train.seed=7",
           "train.batch_size=8", "train.weight_decay=0", "train.grad_clip=0.5", "data.sampling=sequential",
           "model.dropout=0.0", "train.beta1=0.8", "model.n_layers=3"]


@pytest.fixture(scope="module")
def paused(tiny_lm_run) -> Path:
    """A run paused at step 2 of 8 (copied by each test that changes it)."""
    return tiny_lm_run(*COMMON, "train.stop_at_step=2")


@pytest.mark.parametrize("change", CHANGES)
def test_a_resume_that_changes_the_result_is_refused_naming_the_setting(train_lm, paused, one_line_error, change):
    before = tree(paused)
    one_line_error(train_lm(paused, *COMMON, change, check=False), "cannot resume", change.split("=")[0])
    assert tree(paused) == before


def test_a_resume_on_other_data_is_refused_but_cadence_and_length_may_change(train_lm, tmp_path, tiny_corpus,
                                                                            one_line_error):
    run = tmp_path / "run"
    train_lm(run, *COMMON, "train.stop_at_step=2")
    other = tiny_corpus().token_file("other-val", "a different text altogether. " * 200)
    one_line_error(train_lm(run, *COMMON, f"data.val={other}", check=False), "data.val")
    train_lm(run, "train.max_steps=10", "train.eval_every=5", "train.ckpt_every=0", "train.keep_last=3",
             "train.threads=2", "train.device=cpu", "train.progress=true", "train.log_every=2")
    assert json.loads((run / "summary.json").read_text())["step"] == 10


def test_a_resume_from_a_corrupt_state_or_of_nothing_is_refused(train_lm, tmp_path, one_line_error):
    run = tmp_path / "run"
    train_lm(run, "train.max_steps=2", "train.eval_every=0")
    (run / "checkpoints" / "step-00000002" / "trainer_state.json").write_bytes(b"truncated")
    one_line_error(train_lm(run, "train.max_steps=4", "--resume", check=False), "corrupt")
    one_line_error(train_lm(tmp_path / "empty", "--resume", check=False), "nothing to resume")
    assert not (tmp_path / "empty").exists()
