"""`data.sampling=rows`: one line of the token file per sequence, for data made of independent rows (number
sequences, one problem per line), as the reference arithmetic workflows train. A row runs from after one
line end (a token ending in a newline, or end-of-text) to the next one included; it is padded on the right
with ignored targets, so no row ever sees another. Under causal attention right padding changes nothing.

With packed windows a model without sequence positions (Abacus ids alone) cannot tell the current row's
digits from the previous row's with the same index; one row per sequence is what makes them usable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyformer.batch import IGNORE_INDEX
from tinyformer.data.tokenfile import TokenFile, as_token_file
from tinyformer.errors import TinyformerError


def line_end_ids(tokenizer, eot_id: int | None = None) -> list[int]:
    """Ids that end a row: tokens whose text ends with a newline, and end-of-text."""
    ids = {i for i, token in tokenizer.vocab.items() if token.endswith(b"\n")} if tokenizer is not None else {10}
    if tokenizer is not None and tokenizer.eot_id is not None:
        ids.add(tokenizer.eot_id)
    if eot_id is not None:
        ids.add(eot_id)
    return sorted(ids)


def row_spans(path: str | Path | TokenFile, ends: list[int], seq_len: int) -> np.ndarray:
    """[N, 2] (start, stop) of every row of the file, the line end included; a one-line error when the file
    has no line end or a row does not fit `seq_len + 1` tokens."""
    file = as_token_file(path)
    tokens, path = file.tokens(), file.path
    cuts = np.flatnonzero(np.isin(np.asarray(tokens), ends))
    if len(cuts) == 0:
        raise TinyformerError(f"data.sampling=rows: {path} has no line ends (newline or end-of-text tokens); "
                              "use random or sequential windows for running text")
    starts = np.concatenate([[0], cuts[:-1] + 1])
    spans = np.stack([starts, cuts + 1], axis=1)
    spans = spans[spans[:, 1] - spans[:, 0] >= 2]  # an empty line predicts nothing
    longest = int((spans[:, 1] - spans[:, 0]).max(initial=0))
    if longest > seq_len + 1:
        raise TinyformerError(f"data.sampling=rows: {path} has a row of {longest} tokens, longer than "
                              f"train.seq_len + 1 = {seq_len + 1}; raise train.seq_len (and model.max_seq_len)")
    return spans


def _rows_batch(tokens: np.ndarray, spans: np.ndarray, seq_len: int) -> dict[str, torch.Tensor]:
    ids = torch.zeros(len(spans), seq_len, dtype=torch.long)
    targets = torch.full((len(spans), seq_len), IGNORE_INDEX, dtype=torch.long)
    for r, (start, stop) in enumerate(spans):
        row = torch.from_numpy(np.asarray(tokens[start:stop], dtype=np.int64))
        ids[r, : len(row) - 1] = row[:-1]
        targets[r, : len(row) - 1] = row[1:]
    return {"ids": ids, "targets": targets}


class RowBatches:
    """Random rows (seeded by (seed, batch number)), `batch_size` per process per call; each call draws one
    global batch and a process keeps its own rows, as `TokenFileBatches` does."""

    def __init__(self, path: str | Path | TokenFile, batch_size: int, seq_len: int, ends: list[int], *,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.file = as_token_file(path)
        self.path, self.batch_size, self.seq_len, self.seed = self.file.path, batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.spans = row_spans(self.file, ends, seq_len)
        self.calls = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, 11, self.calls])
        self.calls += 1
        picks = rng.integers(0, len(self.spans), size=self.batch_size * self.world_size)
        mine = picks[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return _rows_batch(self.file.tokens(), self.spans[mine], self.seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {"sampling": "rows", "seed": self.seed, "calls": self.calls, "seq_len": self.seq_len,
                "global_batch": self.batch_size * self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        calls = state.get("calls")
        if state.get("sampling") != "rows" or not isinstance(calls, int) or isinstance(calls, bool) or calls < 0:
            raise TinyformerError("cannot resume: the checkpoint's data position is not one of data.sampling=rows; "
                                  "use the run's config.yaml or start a new run_dir")
        if state.get("global_batch") != self.batch_size * self.world_size:
            raise TinyformerError(f"cannot resume: the checkpoint's global batch is {state.get('global_batch')} "
                                  f"rows, this run's is {self.batch_size * self.world_size}; keep train.batch_size")
        self.calls = calls


def row_eval_batches(path: str | Path | TokenFile, batch_size: int, seq_len: int, ends: list[int], *,
                     max_tokens: int | None = None, seed: int = 0, rank: int = 0,
                     world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
    """Every row of the file once (or a seeded subset of rows worth about `max_tokens` targets); with several
    processes each takes every world_size-th batch, the same number on each."""
    file = as_token_file(path)
    spans = row_spans(file, ends, seq_len)
    if max_tokens is not None:
        mean = float((spans[:, 1] - spans[:, 0] - 1).mean())
        k = max(1, math.ceil(max_tokens / max(mean, 1.0)))
        if k < len(spans):
            spans = spans[np.sort(np.random.default_rng([seed, 7919]).permutation(len(spans))[:k])]
    tokens = file.tokens()
    n_batches = math.ceil(len(spans) / batch_size)
    per_rank = math.ceil(n_batches / world_size)
    for b in range(rank, per_rank * world_size, world_size):
        chunk = spans[b * batch_size : (b + 1) * batch_size]
        if len(chunk) == 0:  # past the end: an all-ignored batch, so every process runs as many
            yield {"ids": torch.zeros(1, seq_len, dtype=torch.long),
                   "targets": torch.full((1, seq_len), IGNORE_INDEX, dtype=torch.long)}
            continue
        yield _rows_batch(tokens, chunk, seq_len)
