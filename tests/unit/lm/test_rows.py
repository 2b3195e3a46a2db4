"""data.sampling=rows (tinyformer.lm.rows): one line of a token file per sequence (number sequences), padded,
never mixed; the run itself is in cli/test_train_cli.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyformer.batch import IGNORE_INDEX
from tinyformer.data.tokenfile import write_token_file
from tinyformer.errors import TinyformerError
from tinyformer.lm.rows import RowBatches, line_end_ids, row_eval_batches, row_spans
from tinyformer.tokenizer import Tokenizer

TEXT = "+1+2+3+\n+10+5+15+\n+7+7+41+\n"


@pytest.fixture
def rows_file(tmp_path):
    tok = Tokenizer([], ["<|endoftext|>"])
    ids = np.array(tok.encode(TEXT))
    write_token_file(tmp_path / "rows.bin", ids, tok.vocab_size, tokenizer_fingerprint=tok.fingerprint,
                     n_bytes=len(ids))
    tok.save(tmp_path / "tok")
    return tmp_path / "rows.bin", tok


def test_every_row_is_one_padded_sequence_with_its_line_end(rows_file):
    path, tok = rows_file
    ends = line_end_ids(tok)
    assert ends == [10, tok.eot_id]
    spans = row_spans(path, ends, seq_len=16)
    assert [TEXT.encode()[a:b].decode() for a, b in spans] == ["+1+2+3+\n", "+10+5+15+\n", "+7+7+41+\n"]
    batch = next(row_eval_batches(path, 8, 16, ends))
    assert batch["ids"].shape == (3, 16)
    row = tok.encode("+10+5+15+\n")
    assert batch["ids"][1, : len(row) - 1].tolist() == row[:-1]
    assert batch["targets"][1, : len(row) - 1].tolist() == row[1:]  # the line end is predicted
    assert (batch["targets"][1, len(row) - 1 :] == IGNORE_INDEX).all()  # padding: no loss, no other row


def test_random_rows_are_seeded_and_resume_exactly(rows_file):
    path, tok = rows_file
    a = RowBatches(path, 4, 16, line_end_ids(tok), seed=5)
    first = a.next_batch()
    b = RowBatches(path, 4, 16, line_end_ids(tok), seed=5)
    assert torch.equal(b.next_batch()["ids"], first["ids"])
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.next_batch()["ids"], a.next_batch()["ids"])
    ranks = [RowBatches(path, 2, 16, line_end_ids(tok), seed=5, rank=r, world_size=2).next_batch()["ids"]
             for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), first["ids"])  # two processes read one process's global batch


def test_rows_that_do_not_fit_or_files_without_line_ends_are_one_line_errors(rows_file, tmp_path):
    path, tok = rows_file
    with pytest.raises(TinyformerError, match="a row of 10 tokens, longer than train.seq_len"):
        row_spans(path, line_end_ids(tok), seq_len=8)
    flat = np.array(tok.encode("no line end here"))
    write_token_file(tmp_path / "flat.bin", flat, tok.vocab_size, tokenizer_fingerprint=tok.fingerprint)
    with pytest.raises(TinyformerError, match="has no line ends"):
        row_spans(tmp_path / "flat.bin", line_end_ids(tok), seq_len=8)
