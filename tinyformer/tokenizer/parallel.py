"""Encoding many texts on all cores: threads, each with its own copy of the tokenizer whose C encoder and
regex release the GIL while they work (no processes to start, nothing to pickle)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

PARALLEL_MIN_CHARS = 1 << 18  # below this, handing work to threads costs more than it saves


def encode_batch(
    tokenizer, texts: Sequence[str], allowed_special: str | Iterable[str] = (), num_workers: int | None = None
) -> list[list[int]]:
    """Ids of each text, in order; spread over `num_workers` threads when the batch is big."""
    texts = list(texts)
    if allowed_special != "all":
        allowed_special = frozenset([allowed_special] if isinstance(allowed_special, str) else allowed_special)
    workers = min(num_workers or os.cpu_count() or 1, len(texts))
    if workers <= 1 or sum(map(len, texts)) < PARALLEL_MIN_CHARS:
        return [tokenizer.encode(t, allowed_special) for t in texts]
    local = threading.local()

    def encode_one(text: str) -> list[int]:
        if not hasattr(local, "tokenizer"):
            local.tokenizer = tokenizer.thread_copy()
        return local.tokenizer.encode(text, allowed_special)

    with ThreadPoolExecutor(workers, thread_name_prefix="tinyformer-encode") as pool:
        return list(pool.map(encode_one, texts))
