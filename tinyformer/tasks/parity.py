"""Parity: `<bos> b1..bL <sep> p <eos>` over the symbols 0/1; the answer is the sum mod 2 (only it is supervised)."""

from __future__ import annotations

import numpy as np

from tinyformer.tasks.base import Task, answer_layout, columns
from tinyformer.tasks.registry import register_task


@register_task
class Parity(Task):
    name, n_symbols = "parity", 2
    single_answer = True  # <sep> a <eos>
    description = "parity: is the number of 1s in a bit string odd"

    def sequence_length(self, length: int) -> int:
        return length + 4

    def build(self, rng: np.random.Generator, lengths: np.ndarray):
        width = int(lengths.max())
        bits = rng.integers(0, 2, size=(len(lengths), width))
        inside = columns(width) < lengths[:, None]
        answer = (bits * inside).sum(1) % 2
        return answer_layout(self, bits, lengths, None, answer)
