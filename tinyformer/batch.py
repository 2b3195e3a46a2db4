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
