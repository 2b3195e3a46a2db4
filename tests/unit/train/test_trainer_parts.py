"""The engine's parts one by one: the checkpointer's due-step rule, the evaluation cadence, the step meter's
rates and MFU, a start reading each token file's sidecar once, and the Stateful pieces giving a bit-exact
resume through the real checkpoint files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pseudo_english

from tinyformer.data.tokenfile import write_token_file
from tinyformer.errors import TinyformerError
from tinyformer.lm.sampler import TokenFileBatches
from tinyformer.model import ModelConfig, Transformer
from tinyformer.tokenizer import Tokenizer
from tinyformer.train import rundir
from tinyformer.train.checkpoint import Checkpointer
from tinyformer.train.config import TrainConfig
from tinyformer.train.distributed import DistInfo
from tinyformer.train.evaluation import Validator
from tinyformer.train.metrics import StepMeter
from tinyformer.train.runtime import setup_runtime
from tinyformer.train.schedule import Schedule
from tinyformer.train.start import resume_point
from tinyformer.train.trainer import Trainer
from tinyformer.train.trainer_state import RNGState, TrainState

MODEL = ModelConfig(vocab_size=64, n_layers=1, d_model=16, n_heads=2, max_seq_len=8, dropout=0.1)


class NeverRun:
    """An evaluation stand-in for the cadence tests (which never run it)."""

    score_name = "loss"


NEVER_RUN = NeverRun()


# ---------------------------------------------------------------- when a step is saved, when evaluated


def checkpointer(run_dir: Path, **train) -> Checkpointer:
    model = Transformer(ModelConfig(vocab_size=32, n_layers=1, d_model=8, n_heads=2, max_seq_len=4))
    return Checkpointer(run_dir, TrainConfig(**train), TrainState(), pieces={}, constants={"settings": {}},
                        model=lambda: model, info=DistInfo(), device=torch.device("cpu"))


def test_a_step_is_due_every_ckpt_every_steps_and_at_the_last_step(tmp_path):
    every_3 = checkpointer(tmp_path, ckpt_every=3)
    assert [s for s in range(1, 11) if every_3.due(s)] == [3, 6, 9]
    assert every_3.due(10, last_step=True) and every_3.due(7, last_step=True)
    never = checkpointer(tmp_path, ckpt_every=0)  # 0: only the last step (and whatever forces a save)
    assert not any(never.due(s) for s in range(1, 11)) and never.due(10, last_step=True)


def test_save_writes_only_a_due_or_forced_step_and_keeps_last_k_and_the_best(tmp_path):
    saver = checkpointer(tmp_path, ckpt_every=2, keep_last=1)
    written = [s for s in range(1, 6) if saver.save(s, force=s == 5)]
    assert written == [2, 4, 5]
    assert [p.name for p in rundir.step_dirs(tmp_path)] == ["step-00000005"]  # keep_last=1
    saver.train_state.step = 6
    saver.save(6, last_step=True)
    saver.record(6, 0.5)  # the evaluation of step 6: the best
    saver.save(7, force=True)
    saver.record(7, 0.9)
    index = rundir.read_index(tmp_path)
    assert index == {"latest": "step-00000007", "best": "step-00000006", "best_score": 0.5}
    assert [p.name for p in rundir.step_dirs(tmp_path)] == ["step-00000006", "step-00000007"]


def validator(evaluation=NEVER_RUN, **kw) -> Validator:
    return Validator(evaluation, TrainState(), **{"eval_every": 4, "max_steps": 10, "patience": 0, **kw})


def test_evaluation_is_due_every_eval_every_steps_and_at_max_steps():
    assert [s for s in range(1, 11) if validator().should_validate(s)] == [4, 8, 10]
    assert [s for s in range(1, 11) if validator(eval_every=0).should_validate(s)] == [10]
    assert not any(validator(evaluation=None).should_validate(s) for s in range(1, 11))


def test_the_best_score_and_early_stopping_after_patience_evaluations_without_improvement():
    v = validator(patience=2)
    for score in (3.0, 2.0, 2.5):
        v.record({"loss": score}, score)
    assert v.state.best_score == 2.0 and v.state.evals_without_improvement == 1 and not v.early_stopped
    v.record({"loss": 2.0}, 2.0)  # equal is no improvement
    assert v.early_stopped and v.last_metrics == {"loss": 2.0}


# ---------------------------------------------------------------- the step meter


def test_the_step_meter_against_a_hand_computation():
    meter = StepMeter(flops_per_token=600.0, world_size=2, peak_flops=1e6)
    meter.start()
    assert (meter.peak, meter.peak_source) == (1e6, "train.peak_flops")
    meter.add(tokens=1000, examples=8, seconds=0.5)
    meter.add(tokens=3000, examples=8, seconds=1.5)
    # 4000 tokens and 16 examples in 2 s: 2000 tokens/s, 8 examples/s; MFU = 2000 x 600 / (1e6 x 2) = 0.6
    assert meter.rates() == pytest.approx({"tokens_per_s": 2000.0, "examples_per_s": 8.0, "mfu": 0.6})
    meter.add(tokens=100, examples=1, seconds=0.25)  # the window starts over after each record
    assert meter.rates() == pytest.approx({"tokens_per_s": 400.0, "examples_per_s": 4.0, "mfu": 0.12})
    assert meter.rates() == {"tokens_per_s": 0.0, "examples_per_s": 0.0, "mfu": 0.0}  # nothing timed yet


def test_a_model_without_flops_per_token_has_no_mfu():
    meter = StepMeter(flops_per_token=None)
    meter.start()  # nothing to measure a ceiling for
    meter.add(tokens=10, examples=1, seconds=1.0)
    assert meter.peak is None and meter.peak_source == "model has no flops_per_token"
    assert meter.rates() == {"tokens_per_s": 10.0, "examples_per_s": 1.0}


# ---------------------------------------------------------------- a start reads each sidecar once


@pytest.fixture
def corpus(tmp_path) -> dict[str, Path]:
    tok = Tokenizer([], [])
    tok.save(tmp_path / "tok")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat"]
    text = "".join(" ".join(rng.choice(words, size=4)) + ".\n" for _ in range(300))
    ids = np.array(tok.encode(text))
    cut = int(len(ids) * 0.9)
    for name, part in (("train", ids[:cut]), ("val", ids[cut:])):
        write_token_file(tmp_path / f"{name}.bin", part, 256, tokenizer_fingerprint=tok.fingerprint, n_bytes=len(part))
    return {"train": tmp_path / "train.bin", "val": tmp_path / "val.bin", "tok": tmp_path / "tok"}


_opened: list[str] | None = None  # filled while a test counts (an audit hook cannot be removed)


def _count_opens(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, Path)):
        _opened.append(str(args[0]))


sys.addaudithook(_count_opens)


@pytest.mark.parametrize("sampling", ["random", "rows"])
def test_a_start_reads_each_token_files_sidecar_once(cli, tmp_path, tiny_corpus, sampling):
    global _opened
    corpus = tiny_corpus(pseudo_english().replace(". ", ".\n"))  # lines, for rows sampling
    args = ["train", f"run_dir={tmp_path / 'run'}", *corpus.args, f"data.sampling={sampling}", "model.n_layers=1", "model.d_model=16",
            "model.n_heads=2", "model.max_seq_len=32", "train.max_steps=4", "train.eval_every=2",
            "train.batch_size=4", "train.precision=fp32", "train.progress=false", "train.warmup=1"]
    _opened = []
    try:
        cli(*args, check=True)  # two evaluations, a sample each, several batches
        opened = list(_opened)
    finally:
        _opened = None
    sidecars = {name: sum(Path(p) == getattr(corpus, name).with_suffix(".json") for p in opened) for name in ("train", "val")}
    assert sidecars == {"train": 1, "val": 1}


# ---------------------------------------------------------------- Stateful pieces


def test_rng_state_round_trips():
    rng = RNGState(DistInfo())
    saved = rng.state_dict()
    first = (torch.rand(3), np.random.rand(), __import__("random").random())
    rng.load_state_dict(saved)
    again = (torch.rand(3), np.random.rand(), __import__("random").random())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


def test_train_state_and_schedule_round_trip_and_refuse_what_is_not_theirs():
    state = TrainState(step=7, tokens=700, examples=28, elapsed=1.5, best_score=0.25,
                       best_checkpoint="step-00000004", evals_without_improvement=1, status="finished")
    copy = TrainState()
    copy.load_state_dict(state.state_dict())
    assert copy == state
    with pytest.raises(ValueError, match="counters"):
        copy.load_state_dict({**state.state_dict(), "tokens": -1})
    with pytest.raises(ValueError, match="best checkpoint"):
        copy.load_state_dict({**state.state_dict(), "best_checkpoint": "../../etc"})
    done = Schedule("cosine", 1e-3, 1e-4, 2, horizon=10)
    extended = Schedule("cosine", 1e-3, 1e-4, 2, horizon=30)
    extended.load_state_dict(done.state_dict())
    extended.keep_horizon()  # a finished run extended goes on at the rate its schedule ended with
    assert extended.lr(20) == done.lr(10) == pytest.approx(1e-4)
    again = Schedule("cosine", 1e-3, 1e-4, 2, horizon=30)
    again.load_state_dict(extended.state_dict())  # kept: stays kept on the next resume
    assert again.horizon == 10 and again.kept


def trainer(run_dir: Path, token_file: Path, resume=None) -> Trainer:
    cfg = TrainConfig(device="cpu", precision="fp32", batch_size=4, lr=3e-3, warmup=1, max_steps=8, seed=3,
                      progress=False)
    torch.manual_seed(0)
    model = Transformer(MODEL)
    torch.manual_seed(1)
    source = TokenFileBatches(token_file, 4, 8, seed=3)
    return Trainer(model, cfg, run_dir, source, setup_runtime(cfg), model_config={}, seq_len=8,
                   settings={"train.seed": 3}, resume=resume)


def test_the_pieces_saved_and_loaded_through_a_checkpoint_resume_bit_exactly(tmp_path):
    token_file = tmp_path / "ids.bin"
    write_token_file(token_file, np.random.default_rng(0).integers(0, 64, 2000), 64)
    straight = trainer(tmp_path / "a", token_file)
    losses = [straight.train_step(straight.schedule.lr(s)) for s in range(6)]

    first = trainer(tmp_path / "b", token_file)
    for s in range(3):
        assert first.train_step(first.schedule.lr(s)) == losses[s]
        first.state.advance(32, 4, 0.0)
    first.checkpointer.save(3, force=True)
    torch.manual_seed(99)  # whatever ran between: the resume takes its RNG from the checkpoint
    resume = resume_point(tmp_path / "b", "must", {"train.seed": 3})
    second = trainer(tmp_path / "b", token_file, resume=resume)
    assert second.step == 3 and second.state.tokens == 96
    assert [second.train_step(second.schedule.lr(s)) for s in range(3, 6)] == losses[3:]  # loss, norm, tokens
    for a, b in zip(straight.raw.state_dict().values(), second.raw.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(TinyformerError, match="cannot resume .*train.seed was 3"):
        resume_point(tmp_path / "b", "must", {"train.seed": 4})
