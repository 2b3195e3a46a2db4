"""Length-bin accuracy: exact match of every supervised token, under teacher forcing and free-running.

Teacher forcing (the published definition): an example counts as correct when the argmax of the logits
equals the target at every supervised position. Free-running: the model continues the prompt greedily
from its own outputs. When the supervised tokens are one contiguous run right after the prompt (every
built-in task), the two agree exactly: the first wrong argmax under teacher forcing is also the first
wrong greedy token. The greedy column therefore checks the cached generation path more than the model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tinyformer.batch import IGNORE_INDEX
from tinyformer.train.runtime import autocast


def exact_match(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B] bool: argmax(logits) equals targets at every position where targets != -100."""
    wrong = (logits.argmax(-1) != targets) & (targets != IGNORE_INDEX)
    return ~wrong.any(-1)


def token_matches(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(correct, total) supervised tokens under teacher forcing."""
    supervised = targets != IGNORE_INDEX
    return int(((logits.argmax(-1) == targets) & supervised).sum()), int(supervised.sum())


PositionFn = Callable[[np.ndarray], np.ndarray]  # token ids [B, T] -> position ids [B, T]


def default_positions(ids: np.ndarray) -> np.ndarray:
    """0..T-1 for every row: evaluation always starts at position 0."""
    return np.broadcast_to(np.arange(ids.shape[1])[None, :], ids.shape)


@torch.no_grad()
def teacher_forced(model, ids: np.ndarray, targets: np.ndarray, positions: PositionFn, device) -> tuple:
    """(exact-match bools [B], correct tokens, supervised tokens) for one padded batch."""
    x = torch.from_numpy(ids).to(device)
    y = torch.from_numpy(targets).to(device)
    pos = torch.from_numpy(np.ascontiguousarray(positions(ids))).to(device)
    logits, _ = model(x, position_ids=pos)
    return exact_match(logits, y).cpu().numpy(), *token_matches(logits, y)


def greedy_continuation(model, prompt: np.ndarray, n_new: int, positions: PositionFn, device) -> np.ndarray:
    """[B, n_new] greedy tokens after `prompt` [B, P] (same length in every row): `model.generate` at
    temperature 0 through the KV cache, each new token's position id computed from the whole sequence."""
    tokens = torch.from_numpy(np.ascontiguousarray(prompt)).to(device)
    pos = torch.from_numpy(np.ascontiguousarray(positions(prompt))).to(device)

    def next_position(ids: torch.Tensor, _positions: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(positions(ids.cpu().numpy())[:, -1])).to(device)

    out = model.generate(tokens, n_new, temperature=0, position_ids=pos, next_position_ids=next_position)
    return out[:, prompt.shape[1]:].cpu().numpy()


def decoded_exact_match(ids: np.ndarray, targets: np.ndarray, decode) -> np.ndarray:
    """[B] bools: `decode(prompt, n_new)` from the prompt reproduces every supervised token.

    The prompt is everything before the first supervised token; decoding runs to the last supervised
    token. Rows are grouped by (prompt length, generated length) so each group decodes as one batch.
    """
    supervised = targets != IGNORE_INDEX
    first = supervised.argmax(1)
    last = supervised.shape[1] - 1 - supervised[:, ::-1].argmax(1)
    correct = np.zeros(len(ids), dtype=bool)
    keys = np.stack([first, last], axis=1)
    for key in np.unique(keys, axis=0):
        rows = np.flatnonzero((keys == key).all(1))
        start, stop = int(key[0]), int(key[1])
        prompt = ids[rows, : start + 1]  # targets[t] is token t+1: the first answer token follows ids[start]
        generated = decode(prompt, stop - start + 1)
        want, mask = targets[rows, start : stop + 1], supervised[rows, start : stop + 1]
        correct[rows] = ((generated == want) | ~mask).all(1)
    return correct


def free_running(model, ids: np.ndarray, targets: np.ndarray, n_real: np.ndarray, positions: PositionFn, device):
    """[B] bools: greedy generation (KV cache) from the prompt reproduces every supervised token."""
    return decoded_exact_match(
        ids, targets, lambda prompt, n_new: greedy_continuation(model, prompt, n_new, positions, device)
    )


def evaluate_bins(model, eval_sets, *, batch_size: int = 256, positions: PositionFn = default_positions,
                  device="cpu", greedy: bool = False, greedy_examples: int | None = None,
                  precision: str = "fp32") -> dict:
    """Accuracy per bin: {"accuracy": {bin: float}, "token_accuracy": {...}[, "accuracy_greedy": {...}]}."""
    was_training = model.training
    model.eval()
    try:
        with autocast(torch.device(device), precision):
            return _evaluate_bins(model, eval_sets, batch_size, positions, device, greedy, greedy_examples)
    finally:
        model.train(was_training)


def _evaluate_bins(model, eval_sets, batch_size, positions, device, greedy, greedy_examples) -> dict:
    result: dict[str, dict[str, float]] = {"accuracy": {}, "token_accuracy": {}}
    if greedy:
        result["accuracy_greedy"] = {}
    for es in eval_sets:
        hits, tok_ok, tok_all = [], 0, 0
        greedy_hits: list[np.ndarray] = []
        # free-running decoding is costlier: a subset spread evenly over the (length-sorted) bin
        stride = 1 if not greedy_examples else max(1, -(-len(es.examples) // greedy_examples))
        for ids, targets, n_real in es.batches(batch_size):
            ok, c, n = teacher_forced(model, ids, targets, positions, device)
            hits.append(ok)
            tok_ok, tok_all = tok_ok + c, tok_all + n
            if greedy:
                pick = slice(None, None, stride)
                greedy_hits.append(free_running(model, ids[pick], targets[pick], n_real[pick], positions, device))
        result["accuracy"][es.name] = float(np.concatenate(hits).mean())
        result["token_accuracy"][es.name] = tok_ok / max(1, tok_all)
        if greedy:
            result["accuracy_greedy"][es.name] = float(np.concatenate(greedy_hits).mean())
    return result
