"""Retrieval tasks: `<bos> c1..cC <sep> q a <eos>`, the answer is a neighbour of the query in the context.

n = 5 symbols; the context length C is uniform in [max(4, lo), hi - 1] (the task length is C).
UL/UR: the query occurs exactly once, the answer is its left/right neighbour.
NLFirst/NRFirst/NLLast/NRLast: the context is drawn with replacement, the query is drawn from the context
and occurs at least twice; the answer is the left/right neighbour of its first/last occurrence (samples
where that neighbour does not exist are rejected and redrawn at the same length). Supervised: only the answer.

NLFirst-ref/NRFirst-ref/NLLast-ref/NRLast-ref follow the reference study's published code instead (the
published protocol's preset uses them): a rejected sample is redrawn with a new length, and NLFirst keeps
an example whose first occurrence is at context index 0, its answer then being the last context token (the
reference's wrap-around of index -1).
"""

from __future__ import annotations

import numpy as np

from tinyformer.tasks.base import Examples, Task, answer_layout, columns, redraw_rejected
from tinyformer.tasks.registry import register_task


class RetrievalTask(Task):
    n_symbols = 5
    query = True  # human-readable input: "context ? query", e.g. "0 3 1 4 ? 3"
    single_answer = True
    min_length = 4
    length_rule = "max(4, lo)..hi-1"
    side: int = -1  # -1: the answer is the left neighbour, +1: the right one

    def length_range(self, lo: int, hi: int) -> tuple[int, int]:
        return max(self.min_length, lo), hi - 1

    def sequence_length(self, length: int) -> int:
        return length + 5


class UniqueRetrieval(RetrievalTask):
    def build(self, rng: np.random.Generator, lengths: np.ndarray):
        n_rows, width = len(lengths), int(lengths.max())
        query = rng.integers(0, self.n_symbols, size=n_rows)
        # the other context tokens come from the remaining n - 1 symbols: draw from n - 1, skip the query
        others = rng.integers(0, self.n_symbols - 1, size=(n_rows, width))
        context = others + (others >= query[:, None])
        # the query's position leaves room for the neighbour on the answer side
        low = 1 if self.side < 0 else 0
        where = rng.integers(low, low + lengths - 1)
        rows = np.arange(n_rows)
        context[rows, where] = query
        answer = context[rows, where + self.side]
        return answer_layout(self, context, lengths, query, answer)


class NonUniqueRetrieval(RetrievalTask):
    last: bool = False  # the first (False) or last (True) occurrence of the query anchors the answer

    def _draw(self, rng: np.random.Generator, lengths: np.ndarray, width: int):
        n_rows = len(lengths)
        context = rng.integers(0, self.n_symbols, size=(n_rows, width))
        inside = columns(width) < lengths[:, None]
        counts = np.stack([((context == s) & inside).sum(1) for s in range(self.n_symbols)], axis=1)
        repeated = inside & (np.take_along_axis(counts, context, axis=1) >= 2)
        # the query is a uniformly drawn context position whose symbol occurs at least twice
        scores = np.where(repeated, rng.random((n_rows, width)), -1.0)
        query = np.take_along_axis(context, scores.argmax(1)[:, None], axis=1)[:, 0]
        hits = (context == query[:, None]) & inside
        first = hits.argmax(1)
        last = width - 1 - hits[:, ::-1].argmax(1)
        anchor = last if self.last else first
        neighbour = anchor + self.side
        ok = repeated.any(1) & (neighbour >= 0) & (neighbour < lengths)
        answer = context[np.arange(n_rows), np.clip(neighbour, 0, width - 1)]
        return context, ok, query, answer

    def build(self, rng: np.random.Generator, lengths: np.ndarray):
        context, query, answer = redraw_rejected(self._draw, rng, lengths)
        return answer_layout(self, context, lengths, query, answer)


class ReferenceRetrieval(NonUniqueRetrieval):
    """The reference code's rules: rejected samples redrawn at a new length; NLFirst wraps index -1."""

    redraws_length = True

    def _draw(self, rng: np.random.Generator, lengths: np.ndarray, width: int):
        context, ok, query, answer = super()._draw(rng, lengths, width)
        if self.side < 0 and not self.last:  # first occurrence at index 0: the answer is context[length - 1]
            rows = np.arange(len(lengths))
            hits = (context == query[:, None]) & (columns(width) < lengths[:, None])
            wrap = hits.argmax(1) == 0
            answer = np.where(wrap, context[rows, lengths - 1], answer)
            ok = ok | (wrap & (hits.sum(1) >= 2))  # kept when the query really repeats
        return context, ok, query, answer

    def sample(self, rng: np.random.Generator, lo: int, hi: int, count: int) -> Examples:
        first_len, last_len = self.check_range(lo, hi)
        lengths = rng.integers(first_len, last_len + 1, size=count)
        width = last_len
        context, ok, query, answer = self._draw(rng, lengths, width)
        for _ in range(1000):
            bad = np.flatnonzero(~ok)
            if bad.size == 0:
                break
            lengths[bad] = rng.integers(first_len, last_len + 1, size=bad.size)  # a new length, as the reference
            context[bad], ok[bad], query[bad], answer[bad] = self._draw(rng, lengths[bad], width)
        else:
            raise RuntimeError("rejection sampling did not converge")
        width = int(lengths.max())
        tokens, supervised = answer_layout(self, context[:, :width], lengths, query, answer)
        seq_lens = np.array([self.sequence_length(int(n)) for n in lengths], dtype=np.int64)
        return Examples(tokens.astype(np.int64), supervised, seq_lens, lengths)

    # `generate(rng, lengths)` (lengths fixed by the caller, e.g. to measure the longest input) keeps the
    # inherited same-length redraw; training and evaluation draw through `sample`, the reference's rule


@register_task
class UL(UniqueRetrieval):
    name, side = "UL", -1
    description = "unique retrieval left: the query occurs once; answer its left neighbour"


@register_task
class UR(UniqueRetrieval):
    name, side = "UR", +1
    description = "unique retrieval right: the query occurs once; answer its right neighbour"


@register_task
class NLFirst(NonUniqueRetrieval):
    name, side, last = "NLFirst", -1, False
    description = "non-unique retrieval: the left neighbour of the query's first occurrence"


@register_task
class NRFirst(NonUniqueRetrieval):
    name, side, last = "NRFirst", +1, False
    description = "non-unique retrieval: the right neighbour of the query's first occurrence"


@register_task
class NLLast(NonUniqueRetrieval):
    name, side, last = "NLLast", -1, True
    description = "non-unique retrieval: the left neighbour of the query's last occurrence"


@register_task
class NRLast(NonUniqueRetrieval):
    name, side, last = "NRLast", +1, True
    description = "non-unique retrieval: the right neighbour of the query's last occurrence"


@register_task
class NLFirstRef(ReferenceRetrieval):
    name, side, last = "NLFirst-ref", -1, False
    description = "NLFirst by the reference code's rules: index 0 wraps to the last context token; redraws change length"


@register_task
class NRFirstRef(ReferenceRetrieval):
    name, side, last = "NRFirst-ref", +1, False
    description = "NRFirst by the reference code's rules: a rejected sample is redrawn with a new length"


@register_task
class NLLastRef(ReferenceRetrieval):
    name, side, last = "NLLast-ref", -1, True
    description = "NLLast by the reference code's rules: a rejected sample is redrawn with a new length"


@register_task
class NRLastRef(ReferenceRetrieval):
    name, side, last = "NRLast-ref", +1, True
    description = "NRLast by the reference code's rules: a rejected sample is redrawn with a new length"
