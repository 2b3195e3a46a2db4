"""train.budget and train.target_loss (tinyformer.train.budget) with a fake clock: the budget stops the run at
its time, the schedule follows it to its minimum, a resumed run stops at the same total; the budget's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_records

from tinyformer.data.tokenfile import write_token_file
from tinyformer.errors import TinyformerError
from tinyformer.lm.sampler import TokenFileBatches, eval_batches
from tinyformer.model import ModelConfig, Transformer
from tinyformer.train.budget import BudgetSchedule, Limits
from tinyformer.train.config import TrainConfig, load_run_config, parse_budget
from tinyformer.train.evaluation import LossEvaluation
from tinyformer.train.runtime import setup_runtime
from tinyformer.train.schedule import lr_at
from tinyformer.train.start import resume_point
from tinyformer.train.status import BUDGET_SPENT, FINISHED, PAUSED, TARGET_REACHED
from tinyformer.train.trainer import Trainer
from tinyformer.train.trainer_state import TrainState

MODEL = ModelConfig(vocab_size=64, n_layers=1, d_model=16, n_heads=2, max_seq_len=8, dropout=0.1)
LR, MIN_LR, WARMUP = 3e-3, 3e-4, 2


@pytest.mark.parametrize("text, seconds", [("90", 90.0), (90, 90.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0),
                                           ("1.5h", 5400.0), (" 2.5 S ", 2.5), (".5m", 30.0)])
def test_a_budget_is_read_as_seconds(text, seconds):
    assert parse_budget(text) == seconds
    assert load_run_config(None, [f"train.budget={text}"]).train.budget_s == seconds


@pytest.mark.parametrize("text", ["5min", "-3s", "0", "0s", "abc", "1d", "", "3 h 2m", "inf"])
def test_a_bad_budget_is_a_one_line_error_naming_the_format(text):
    with pytest.raises(TinyformerError) as err:
        load_run_config(None, [f"train.budget={text}"])
    message = str(err.value)
    assert "\n" not in message and "train.budget" in message and "30s, 5m" in message


def test_a_negative_target_loss_is_refused():
    with pytest.raises(TinyformerError, match="train.target_loss must be a number >= 0"):
        load_run_config(None, ["train.target_loss=-1"])


class FakeClock:
    """Time that passes only while a step draws its batch: `step_s` seconds per step."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 1000.0, step_s

    def __call__(self) -> float:
        return self.now


class ClockedBatches:
    """A real batch source whose every batch costs the fake clock one step's time."""

    def __init__(self, source: TokenFileBatches, clock: FakeClock) -> None:
        self.source, self.clock = source, clock

    def next_batch(self):
        self.clock.now += self.clock.step_s
        return self.source.next_batch()

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state) -> None:
        self.source.load_state_dict(state)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ids") / "ids.bin"
    write_token_file(path, np.random.default_rng(0).integers(0, 64, 2000), 64)
    return path


def trainer(run_dir: Path, token_file: Path, clock: FakeClock, resume=None, **train) -> Trainer:
    cfg = TrainConfig(**{"device": "cpu", "precision": "fp32", "batch_size": 4, "lr": LR, "min_lr": MIN_LR,
                         "warmup": WARMUP, "max_steps": 1000, "seed": 3, "progress": False, "log_every": 1,
                         "eval_every": 0, "peak_flops": 1e12, "sample_tokens": 0, **train})
    torch.manual_seed(0)
    model = Transformer(MODEL)
    torch.manual_seed(1)
    source = ClockedBatches(TokenFileBatches(token_file, 4, 8, seed=3), clock)
    evaluation = LossEvaluation(lambda: eval_batches(token_file, 4, 8, max_tokens=200, seed=3))
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(model, cfg, run_dir, source, setup_runtime(cfg), evaluation=evaluation, model_config={},
                   seq_len=8, settings={"train.seed": 3}, resume=resume, clock=clock)


def step_schedule(steps: int) -> list[float]:
    """The rates of a run of `steps` steps scheduled by steps alone (train.max_steps=steps)."""
    return [lr_at(k, schedule="cosine", lr=LR, min_lr=MIN_LR, warmup=WARMUP, total=steps) for k in range(steps)]


