"""train.loggers as a config (the older train.tensorboard switch, a typo) and a failing tracker: one warning,
then off for the rest of the run."""

from __future__ import annotations

import pytest

from tinyformer.config import read_yaml
from tinyformer.errors import TinyformerError
from tinyformer.train import trackers
from tinyformer.train.config import load_run_config, save_run_config


def test_train_tensorboard_true_is_train_loggers_tensorboard_with_a_note(capsys):
    cfg = load_run_config(None, ["train.tensorboard=true", "train.loggers=[wandb]"])
    assert cfg.train.loggers == ["wandb", "tensorboard"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.loggers=[tensorboard]" in err


def test_an_older_runs_config_with_tensorboard_false_still_loads(tmp_path, capsys):
    old = tmp_path / "config.yaml"
    old.write_text("train:\n  max_steps: 7\n  tensorboard: false\n")
    cfg = load_run_config(old)
    assert cfg.train.loggers == [] and cfg.train.max_steps == 7
    assert capsys.readouterr().err == ""
    save_run_config(cfg, tmp_path / "again.yaml")  # what a run writes now has no tensorboard key
    assert "tensorboard" not in read_yaml(tmp_path / "again.yaml")["train"]


def test_an_unknown_tracker_is_refused_naming_the_valid_ones():
    with pytest.raises(TinyformerError) as caught:
        load_run_config(None, ["train.loggers=[wandbb]"])
    message = str(caught.value)
    assert "train.loggers" in message and all(name in message for name in ("tensorboard", "wandb", "trackio"))
    assert "\n" not in message


def test_a_failing_tracker_warns_once_and_gets_nothing_more(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    calls = []

    def log(self, step, values):  # fault injection: the real writer, failing from its second step
        calls.append(step)
        if len(calls) == 2:
            raise OSError("no space left on device")
        original(self, step, values)

    original = trackers.TensorBoard.log
    monkeypatch.setattr(trackers.TensorBoard, "log", log)
    group = trackers.Trackers(["tensorboard"], tmp_path, "tinyformer")
    group.start(resumed=False)
    for step in range(1, 5):
        group.log({"kind": "train", "step": step, "train_loss": 1.0 / step})
    group.summary({"status": "finished", "step": 4})
    group.finish()
    assert calls == [1, 2]  # switched off after its failure
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and "tracker tensorboard failed in log" in warnings[0]
    assert "no space left on device" in (tmp_path / "errors.log").read_text()


def test_nested_values_are_flattened_and_non_numbers_left_out():
    record = {"accuracy": {"1-8": 0.5, "9-16": 0.25}, "val_loss": 1.5, "note": "x", "nan": float("nan"), "ok": True}
    assert trackers.scalars(record, "eval/") == {"eval/accuracy/1-8": 0.5, "eval/accuracy/9-16": 0.25,
                                                 "eval/val_loss": 1.5}
