"""Sweeps (tinyformer.lab.sweep): resumed where they stopped, `best` over seeds, the key of a configuration, grid
files checked before any run. Training is a stand-in here (fake_task_train); the real runs are in test_task_runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyformer.errors import Interrupted, TinyformerError
from tinyformer.lab.sweep import best, config_key, load_grid, read_rows, sweep


def test_sweep_resumes_where_it_stopped_and_best_reruns_seeds(tmp_path: Path, fake_task_train):
    grid = {"model.n_layers": [2, 4], "train.lr": [1e-3, 1e-4]}
    calls: list = []
    base = {"task.name": "UR", "model.position": "rope", "train.max_steps": 10}
    sweep(base, {"model.n_layers": [2], "train.lr": [1e-3, 1e-4]}, tmp_path, train=fake_task_train(calls),
          log=lambda s: None)
    assert len(calls) == 2
    # an interrupted write leaves a torn last line: ignored, and the run it belonged to is redone
    summary = tmp_path / "UR" / "summary-rope.jsonl"
    summary.write_text(summary.read_text() + '{"key": "torn", "acc')
    calls.clear()
    sweep(base, grid, tmp_path, train=fake_task_train(calls), log=lambda s: None)
    assert sorted(calls) == [(4, 1e-4, 0), (4, 1e-3, 0)], "only the combinations not yet in the summary run"
    rows = read_rows(summary)
    assert len(rows) == 4 and len({r["key"] for r in rows}) == 4
    calls.clear()
    sweep(base, grid, tmp_path, train=fake_task_train(calls), log=lambda s: None)
    assert calls == []
    # best: layers 4, lr 1e-3 wins on 51-100; seed 0 is reused from the sweep, seeds 1 and 2 are trained
    result = best("UR", "rope", tmp_path, train=fake_task_train(calls), log=lambda s: None)
    assert calls == [(4, 1e-3, 1), (4, 1e-3, 2)]
    acc = result["accuracy"]["51-100"]
    assert acc["mean"] == pytest.approx(0.46) and acc["std"] == pytest.approx(0.01)
    assert (acc["min"], acc["max"]) == (pytest.approx(0.45), pytest.approx(0.47))
    saved = json.loads((tmp_path / "UR" / "best-rope.json").read_text())
    assert saved["settings"]["model.n_layers"] == 4 and saved["by"] == "51-100"

def test_best_json_keeps_the_types_of_settings_given_as_command_line_text(tmp_path: Path, fake_task_train):
    # `lengen sweep --steps 600 --lr 1e-3` hands its aliases over as text
    base = {"task.name": "UR", "model.position": "rope", "train.max_steps": "10", "train.lr": "1e-3"}
    sweep(base, {"model.n_layers": [2]}, tmp_path, train=fake_task_train([]), log=lambda s: None)
    best("UR", "rope", tmp_path, seeds=(0,), train=fake_task_train([]), log=lambda s: None)
    saved = json.loads((tmp_path / "UR" / "best-rope.json").read_text())["settings"]
    assert saved["train.max_steps"] == 10 and saved["train.lr"] == 1e-3 and saved["model.n_layers"] == 2

def test_config_key_ignores_logging_but_not_settings(tiny_task_run):
    same = {"train.device": "cuda", "train.log_every": 50, "train.threads": 1, "run_dir": "elsewhere",
            "train.loggers": ["tensorboard", "wandb"], "train.tracker_project": "other"}
    assert config_key(tiny_task_run.config()) == config_key(tiny_task_run.config(**same))
    assert config_key(tiny_task_run.config()) != config_key(tiny_task_run.config(**{"train.lr": 2e-3}))
    assert config_key(tiny_task_run.config()) != config_key(tiny_task_run.config(**{"train.precision": "bf16"}))

def test_grid_typos_are_caught_before_any_run(tmp_path: Path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("model.n_layers: [2, 4]\nmodel.d_modle: [64]\n")
    with pytest.raises(TinyformerError, match=r"grid\.yaml.*unknown config key 'model.d_modle'.*'d_model'"):
        load_grid(grid)
    grid.write_text("model:\n  n_layers: [2, four]\n")  # nested sections work too
    with pytest.raises(TinyformerError, match="model.n_layers: expected an integer"):
        load_grid(grid)
    grid.write_text("train.lr: [1e-3, 1e-4]\neval.bins: [1-8, 9-16]\n")  # a list-valued setting: one value
    parsed = load_grid(grid)
    assert parsed["eval.bins"] == [["1-8", "9-16"]] and len(parsed["train.lr"]) == 2
    default = load_grid(None)
    assert default["model.n_layers"] == [2, 4] and default["model.d_model"] == [64, 128, 256]

def test_a_sweep_records_no_row_for_a_run_that_did_not_end(tmp_path: Path, fake_task_train):
    calls: list = []
    base = {"task.name": "UR", "model.position": "rope", "train.max_steps": 10}

    def interrupted(cfg, run_dir):
        calls.append(cfg.model.n_layers)
        return {"status": "interrupted", "steps": 3, "stopped_early": False, "accuracy": {"1-50": 0.1}}

    with pytest.raises(Interrupted):  # a run stopped by a signal stops the sweep too
        sweep(base, {"model.n_layers": [2]}, tmp_path, train=interrupted, log=lambda s: None)
    assert not (tmp_path / "UR" / "summary-rope.jsonl").exists()
    sweep(base, {"model.n_layers": [2]}, tmp_path, train=fake_task_train(calls), log=lambda s: None)
    assert calls == [2, (2, 1e-3, 0)] and len(read_rows(tmp_path / "UR" / "summary-rope.jsonl")) == 1
