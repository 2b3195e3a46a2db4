"""Token-file batches of a language model (tinyformer.lm.sampler): ranks split one global batch, the state
resumes exactly, a sequential pass draws every window once."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def train_file(tiny_corpus):
    return tiny_corpus().train


def test_sampler_ranks_split_the_global_batch(train_file):
    from tinyformer.lm.sampler import TokenFileBatches

    for sampling in ("random", "sequential"):
        whole = TokenFileBatches(train_file, 4, 16, sampling=sampling, seed=3)
        parts = [TokenFileBatches(train_file, 2, 16, sampling=sampling, seed=3, rank=r, world_size=2)
                 for r in range(2)]
        for _ in range(3):
            full = whole.next_batch()
            pieces = [p.next_batch() for p in parts]
            assert torch.equal(full["ids"], torch.cat([p["ids"] for p in pieces]))
            assert torch.equal(full["targets"][:, :-1], full["ids"][:, 1:])


def test_sampler_state_resumes_exactly(train_file):
    from tinyformer.lm.sampler import TokenFileBatches

    for sampling in ("random", "sequential"):
        a = TokenFileBatches(train_file, 8, 16, sampling=sampling, seed=1)
        for _ in range(400):  # several sequential epochs
            a.next_batch()
        b = TokenFileBatches(train_file, 8, 16, sampling=sampling, seed=1)
        b.load_state_dict(a.state_dict())
        for _ in range(5):
            assert torch.equal(a.next_batch()["ids"], b.next_batch()["ids"])


def test_sequential_pass_covers_every_window_once(train_file):
    from tinyformer.data.tokenfile import read_token_file
    from tinyformer.lm.sampler import TokenFileBatches

    tokens = np.asarray(read_token_file(train_file)[0], dtype=np.int64)
    s = TokenFileBatches(train_file, 1, 16, sampling="sequential", seed=0)
    every_window = sorted(map(tuple, tokens[: s.n_windows * 16].reshape(-1, 16)))
    drawn = sorted(tuple(s.next_batch()["ids"][0].tolist()) for _ in range(s.n_windows))
    assert drawn == every_window and s.epoch == 1 and s.index == 0
