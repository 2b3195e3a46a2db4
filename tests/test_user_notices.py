"""What a user is told at the start of a run (model size, a warmup longer than the run, compilation) and
messages that must not show temporary paths."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from tinyformer.data.tokenfile import write_token_file
from tinyformer.tokenizer import Tokenizer


def corpus(root):
    tok = Tokenizer([], [])
    tok.save(root / "tok")
    ids = np.array(tok.encode("the cat sat on the mat. " * 200))
    write_token_file(root / "t.bin", ids, 256, tokenizer_fingerprint=tok.fingerprint, n_bytes=len(ids))
    return [f"data.train={root / 't.bin'}", f"data.val={root / 't.bin'}", f"data.tokenizer={root / 'tok'}"]


def test_parameter_count_and_a_warmup_longer_than_the_run(cli, tmp_path):
    run = tmp_path / "run"
    args = ["train", f"run_dir={run}", *corpus(tmp_path), "model.n_layers=1", "model.d_model=32", "model.n_heads=2",
            "model.max_seq_len=16", "train.max_steps=3", "train.warmup=10", "train.precision=fp32", "train.threads=1",
            "train.batch_size=2", "train.sample_tokens=0"]
    proc = cli(*args, check=True)
    summary = json.loads((run / "summary.json").read_text())
    assert f"model: {summary['params'] / 1e3:.3g}k parameters" in proc.stdout and "1 layer," in proc.stdout
    assert "train.warmup=10 exceeds train.max_steps=3" in proc.stderr and "never reaches train.lr" in proc.stderr
    again = cli(*args, check=True)  # read back when started again: nothing left to train, no warning
    assert "warmup" not in again.stderr


def test_compile_is_announced_before_the_slow_first_step(capsys):
    from tinyformer.model import ModelConfig, Transformer
    from tinyformer.train.config import RunConfig, TrainConfig
    from tinyformer.train.start import _announce

    cfg = RunConfig(model=ModelConfig(n_layers=1, d_model=32, n_heads=2, vocab_size=64),
                    train=TrainConfig(compile=True, max_steps=5, warmup=1))
    _announce(cfg, Transformer(cfg.model), SimpleNamespace(step=0))
    out = capsys.readouterr().out
    assert "torch.compile: the first step compiles the model" in out
    assert "1 layer, position=learned" in out


def test_prepare_names_the_output_not_its_temporary_directory(cli, tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 100)
    out = tmp_path / "prepared"
    proc = cli("data", "prepare", "shakespeare", "--source", source, "--out", out, check=True)
    assert f"to {out}/train.bin" in proc.stdout + proc.stderr
    assert ".tmp" not in proc.stdout + proc.stderr


def test_the_eta_leaves_out_the_slow_first_steps(capsys):
    # a first step that compiles (here 0.6 s) then steps of 0.01 s: 500 steps left take about 5 s, not minutes
    import time

    from tinyformer.train.metrics import Progress

    progress = Progress(total=510, enabled=True, log_every=1)
    time.sleep(0.6)
    for step in range(1, 11):
        progress.update(step, 2.0, 1e-3, 1000.0)
        time.sleep(0.01)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step 1/510 ") and lines[0].endswith(" eta ?")  # nothing measured yet
    minutes, seconds = lines[-1].rsplit(" eta ", 1)[1].rstrip("s").split("m")
    assert 3 <= 60 * int(minutes) + int(seconds) <= 20, lines[-1]  # the old ETA counted the 0.6 s: ~30 s
