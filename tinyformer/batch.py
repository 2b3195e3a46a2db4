"""The batch contract between batch sources (token files, task streams) and the model.

A batch is a dict of `[B, T]` tensors: `ids`, `targets` (token t+1 at t; IGNORE_INDEX where nothing is
predicted), optional `position_ids` and `attention_mask`. Position ids that depend on the tokens
(Abacus) are computed here, on the data side, so every batch source and evaluator uses one definition.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100  # targets with this value carry no loss and count in no accuracy


def run_positions(is_member: np.ndarray) -> np.ndarray:
    """Abacus ids (McLeish et al., 2024): the 1-based index of each member token (a digit, a task symbol)
    inside its run of consecutive members, 0 for every other token. `is_member` is a bool array [..., T].

    In `<bos> s1..sL <sep> t1..tL <eos>` the i-th source and the i-th target token share id i, so digits at
    the same place of different numbers share an embedding.
    """
    is_member = np.asarray(is_member, dtype=bool)
    count = np.cumsum(is_member, axis=-1)
    # the count at the last non-member before each cell; subtracting it restarts the index at every run
    reset = np.maximum.accumulate(np.where(is_member, 0, count), axis=-1)
    return np.where(is_member, count - reset, 0)


def offset_positions(position_ids: np.ndarray, real: np.ndarray, table_size: int, rng: np.random.Generator,
                     members_only: bool) -> np.ndarray:
    """Training-time random offsets for a position table (learned or Abacus): each row's ids shifted by a
    uniform offset as large as keeps its last real position inside the table, so every position up to the
    longest evaluated input is trained while evaluation starts at 0. `members_only` (Abacus): ids of 0
    (tokens outside a run) stay 0. Padding cells are clipped into the table."""
    top = np.where(real, position_ids, 0).max(1)
    offsets = rng.integers(0, table_size - top)
    shifted = position_ids + offsets[:, None]
    out = np.where(position_ids > 0, shifted, 0) if members_only else shifted
    np.minimum(out, table_size - 1, out=out)
    return out


def randomized_positions(position_ids: np.ndarray, real: np.ndarray, table_size: int, rng: np.random.Generator,
                         members_only: bool) -> np.ndarray:
    """Randomized positions (Ruoss et al., 2023): each row's ids 0..m (or 1..m with `members_only`, where 0
    marks tokens outside every run and stays 0) replaced, in order, by a sorted random subset of
    [0, table_size) (of [1, table_size)), drawn per row. Distances between tokens then vary beyond those of
    the training lengths while order is kept; evaluation uses the ids as counted. Padding cells get the row's
    largest id. Needs m + 1 <= table_size (the caller checks it)."""
    low = 1 if members_only else 0
    top = np.where(real, position_ids, low).max(1)  # the largest id of each row
    width = table_size - low
    count = top - low + 1  # ids to draw per row
    draws = np.argsort(rng.random((len(position_ids), width)), axis=1)[:, : int(count.max(initial=0))]
    draws = np.where(np.arange(draws.shape[1])[None, :] < count[:, None], draws, width)  # unused draws last
    subset = np.sort(draws, axis=1) + low  # [B, max count]: row i's first count[i] entries are its ids
    index = np.clip(position_ids - low, 0, count[:, None] - 1)
    out = np.take_along_axis(subset, index, axis=1)
    return np.where(position_ids >= low, out, 0) if members_only else out


MIN_GROUP_ROWS = 8  # rows below which a group's matmuls lose more than its trimmed padding saves
GROUP_SLACK = 0.10  # more groups only when they cut the computed positions by more than this


def split_by_length(batch: dict, max_groups: int) -> list[dict]:
    """A training batch as sub-batches that compute the same loss with less padding.

    Under causal attention, a position after a row's last counted target changes nothing in its loss, so
    each row needs only its columns up to that target. Rows are grouped by that length (at most
    `max_groups` groups of equal row count, sorted by length; the fewest groups within GROUP_SLACK of the
    least padding), each group cut to its own longest row, and rows with no counted target are left out.
    A batch where every row needs every column (language-model text) comes back as it is. Feed the parts
    with the whole batch's `target_counts` so their losses add up to the batch's loss.

    `batch`: torch tensors `ids`, `targets` [B, T], optional `position_ids` ([T] or [B, T]) and
    `attention_mask` [B, T].
    """
    import torch

    targets = batch["targets"]
    width = targets.shape[1]
    columns = torch.arange(1, width + 1, device=targets.device)
    need = torch.where(targets != IGNORE_INDEX, columns, 0).amax(1)  # columns each row needs
    if int(need.min()) == width or int(need.max()) == 0:
        return [batch]
    order = torch.argsort(need, stable=True)
    order = order[need[order] > 0]
    n = len(order)
    options = []
    for k in range(1, max(1, max_groups) + 1):
        if k > 1 and n // k < MIN_GROUP_ROWS:
            break
        bounds = [n * i // k for i in range(k + 1)]
        cost = sum((bounds[i + 1] - bounds[i]) * int(need[order[bounds[i + 1] - 1]]) for i in range(k))
        options.append((cost, bounds))
    least = min(cost for cost, _ in options)
    bounds = next(b for cost, b in options if cost <= least * (1 + GROUP_SLACK))
    parts = []
    for lo, hi in zip(bounds, bounds[1:]):
        rows = order[lo:hi].sort().values  # the batch's own row order within a group
        cut = int(need[rows].max())
        parts.append({k: v[:cut] if v.dim() == 1 else v[rows, :cut] for k, v in batch.items()})
    return parts
