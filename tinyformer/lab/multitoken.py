"""Accuracy of a multi-token-prediction model decoding k tokens per forward pass (heads 1..k at once).

A model with `n_predict = k` heads predicts tokens t+1..t+k at position t. Decoding k at a time appends the
argmax of every head at the last position, so an answer of n tokens takes ceil(n / k) passes instead of n.
Comparing exact match with k = 1 (head 1 alone, ordinary greedy decoding) and k = n_predict shows what the
extra heads cost in accuracy.
"""

from __future__ import annotations

import numpy as np
import torch

from tinyformer.lab.evaluate import PositionFn, decoded_exact_match, default_positions


@torch.no_grad()
def block_greedy(model, prompt: np.ndarray, n_new: int, k: int, positions: PositionFn = default_positions,
                 device="cpu") -> np.ndarray:
    """[B, n_new] tokens after `prompt` [B, P], appending the argmax of heads 1..k at each pass."""
    if not 1 <= k <= model.config.n_predict:
        raise ValueError(f"k={k} heads asked for, the model has n_predict={model.config.n_predict}")
    tokens = np.ascontiguousarray(prompt)
    out: list[np.ndarray] = []
    produced = 0
    while produced < n_new:
        ids = torch.from_numpy(tokens).to(device)
        pos = torch.from_numpy(np.ascontiguousarray(positions(tokens))).to(device)
        heads = model.head_logits(ids, position_ids=pos)
        take = min(k, n_new - produced)
        block = torch.stack([heads[j][:, -1].argmax(-1) for j in range(take)], dim=1).cpu().numpy()
        out.append(block)
        tokens = np.concatenate([tokens, block], axis=1)
        produced += take
    return np.concatenate(out, axis=1)


def block_exact_match(model, ids: np.ndarray, targets: np.ndarray, k: int,
                      positions: PositionFn = default_positions, device="cpu") -> np.ndarray:
    """[B] bools: decoding k tokens per pass from the prompt reproduces every supervised token (the
    prompt and grouping are those of `free_running`)."""
    return decoded_exact_match(
        ids, targets, lambda prompt, n_new: block_greedy(model, prompt, n_new, k, positions, device)
    )


def heads_accuracy(model, eval_sets, *, positions: PositionFn = default_positions, device="cpu",
                   batch_size: int = 256, max_examples: int | None = None) -> dict[str, dict[str, float]]:
    """{"1": {bin: acc}, "k": {bin: acc}}: exact match decoding 1 and k = n_predict tokens per pass."""
    k = model.config.n_predict
    was_training = model.training
    model.eval()
    result: dict[str, dict[str, float]] = {str(j): {} for j in sorted({1, k})}
    try:
        for es in eval_sets:
            stride = 1 if not max_examples else max(1, -(-len(es.examples) // max_examples))
            hits: dict[str, list[np.ndarray]] = {name: [] for name in result}
            for ids, targets, _ in es.batches(batch_size):
                ids, targets = ids[::stride], targets[::stride]
                for name in result:
                    hits[name].append(block_exact_match(model, ids, targets, int(name), positions, device))
            for name in result:
                result[name][es.name] = float(np.concatenate(hits[name]).mean())
    finally:
        model.train(was_training)
    return result
