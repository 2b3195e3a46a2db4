"""Batch sources over memory-mapped token files: random windows or sequential passes, exactly resumable.

A batch source has `next_batch() -> {"ids", "targets"}`, `state_dict()` and `load_state_dict()`. Each
call draws one *global* batch of windows (the same on every process, from the seed and a counter) and a
process reads only its own rows of it, so N processes with batch B each see exactly the windows one process
with batch N*B sees. The file is re-mapped for every batch, so a long run holds no growing mapping.
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


def _window_rows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts])
    data = torch.from_numpy(rows)
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()


class TokenFileBatches:
    """Windows of `seq_len + 1` tokens from one token file; `batch_size` rows per process per call."""

    def __init__(
        self,
        path: str | Path | TokenFile,
        batch_size: int,
        seq_len: int,
        *,
        sampling: str = "random",
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.file = as_token_file(path)
        self.path = path = self.file.path
        self.n_tokens = int(self.file.n_tokens)
        if self.n_tokens < seq_len + 1:
            raise TinyformerError(
                f"token file {path} has {self.n_tokens} tokens, fewer than one window of {seq_len + 1}; "
                "use a longer file or a smaller train.seq_len"
            )
        if sampling not in ("random", "sequential"):
            raise TinyformerError(f"data.sampling must be random or sequential, not {sampling!r}")
        self.meta = self.file.meta
        self.batch_size, self.seq_len = batch_size, seq_len
        self.sampling, self.seed, self.shuffle = sampling, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.n_windows = (self.n_tokens - 1) // seq_len  # non-overlapping windows of a sequential pass
        self.calls = 0  # random: batches drawn so far
        self.epoch, self.index = 0, 0  # sequential: position in the current pass
        self._order: np.ndarray | None = None

    def _tokens(self) -> np.ndarray:
        return self.file.tokens()

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)
            else:
                self._order = np.arange(self.n_windows)
        return self._order

    def _global_starts(self) -> np.ndarray:
        size = self.batch_size * self.world_size
        if self.sampling == "random":
            rng = np.random.default_rng([self.seed, self.calls])
            self.calls += 1
            return rng.integers(0, self.n_tokens - self.seq_len, size=size)
        windows = []
        while len(windows) < size:
            order = self._epoch_order()
            take = order[self.index : self.index + size - len(windows)]
            windows.extend(int(w) for w in take)
            self.index += len(take)
            if self.index >= len(order):
                self.epoch, self.index, self._order = self.epoch + 1, 0, None
        return np.asarray(windows, dtype=np.int64) * self.seq_len

    def next_batch(self) -> dict[str, torch.Tensor]:
        starts = self._global_starts()
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        ids, targets = _window_rows(self._tokens(), mine, self.seq_len)
        return {"ids": ids, "targets": targets}

    def state_dict(self) -> dict[str, Any]:
        return {
            "sampling": self.sampling,
            "seed": self.seed,
            "calls": self.calls,
            "epoch": self.epoch,
            "index": self.index,
            "global_batch": self.batch_size * self.world_size,
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("sampling", "seed", "seq_len"):
            if state.get(key) != getattr(self, key):
                raise TinyformerError(
                    f"cannot resume: the checkpoint's data {key} is {state.get(key)!r}, the config says "
                    f"{getattr(self, key)!r}; use the original config or start a new run_dir"
                )
        if state.get("global_batch") != self.batch_size * self.world_size:
            raise TinyformerError(
                f"cannot resume: the checkpoint's global batch is {state.get('global_batch')} sequences, "
                f"this run's is {self.batch_size * self.world_size}; keep train.batch_size the same"
            )
        counters = [state.get(k) for k in ("calls", "epoch", "index")]
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counters) or (
                counters[2] >= max(self.n_windows, 1)):
            raise TinyformerError(f"cannot resume: the checkpoint's data position {counters} is not one of "
                                  f"{self.path}; the checkpoint is corrupt")
        self.calls, self.epoch, self.index = counters
        self._order = None


def eval_batches(
    path: str | Path | TokenFile,
    batch_size: int,
    seq_len: int,
    *,
    max_tokens: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches covering the whole file once (every token after the first is a target exactly once), or a
    fixed, seeded subset of windows worth `max_tokens` targets. The last short window is padded with
    ignored (IGNORE_INDEX) targets. With several processes, each takes every world_size-th batch."""
    tokens = as_token_file(path).tokens()
    n = len(tokens)
    if n < 2:
        raise TinyformerError(f"token file {path} has {n} tokens; evaluation needs at least 2")
    n_windows = math.ceil((n - 1) / seq_len)
    windows = np.arange(n_windows)
    if max_tokens is not None and max_tokens < n - 1:
        k = max(1, math.ceil(max_tokens / seq_len))
        windows = np.sort(np.random.default_rng([seed, 7919]).permutation(n_windows)[:k])
    n_batches = math.ceil(len(windows) / batch_size)
    per_rank = math.ceil(n_batches / world_size)  # equal on every process: FSDP forwards are collective
    for b in range(rank, per_rank * world_size, world_size):
        chunk = windows[b * batch_size : (b + 1) * batch_size]  # empty past the end: an all-ignored batch
        if len(chunk) == 0:
            yield {"ids": torch.zeros(1, seq_len, dtype=torch.long),
                   "targets": torch.full((1, seq_len), IGNORE_INDEX, dtype=torch.long)}
            continue
        ids = torch.zeros(len(chunk), seq_len, dtype=torch.long)
        targets = torch.full((len(chunk), seq_len), IGNORE_INDEX, dtype=torch.long)
        for row, w in enumerate(chunk):
            start = int(w) * seq_len
            piece = torch.from_numpy(np.asarray(tokens[start : min(n, start + seq_len + 1)], dtype=np.int64))
            length = len(piece) - 1
            ids[row, :length] = piece[:-1]
            targets[row, :length] = piece[1:]
        yield {"ids": ids, "targets": targets}
