"""Copy tasks: `<bos> s1..sL <sep> t1..tL <eos>`, the target is the source forward or backward.

UF/UB (unique copy): n = 150 symbols drawn without replacement. NF/NB (non-unique copy): n = 5 symbols
drawn with replacement. Supervised: every target token and `<eos>`.
"""

from __future__ import annotations

import numpy as np

from tinyformer.tasks.base import Task, columns, distinct_symbols, gather, source_target_layout
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
