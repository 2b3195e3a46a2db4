"""The merge rule in plain Python: byte orders, tiktoken's rank files as merge pairs, and the reference BPE
that runs where the C extension (`_bpe.c`) is not built. `Tokenizer` and the rank-file loader share them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tinyformer.errors import TinyformerError

IDENTITY_BYTES = tuple(range(256))


def check_byte_order(byte_order: Sequence[int] | None) -> tuple[int, ...]:
    if byte_order is None:
        return IDENTITY_BYTES
    order = tuple(int(b) for b in byte_order)
    if sorted(order) != list(IDENTITY_BYTES):
        raise TinyformerError("byte_order must list each of the 256 byte values once")
    return order


def inverse_byte_order(byte_order: Sequence[int]) -> list[int]:
    """The id of each byte value, from the byte value of each id."""
    ids = [0] * 256
    for i, b in enumerate(byte_order):
        ids[b] = i
    return ids


def all_splits(token_bytes: Sequence[bytes | None], id_of: Mapping[bytes, int]) -> dict[tuple[int, int], int]:
    """tiktoken's merge rule as pairs: (left id, right id) -> id, for every token and every cut of its bytes into
    two tokens (`id_of`: bytes -> id of the ordinary tokens; `token_bytes` in id order)."""
    pairs: dict[tuple[int, int], int] = {}
    get = id_of.get
    for token_id, token in enumerate(token_bytes):
        if token is None or id_of.get(token) != token_id:
            continue  # a special token, or a gap
        for k in range(1, len(token)):
            left = get(token[:k])
            if left is not None:
                right = get(token[k:])
                if right is not None:
                    pairs[(left, right)] = token_id
    return pairs


def bpe_python(data: bytes, ranks: Mapping[tuple[int, int], int], byte_ids: Sequence[int] | None = None,
               below: int = 1 << 62) -> list[int]:
    """BPE without the C extension: merge the leftmost adjacent pair with the lowest merged id (< `below`) until
    none is left."""
    ids = list(data) if byte_ids is None else [byte_ids[b] for b in data]
    while len(ids) >= 2:
        merged = [ranks.get(pair, below) for pair in zip(ids, ids[1:])]
        best = min(merged)
        if best >= below:
            break
        at = merged.index(best)
        ids[at:at + 2] = [best]
    return ids
