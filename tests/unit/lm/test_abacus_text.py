"""Abacus position ids for language models on text (tinyformer.lm.abacus): the lab's definition on token files,
merged digit tokens, seeded offsets that resume; the run itself is in cli/test_train_cli.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyformer.batch import run_positions
from tinyformer.lm.abacus import AbacusBatches, TextPositions, digit_table, text_positions
from tinyformer.lm.sampler import TokenFileBatches
from tinyformer.tokenizer import Tokenizer, train_bpe


def sums_text(n: int = 400, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(f"{a}+{b}={a + b}\n" for a, b in rng.integers(0, 5000, size=(n, 2)))


@pytest.fixture(scope="module")
def corpus(tiny_corpus):
    return tiny_corpus(sums_text(seed=0), val_text=sums_text(seed=1), specials=("<|endoftext|>",))


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
    positions = TextPositions(digit_table(corpus.tokenizer, corpus.tokenizer.vocab_size))
    source = AbacusBatches(TokenFileBatches(corpus.train, 8, 32, seed=3), positions, table_size=20, seed=3)
    batch = source.next_batch()
    plain = positions(batch["ids"].numpy())
    pos = batch["position_ids"].numpy()
    assert ((pos == 0) == (plain == 0)).all() and pos.max() < 20
    shift = pos - plain
    for row, s in zip(shift, plain):
        assert len(set(row[s > 0].tolist())) == 1  # one offset per window
    assert (shift[plain > 0] > 0).any()
    again = AbacusBatches(TokenFileBatches(corpus.train, 8, 32, seed=3), positions, table_size=20, seed=3)
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
