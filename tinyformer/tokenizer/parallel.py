"""Encoding many texts on all cores: threads, each with its own copy of the tokenizer whose C encoder lets go of
the GIL while it works (no processes to start, nothing to pickle).

What keeps two threads from being twice as fast is work done holding the GIL, so: texts go to the threads in a
few large groups (not one task per text), each group is encoded by one C call that lets go of the GIL once, and
a huge text is cut at safe places so that every thread has a share of it.
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from tinyformer.tokenizer.pretokenize import cut_rules

PARALLEL_MIN_CHARS = 1 << 18  # below this, handing work to threads costs more than it saves
GROUPS_PER_WORKER = 4  # a few groups per thread: balanced, yet few hand-offs
_VISIBLE = frozenset(chr(c) for c in range(0x21, 0x7F))


def encode_batch(
    tokenizer, texts: Sequence[str], allowed_special: str | Iterable[str] = (), num_workers: int | None = None
) -> list[list[int]]:
    """Ids of each text, in order; spread over `num_workers` threads when the batch is big."""
    texts = list(texts)
    if allowed_special != "all":
        allowed_special = frozenset([allowed_special] if isinstance(allowed_special, str) else allowed_special)
    tokenizer._allowed_splitter(allowed_special)  # an unknown special is an error before any thread starts
    workers = max(1, num_workers or os.cpu_count() or 1)
    total = sum(map(len, texts))
    if workers <= 1 or not texts or total < PARALLEL_MIN_CHARS:
        return tokenizer._encode_many(texts, allowed_special)
    n_groups = workers * GROUPS_PER_WORKER
    allowed = tuple(tokenizer.special_tokens) if allowed_special == "all" else tuple(allowed_special)
    line_cuts_ok = cut_rules(tuple(sorted(allowed)))[0]
    size = total // n_groups
    cut = line_cuts_ok and any(len(text) >= 2 * size for text in texts)
    pieces, owners = texts, None
    if cut:
        pieces, owners = [], []
        for k, text in enumerate(texts):
            for piece in _cut(text, size, line_cuts_ok):
                pieces.append(piece)
                owners.append(k)
    local = threading.local()

    def encode_group(group: list[str]) -> list[list[int]]:
        if not hasattr(local, "tokenizer"):
            local.tokenizer = tokenizer.thread_copy()
        return local.tokenizer._encode_many(group, allowed_special)

    with ThreadPoolExecutor(workers, thread_name_prefix="tinyformer-encode") as pool:
        encoded = [ids for group in pool.map(encode_group, _groups(pieces, n_groups)) for ids in group]
    if owners is None:
        return encoded
    out: list[list[int] | None] = [None] * len(texts)
    for k, ids in zip(owners, encoded):
        if out[k] is None:
            out[k] = ids
        else:
            out[k].extend(ids)
    return out


def _groups(pieces: list[str], n_groups: int) -> list[list[str]]:
    """Consecutive runs of `pieces` with about equal numbers of characters."""
    ends = list(itertools.accumulate(map(len, pieces)))
    bounds = [0] + [bisect.bisect_left(ends, ends[-1] * g // n_groups) + 1 for g in range(1, n_groups)] + [len(pieces)]
    return [pieces[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _cut(text: str, size: int, line_cuts_ok: bool) -> list[str]:
    """`text` in pieces of about `size` characters, cut only after a line end between two visible ASCII
    characters, the second not '/' (where the pre-tokenizers always split), so the pieces' ids join to the text's."""
    if not line_cuts_ok or len(text) < 2 * size:
        return [text]
    pieces, start = [], 0
    while len(text) - start >= 2 * size:
        i = text.find("\n", start + size)
        while i > 0 and i + 1 < len(text) and not (
                text[i - 1] in _VISIBLE and text[i + 1] in _VISIBLE and text[i + 1] != "/"):
            i = text.find("\n", i + 1)
        if i <= 0 or i + 1 >= len(text):
            break
        pieces.append(text[start:i + 1])
        start = i + 1
    pieces.append(text[start:])
    return pieces
