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
