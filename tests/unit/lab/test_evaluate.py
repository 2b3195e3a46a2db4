"""Lab scoring (tinyformer.lab.evaluate): exact match on hand-made logits, and free-running decoding from the
model's own outputs against a naive decoder."""

from __future__ import annotations

import numpy as np
import torch

from tinyformer.lab.evaluate import exact_match, free_running, token_matches


def one_hot_logits(pred: list[list[int]], vocab: int = 6) -> torch.Tensor:
    """Logits whose argmax is `pred`, with a runner-up close behind so only the argmax decides."""
    logits = torch.zeros(len(pred), len(pred[0]), vocab)
    for b, row in enumerate(pred):
        for t, tok in enumerate(row):
            logits[b, t, tok] = 2.0
            logits[b, t, (tok + 1) % vocab] = 1.9
    return logits

def test_exact_match_needs_every_supervised_token_and_ignores_the_rest():
    targets = torch.tensor([[-100, -100, 3, 4, 5], [-100, -100, 3, 4, 5], [-100, -100, 3, 4, 5], [-100, 2, -100, -100, 1]])
    pred = [
        [0, 0, 3, 4, 5],  # all supervised right, unsupervised wrong: correct
        [0, 0, 3, 4, 0],  # last supervised token wrong: wrong
        [3, 4, 2, 4, 5],  # first supervised token wrong: wrong
        [5, 2, 5, 5, 1],  # non-contiguous supervision, both right: correct
    ]
    logits = one_hot_logits(pred)
    assert exact_match(logits, targets).tolist() == [True, False, False, True]
    assert token_matches(logits, targets) == (3 + 2 + 2 + 2, 11)

def naive_greedy(model, prompt: np.ndarray, n_new: int) -> np.ndarray:
    """The reference decoder: recompute the whole sequence for every new token, no cache."""
    seq = torch.from_numpy(prompt)
    for _ in range(n_new):
        logits, _ = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompt.shape[1]:].numpy()

def test_free_running_decodes_from_its_own_outputs():
    # a random tiny model: free_running (KV cache, grouped by prompt length) must agree row by row with the
    # naive decoder, and count a row correct exactly when its own continuation matches every target
    from tinyformer.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=6, n_layers=1, n_heads=2, d_model=16, position="rope")).eval()
    ids = np.array([[1, 1, 2, 3, 0], [1, 1, 2, 4, 5], [1, 2, 3, 4, 5], [2, 2, 2, 2, 2]])
    prompts = {0: ids[:2, :3], 1: ids[2:, :2]}
    own = np.concatenate([naive_greedy(model, prompts[0], 3), naive_greedy(model, prompts[1], 3)])
    # rows 0 and 2 ask for the model's own continuation, rows 1 and 3 for a changed first or last token
    targets = np.full_like(ids, -100)
    targets[:2, 2:] = own[:2]
    targets[2:, 1:4] = own[2:]
    targets[1, 2] = (own[1, 0] + 1) % 6
    targets[3, 3] = (own[3, 2] + 1) % 6
    got = free_running(model, ids, targets, np.array([5, 5, 5, 5]),
                       lambda x: np.broadcast_to(np.arange(x.shape[1]), x.shape), "cpu")
    assert got.tolist() == [True, False, True, False]
