"""`tinyformer train` given a user's mistake: every bad config value, bad data (missing, too short, out of the
vocabulary, of another tokenizer, not UTF-8) and a bad run directory is one line naming what to change, before
anything is created."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


BAD_TRAIN = [
    ("train.lr=-1", "train.lr"), ("train.beta2=1.5", "train.beta2"), ("train.grad_accum=0", "train.grad_accum"),
    ("train.threads=-1", "train.threads"), ("train.device=tpu9", "tpu9"), ("train.max_steps=-5", "train.max_steps"),
    ("train.batch_size=0", "train.batch_size"), ("train.batch_size=-3", "train.batch_size"),
    ("train.seq_len=-4", "train.seq_len"), ("train.warmup=-1", "train.warmup"),
    ("train.eval_every=-1", "train.eval_every"), ("train.ckpt_every=-1", "train.ckpt_every"),
    ("train.keep_last=-1", "train.keep_last"), ("train.grad_clip=-1", "train.grad_clip"),
    ("train.lr=.nan", "train.lr"), ("train.seed=-1", "train.seed"), ("train.sdpa_backend=efficient", "CUDA"),
    ("train.sample_temperature=-1", "train.sample_temperature"), ("model.rope_theta=.nan", "model.rope_theta"),
    ("eval.examples=0", "eval.examples"), ("data.eval_tokens=0", "data.eval_tokens"),
    ("train.lrr=1e-3", "unknown config key 'train.lrr'; did you mean 'lr'"),
]


@pytest.mark.parametrize("override,named", BAD_TRAIN, ids=[b[0] for b in BAD_TRAIN])
def test_a_bad_config_value_is_one_line_and_creates_nothing(train_lm, tmp_path, one_line_error, override, named):
    before = tree(tmp_path)
    one_line_error(train_lm(tmp_path / "run", override, check=False), named)
    assert tree(tmp_path) == before


def test_a_model_key_typo_is_reported_before_any_data_is_read(cli, tmp_path, one_line_error):
    # the data paths do not exist: the typo must still be what the user hears about first
    one_line_error(cli("train", f"run_dir={tmp_path / 'r'}", f"data.train={tmp_path / 'none.bin'}", "model.n_layer=2"),
                   "model.n_layer", "'n_layers'")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("val", ["short", "empty"])
def test_a_validation_file_shorter_than_a_window_is_refused_before_the_first_step(train_lm, tiny_corpus, tmp_path,
                                                                                 one_line_error, val):
    short = tiny_corpus().token_file(val, [116][: 1 if val == "short" else 0])
    one_line_error(train_lm(tmp_path / "run", f"data.val={short}", check=False), "data.val", "window")
    assert not (tmp_path / "run").exists()


def test_a_missing_or_too_short_training_file(train_lm, tiny_corpus, tmp_path, one_line_error):
    one_line_error(train_lm(tmp_path / "r", f"data.train={tmp_path / 'nope.bin'}", check=False),
                   "nope.bin", "does not exist")
    short = tiny_corpus().token_file("ten", np.arange(10))
    one_line_error(train_lm(tmp_path / "r", f"data.train={short}", check=False), "fewer than one window")
    assert not (tmp_path / "r").exists()


def test_token_ids_beyond_the_vocabulary(cli, tiny_lm_run, tmp_path, one_line_error):
    from tinyformer.data.tokenfile import write_token_file

    wide = tmp_path / "wide.bin"
    write_token_file(wide, np.arange(600) % 300, 300, n_bytes=600)
    one_line_error(cli("train", f"run_dir={tmp_path / 'r'}", f"data.train={wide}", "model.vocab_size=256",
                       *tiny_lm_run.MODEL, *tiny_lm_run.FAST), "299", "vocab_size")


def test_a_token_file_of_another_tokenizer(train_lm, tiny_corpus, tmp_path, one_line_error):
    from tinyformer.tokenizer import train_bpe

    other = train_bpe(["the cat sat on the mat. " * 100], 270)
    other.save(tmp_path / "other-tok")
    one_line_error(train_lm(tmp_path / "r", f"data.tokenizer={tmp_path / 'other-tok'}", check=False),
                   "tokenizer", str(tiny_corpus().train))


def test_failed_starts_create_nothing(cli, train_lm, tmp_path, one_line_error):
    one_line_error(train_lm(tmp_path / "run", "--resume", check=False), "nothing to resume")
    assert not (tmp_path / "run").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"train:\n  lr: \xff\n")
    one_line_error(cli("train", "--config", bad, f"run_dir={tmp_path / 'run'}"), "UTF-8")
    assert not (tmp_path / "run").exists()
    one_line_error(cli("train", "--bogus-flag"), "--bogus-flag")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    one_line_error(train_lm(blocker / "run", check=False), "run_dir")
