"""What a user is told when a run starts (model size, a warmup longer than the run), and messages that must not
show temporary paths."""

from __future__ import annotations

import json


def test_parameter_count_and_a_warmup_longer_than_the_run(cli, tiny_lm_run, tmp_path):
    run = tmp_path / "run"
    args = tiny_lm_run.args(run, "model.d_model=32", "train.max_steps=3", "train.warmup=10", "train.sample_tokens=0",
                            "train.progress=true")  # the announcement is part of the progress output
    proc = cli(*args, check=True)
    summary = json.loads((run / "summary.json").read_text())
    assert f"model: {summary['params'] / 1e3:.3g}k parameters" in proc.stdout and "1 layer," in proc.stdout
    assert "train.warmup=10 exceeds train.max_steps=3" in proc.stderr and "never reaches train.lr" in proc.stderr
    again = cli(*args, check=True)  # read back when started again: nothing left to train, no warning
    assert "warmup" not in again.stderr


def test_prepare_names_the_output_not_its_temporary_directory(cli, tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 100)
    out = tmp_path / "prepared"
    proc = cli("data", "prepare", "shakespeare", "--source", source, "--out", out, check=True)
    assert f"to {out}/train.bin" in proc.stdout + proc.stderr
    assert ".tmp" not in proc.stdout + proc.stderr
