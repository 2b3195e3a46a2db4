"""Majority: `<bos> s1..sL <sep> m <eos>` over 3 symbols; the answer is the most frequent symbol (ties redrawn)."""

from __future__ import annotations

import numpy as np

from tinyformer.tasks.base import Task, answer_layout, columns, redraw_rejected
from tinyformer.tasks.registry import register_task


@register_task
class Majority(Task):
    name, n_symbols = "majority", 3
    single_answer = True  # <sep> a <eos>
    description = "majority: the symbol that occurs most often (sequences with a tie are redrawn)"

    def sequence_length(self, length: int) -> int:
        return length + 4

    def _draw(self, rng: np.random.Generator, lengths: np.ndarray, width: int):
        symbols = rng.integers(0, self.n_symbols, size=(len(lengths), width))
        inside = columns(width) < lengths[:, None]
        counts = np.stack([((symbols == s) & inside).sum(1) for s in range(self.n_symbols)], axis=1)
        top = np.sort(counts, axis=1)
        return symbols, top[:, -1] > top[:, -2], counts.argmax(1)

    def build(self, rng: np.random.Generator, lengths: np.ndarray):
        symbols, answer = redraw_rejected(self._draw, rng, lengths)
        return answer_layout(self, symbols, lengths, None, answer)
