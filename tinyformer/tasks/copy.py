"""Copy tasks: `<bos> s1..sL <sep> t1..tL <eos>`, the target is the source forward or backward.

UF/UB (unique copy): n = 150 symbols drawn without replacement. NF/NB (non-unique copy): n = 5 symbols
drawn with replacement. Supervised: every target token and `<eos>`.

Position coupling (`--pe coupled`): source token i has id i, and the token that predicts target token i
(`<sep>` for the first, target i-1 after it) has the id of the source token it copies (i forward, n+1-i
backward), so attending to the key of equal id finds the symbol to write at any length. The last target,
which predicts `<eos>`, continues the count (n+1 forward, 0 backward); `<bos>` has 0.
"""

from __future__ import annotations

import numpy as np

from tinyformer.tasks.base import Task, columns, distinct_symbols, first_index, gather, source_target_layout
from tinyformer.tasks.registry import register_task


class CopyTask(Task):
    unique: bool = True
    backward: bool = False

    def __init__(self) -> None:
        if self.unique:
            self.max_length = self.n_symbols

    def sequence_length(self, length: int) -> int:
        return 2 * length + 3

    def build(self, rng: np.random.Generator, lengths: np.ndarray):
        width = int(lengths.max())
        if self.unique:
            source = distinct_symbols(rng, len(lengths), self.n_symbols, width)
        else:
            source = rng.integers(0, self.n_symbols, size=(len(lengths), width))
        if self.backward:
            target = gather(source, lengths[:, None] - 1 - columns(width))
        else:
            target = source
        return source_target_layout(self, source, target, lengths)

    def coupled_positions(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        j = columns(ids.shape[1])
        sep = first_index(ids, self.sep)  # n + 1; a prompt without <sep> is all source
        n = sep - 1
        # each token carries the id of its own place (Cho et al.): source token i -> i + 1, the copy of it the
        # same; <sep> holds the place just before the first copied one (1 forward, n + 2 backward), so the
        # query of every token finds the source token it predicts at its id +1 (forward) or -1 (backward),
        # where no other token visible to it sits
        out = np.where((j >= 1) & (j <= n), j + 1, 0)
        after = j - sep  # 0 at <sep>, k at target token k
        answer = n + 2 - after if self.backward else after + 1
        return np.where((after >= 0) & (after <= n), answer, out)


@register_task
class UF(CopyTask):
    name, n_symbols, unique, backward = "UF", 150, True, False
    description = "unique copy forward: 150 symbols without replacement, copied in order"


@register_task
class UB(CopyTask):
    name, n_symbols, unique, backward = "UB", 150, True, True
    description = "unique copy backward: 150 symbols without replacement, copied reversed"


@register_task
class NF(CopyTask):
    name, n_symbols, unique, backward = "NF", 5, False, False
    description = "non-unique copy forward: 5 symbols with replacement, copied in order"


@register_task
class NB(CopyTask):
    name, n_symbols, unique, backward = "NB", 5, False, True
    description = "non-unique copy backward: 5 symbols with replacement, copied reversed"
