"""Lab task runs (tinyformer.lab.run) trained for real, in this process: the run directory, determinism, greedy
decoding that agrees with teacher forcing, stopping once solved, an exact resume, bf16 autocast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def test_a_run_writes_its_directory_and_is_deterministic(tiny_task_run, tmp_path: Path, records):
    a = tiny_task_run(tmp_path / "a", **{"model.position": "learned"})
    b = tiny_task_run(tmp_path / "b", **{"model.position": "learned"})
    assert a["accuracy"] == b["accuracy"] and a["token_accuracy"] == b["token_accuracy"]
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= files
    metrics = records(tmp_path / "a")
    assert [m["step"] for m in metrics if m["kind"] == "eval"] == [3, 6]
    assert [m.get("train_loss") for m in metrics] == [m.get("train_loss") for m in records(tmp_path / "b")]
    saved = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert set(saved["accuracy"]) == {"1-8", "9-16"} and saved["scheme"] == "ape" and saved["task"] == "UR"
    # greedy decoding through the KV cache agrees with teacher-forced exact match (contiguous supervision),
    # on a model that answers some examples right (at 0.0 both would agree whatever decoding did)
    assert saved["accuracy_greedy"] == saved["accuracy"] and saved["accuracy"]["1-8"] > 0

def test_abacus_runs_train_and_decode_with_symbol_run_positions(tiny_task_run, tmp_path: Path):
    # 150 steps: a third of the copies right, so greedy decoding (which must rebuild the symbol-run position
    # of every token it adds) has answers to get wrong
    result = tiny_task_run(tmp_path / "r", **{"task.name": "NF", "model.position": "abacus", "model.d_model": 32,
                                              "task.train_lengths": "1-3", "eval.bins": ["1-3", "4-6"],
                                              "train.max_steps": 150, "train.eval_every": 150, "train.lr": 3e-3})
    assert 0 < result["accuracy"]["1-3"] < 1
    assert result["accuracy_greedy"] == result["accuracy"]

def test_training_stops_once_the_training_bin_is_solved(tiny_task_run, tmp_path: Path, records):
    # stop_accuracy 0 is reached at the first evaluation
    result = tiny_task_run(tmp_path / "r", **{"train.max_steps": 30, "eval.stop_accuracy": 0.0, "eval.greedy": False})
    assert result["step"] == 3 and result["status"] == "solved"
    # running it again reads the finished run back instead of training on
    again = tiny_task_run(tmp_path / "r", **{"train.max_steps": 30, "eval.stop_accuracy": 0.0, "eval.greedy": False})
    assert again == result

def test_a_stopped_and_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tiny_task_run, tmp_path: Path, records):
    # a lab run is the engine's run: stopped halfway (train.stop_at_step) and resumed with resume=auto, its
    # metrics and final weights are those of a run that never stopped
    from safetensors.torch import load_file

    over = {"train.max_steps": 8, "train.eval_every": 4, "train.log_every": 1, "eval.stop_accuracy": 2.0,
            "model.position": "learned"}
    straight = tiny_task_run(tmp_path / "straight", **over)
    paused = tiny_task_run(tmp_path / "resumed", **over, **{"train.stop_at_step": 5})
    assert paused["status"] == "paused" and paused["step"] == 5
    resumed = tiny_task_run(tmp_path / "resumed", **over)
    assert resumed["status"] == "finished" and resumed["accuracy"] == straight["accuracy"]

    assert records(tmp_path / "resumed", timing=False) == records(tmp_path / "straight", timing=False)
    final = "checkpoints/step-00000008/model.safetensors"
    a, b = load_file(tmp_path / "straight" / final), load_file(tmp_path / "resumed" / final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def test_bf16_autocast_solves_a_small_task_like_fp32(tiny_task_run, tmp_path: Path, records):
    # the engine's precision reaches lab runs: under bf16 autocast a small task is solved as in fp32 (with the MFU
    # reference given: measuring a bf16 matmul ceiling on a CPU without native bf16 takes 30 s)
    over = {"task.name": "majority", "model.position": "rope", "model.d_model": 32, "model.n_layers": 2,
            "task.train_lengths": "1-16", "eval.bins": ["1-16"], "train.batch_size": 32, "train.lr": 3e-3,
            "train.max_steps": 400, "train.eval_every": 10, "eval.examples": 64, "train.warmup": 20,
            "train.log_every": 10}
    fp32 = tiny_task_run(tmp_path / "fp32", **over)
    bf16 = tiny_task_run(tmp_path / "bf16", **over, **{"train.precision": "bf16"})
    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert fp32["status"] == bf16["status"] == "solved"
    assert fp32["accuracy"]["1-16"] == bf16["accuracy"]["1-16"] == 1.0
    # the same batches, different arithmetic: bf16 really ran (its losses differ from fp32's)
    losses = [[r["train_loss"] for r in records(tmp_path / k, "train")] for k in ("fp32", "bf16")]
    assert losses[0] != losses[1] and losses[0][0] == pytest.approx(losses[1][0], rel=0.02)