def test_the_budget_stops_the_run_at_its_time_with_the_rate_decayed_to_its_minimum(tmp_path, token_file):
    run = trainer(tmp_path / "run", token_file, FakeClock(0.25), budget="2.5s")  # 10 steps of 0.25 s
    summary = run.fit()
    assert summary["status"] == BUDGET_SPENT and summary["step"] == 10 and summary["elapsed_s"] == 2.5
    assert summary["budget_s"] == 2.5
    train = read_records(run.run_dir, "train")
    lrs = [r["lr"] for r in train]
    # steps of equal length: the rates of a 10-step schedule by steps, so the last is one step from the minimum
    assert lrs == pytest.approx(step_schedule(10), rel=1e-12, abs=0)
    assert lrs[-1] > MIN_LR and lrs[-1] - MIN_LR <= lrs[-2] - lrs[-1]
    evals = read_records(run.run_dir, "eval")
    assert [r["step"] for r in evals] == [10] and summary["val_loss"] == evals[0]["val_loss"]  # evaluated at the stop
    assert (run.run_dir / "checkpoints" / "step-00000010").is_dir()
    assert (run.run_dir / "report.md").is_file()


def test_max_steps_caps_a_budget_and_the_rate_still_reaches_its_minimum(tmp_path, token_file):
    run = trainer(tmp_path / "run", token_file, FakeClock(0.25), budget="100s", max_steps=6)
    summary = run.fit()
    assert summary["status"] == FINISHED and summary["step"] == 6 and summary["elapsed_s"] == 1.5
    assert [r["lr"] for r in read_records(run.run_dir, "train")] == pytest.approx(step_schedule(6), rel=1e-12, abs=0)


def test_uneven_step_times_still_end_within_one_step_of_the_minimum():
    state = TrainState()
    schedule = BudgetSchedule("linear", LR, MIN_LR, WARMUP, 10_000, budget_s=10.0, state=state)
    rng = np.random.default_rng(0)
    lrs, times = [], []
    while state.elapsed < 10.0:
        lrs.append(schedule.lr(state.step))
        times.append(float(rng.uniform(0.05, 0.4)))
        state.advance(1, 1, times[-1])
    decay = lrs[WARMUP:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # never rises again
    # what is left of the decay at the last step is at most the last step's share of the time after warmup
    start = sum(times[:WARMUP])
    assert 0 < (lrs[-1] - MIN_LR) / (LR - MIN_LR) <= times[-1] / (10.0 - start) + 1e-12


def test_a_resumed_run_keeps_the_time_spent_and_stops_at_the_same_total(tmp_path, token_file):
    straight = trainer(tmp_path / "a", token_file, FakeClock(0.25), budget="2.5s")
    assert straight.fit()["step"] == 10

    first = trainer(tmp_path / "b", token_file, FakeClock(0.25), budget="2.5s", stop_at_step=4)
    assert first.fit()["status"] == PAUSED and first.state.elapsed == 1.0
    resume = resume_point(tmp_path / "b", "must", {"train.seed": 3})
    second = trainer(tmp_path / "b", token_file, FakeClock(0.25), resume=resume, budget="2.5s")
    assert second.state.elapsed == 1.0  # the time spent, from the checkpoint
    summary = second.fit()
    assert summary["status"] == BUDGET_SPENT and summary["step"] == 10 and summary["elapsed_s"] == 2.5
    same = [{k: r[k] for k in ("step", "lr", "train_loss", "elapsed_s")} for r in read_records(tmp_path / "b", "train")]
    assert same == [{k: r[k] for k in ("step", "lr", "train_loss", "elapsed_s")}
                    for r in read_records(tmp_path / "a", "train")]  # the same clock: the same run
    for a, b in zip(straight.raw.state_dict().values(), second.raw.state_dict().values()):
        assert torch.equal(a, b)

    # resumed on a machine twice as slow: the 1.5 s left hold 3 steps, not 6
    slow_first = trainer(tmp_path / "c", token_file, FakeClock(0.25), budget="2.5s", stop_at_step=4)
    slow_first.fit()
    resume = resume_point(tmp_path / "c", "must", {"train.seed": 3})
    slow = trainer(tmp_path / "c", token_file, FakeClock(0.5), resume=resume, budget="2.5s").fit()
    assert slow["status"] == BUDGET_SPENT and slow["step"] == 7 and slow["elapsed_s"] == 2.5


def test_the_target_loss_is_reached_at_or_below_it_and_recorded_with_its_step_and_time():
    state = TrainState(step=7, elapsed=1.25)
    limits = Limits(TrainConfig(target_loss=2.0), state)
    assert limits.status(None) is None and limits.status(2.01) is None  # not evaluated, or above it
    assert limits.status(2.0) == TARGET_REACHED and limits.status(1.5) == TARGET_REACHED
    assert Limits(TrainConfig(), state).status(0.0) is None  # no target, no budget: never
    reached = limits.summary(TARGET_REACHED)
    assert (reached["target_reached"], reached["target_reached_at_step"], reached["time_to_target_s"]) == (True, 7, 1.25)
    missed = limits.summary(FINISHED)
    assert (missed["target_reached"], missed["target_reached_at_step"], missed["time_to_target_s"]) == (False, None, None)
