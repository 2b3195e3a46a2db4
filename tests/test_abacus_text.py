"""Abacus position ids for language models on text: the lab's definition on token files, through training,
evaluation, sampling and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyformer.batch import run_positions
from tinyformer.data.tokenfile import write_token_file
from tinyformer.lm.abacus import AbacusBatches, TextPositions, digit_table, text_positions
from tinyformer.lm.sampler import TokenFileBatches
from tinyformer.tokenizer import Tokenizer, train_bpe

TINY = ["model.position=abacus", "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.max_seq_len=32",
        "train.precision=fp32", "train.threads=1", "train.progress=false", "train.batch_size=4", "train.warmup=1",
        "train.lr=3e-3", "train.log_every=1", "train.sample_tokens=6", "train.peak_flops=1e12"]


def sums_text(n: int = 400, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(f"{a}+{b}={a + b}\n" for a, b in rng.integers(0, 5000, size=(n, 2)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sums")
    tok = Tokenizer([], ["<|endoftext|>"])
    tok.save(root / "tok")
    for name, seed in (("train", 0), ("val", 1)):
        ids = np.array(tok.encode(sums_text(seed=seed)))
        write_token_file(root / f"{name}.bin", ids, tok.vocab_size, tokenizer_fingerprint=tok.fingerprint,
                         n_bytes=len(ids))
    return {"tok": root / "tok", "train": root / "train.bin", "val": root / "val.bin", "tokenizer": tok}


def test_ids_of_a_known_string_are_each_digits_index_inside_its_number():
    tok = Tokenizer([], ["<|endoftext|>"])
    positions = TextPositions(digit_table(tok, tok.vocab_size))
    ids = tok.encode("x=1342+879<|endoftext|>07", allowed_special="all")
    assert positions(np.array([ids])).tolist() == [[0, 0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]]
    # the same function the lab uses, on the same membership
    assert positions(np.array([ids])).tolist() == run_positions(np.array([[chr(i).isdigit() for i in ids]])).tolist()
    # hexadecimal text: data.digits decides what a digit is; torch in, torch out
    hexpos = TextPositions(digit_table(tok, tok.vocab_size, "0123456789abcdef"))
    out = hexpos(torch.tensor([tok.encode("+a1f+ff+")]))
    assert isinstance(out, torch.Tensor) and out.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]


def test_a_merged_digit_token_counts_once_and_specials_never():
    tok = train_bpe(["1342 1342 1342 13 13 13"], 258, ["<|endoftext|>"])
    table = digit_table(tok, tok.vocab_size + 3)  # a padded vocabulary: the padding ids are no digits
    merged = [i for i in range(256, tok.vocab_size - 1) if table[i]]
    assert merged and not table[tok.eot_id] and not table[tok.vocab_size:].any()
    ids = tok.encode("a 1342")
    assert TextPositions(table)(np.array([ids])).max() == len(ids) - 2  # one index per digit token


def test_training_offsets_move_digit_ids_only_and_stay_in_the_table(corpus):
    positions = TextPositions(digit_table(corpus["tokenizer"], corpus["tokenizer"].vocab_size))
    source = AbacusBatches(TokenFileBatches(corpus["train"], 8, 32, seed=3), positions, table_size=20, seed=3)
    batch = source.next_batch()
    plain = positions(batch["ids"].numpy())
    pos = batch["position_ids"].numpy()
    assert ((pos == 0) == (plain == 0)).all() and pos.max() < 20
    shift = pos - plain
    for row, s in zip(shift, plain):
        assert len(set(row[s > 0].tolist())) == 1  # one offset per window
    assert (shift[plain > 0] > 0).any()
    again = AbacusBatches(TokenFileBatches(corpus["train"], 8, 32, seed=3), positions, table_size=20, seed=3)
    assert torch.equal(again.next_batch()["position_ids"], batch["position_ids"])  # seeded
    again.load_state_dict(source.state_dict())
    assert torch.equal(again.next_batch()["position_ids"], source.next_batch()["position_ids"])


def test_abacus_without_a_tokenizer_or_with_no_digits_is_a_one_line_error():
    from tinyformer.errors import TinyformerError
    from tinyformer.model import ModelConfig
    from tinyformer.train.config import DataConfig

    cfg = ModelConfig(position="abacus", vocab_size=300)
    with pytest.raises(TinyformerError, match="needs the tokenizer"):
        text_positions(cfg, None, None)
    with pytest.raises(TinyformerError, match="data.digits must be a non-empty string"):
        DataConfig(digits="")


def test_position_abacus_trains_evaluates_samples_and_resumes_exactly_on_text(cli, corpus, tmp_path):
    data = [f"data.train={corpus['train']}", f"data.val={corpus['val']}", f"data.tokenizer={corpus['tok']}"]
    run = tmp_path / "run"
    cli("train", f"run_dir={run}", *data, *TINY, "train.max_steps=6", "train.eval_every=3", check=True)
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6] and all(np.isfinite(r["val_loss"]) for r in evals)
    assert "=== step 6 ===" in (run / "samples.txt").read_text()
    # eval reproduces the logged validation loss (the same Abacus ids, the same windows)
    out = json.loads(cli("eval", "--ckpt", run, "--json", check=True).stdout)
    assert out["loss"] == pytest.approx(evals[-1]["val_loss"], abs=1e-6)
    proc = cli("sample", "--ckpt", run, "--prompt", "12+34=", "--max-new-tokens", "4", "--temperature", "0",
                    check=True)
    assert proc.stdout.startswith("12+34=")
    # stopped at step 3 and resumed: the same run, bit for bit (the offsets' counter is in the checkpoint)
    paused = tmp_path / "paused"
    cli("train", f"run_dir={paused}", *data, *TINY, "train.max_steps=6", "train.eval_every=3",
             "train.stop_at_step=3", check=True)
    cli("train", f"run_dir={paused}", *data, *TINY, "train.max_steps=6", "train.eval_every=3", check=True)

    def losses(path):
        return [(r["step"], r.get("train_loss"), r.get("val_loss"))
                for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())]

    assert losses(paused) == losses(run)
