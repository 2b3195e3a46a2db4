"""Sort: `<bos> s1..sL <sep> sorted(s) <eos>`, n = 150 symbols without replacement; supervised like copy.

This file is also the template for adding a task: subclass `Task`, set `name`, `n_symbols` and
`description`, implement `sequence_length` and a vectorized `build`, decorate with `@register_task`, and
import the file in `registry._load_builtin_tasks` (see docs/lengen.md).
"""

from __future__ import annotations

import numpy as np

from tinyformer.tasks.base import Task, columns, distinct_symbols, source_target_layout
from tinyformer.tasks.registry import register_task


@register_task
class Sort(Task):
    name, n_symbols = "sort", 150
    description = "sort: 150 symbols without replacement, output in increasing order"
    max_length = 150

    def sequence_length(self, length: int) -> int:
        return 2 * length + 3

    def build(self, rng: np.random.Generator, lengths: np.ndarray):
        width = int(lengths.max())
        source = distinct_symbols(rng, len(lengths), self.n_symbols, width)
        # cells past each row's length sort to the end, so the first L sorted cells are the answer
        beyond = columns(width) >= lengths[:, None]
        target = np.sort(np.where(beyond, self.n_symbols, source), axis=1)
        return source_target_layout(self, source, target, lengths)
