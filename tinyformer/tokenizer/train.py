"""BPE training: count pre-tokens (streaming, all cores), then merge the most frequent pair, updated incrementally.

The merge loop runs in C (`_bpe.c`) when the extension is built and in pure Python otherwise; both apply the
same rule, so they produce identical merges: the most frequent adjacent pair wins, ties go to the
lexicographically greater pair compared as (bytes of left, bytes of right).
"""

from __future__ import annotations

import heapq
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import regex

from tinyformer.errors import TinyformerError
from tinyformer.fileio import require_file
from tinyformer.tokenizer._native import _bpe  # None: the pure-Python merge loop gives the same merges
from tinyformer.tokenizer.pretokenize import GPT2_PATTERN, count_pretokens, resolve_pattern
from tinyformer.tokenizer.tokenizer import Tokenizer

_INVERT = bytes(range(255, -1, -1))


def _tie_key(left: bytes, right: bytes) -> str:
    """A string that sorts the greater (left, right) byte pair first, for a min-heap.

    Bytes are inverted (b -> 255-b) and hex-written, each part ends with 'z' (above every hex digit) so a
    prefix sorts after its extensions, i.e. the shorter, smaller byte string comes later.
    """
    return left.translate(_INVERT).hex() + "z" + right.translate(_INVERT).hex() + "z"


def train_merges_python(
    words: Sequence[bytes], counts: Sequence[int], num_merges: int, progress: Callable[[int], None] | None = None
) -> list[tuple[int, int]]:
    """The merge loop in pure Python: pair counts + pair -> words index + a heap with lazy invalidation.

    Returns the merged id pairs in rank order; id 256+i is the result of merge i.
    """
    token_bytes = [bytes([i]) for i in range(256)]
    seqs = [list(w) for w in words]
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for wi, seq in enumerate(seqs):
        c = counts[wi]
        for pair in zip(seq, seq[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + c
            where.setdefault(pair, set()).add(wi)

    def entry(pair: tuple[int, int], count: int):
        return (-count, _tie_key(token_bytes[pair[0]], token_bytes[pair[1]]), pair)

    heap = [entry(p, c) for p, c in pair_counts.items() if c > 0]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges and heap:
        neg_count, _, pair = heapq.heappop(heap)
        current = pair_counts.get(pair, 0)
        if -neg_count != current:
            # Stale entry: counts only fall between pushes, so re-queue the lower count; a rise was pushed anew.
            if 0 < current < -neg_count:
                heapq.heappush(heap, entry(pair, current))
            continue
        new_id = 256 + len(merges)
        merges.append(pair)
        token_bytes.append(token_bytes[pair[0]] + token_bytes[pair[1]])
        before: dict[tuple[int, int], int] = {}
        for wi in sorted(where.pop(pair, ())):
            seq = seqs[wi]
            merged = _merge_pair(seq, pair, new_id)
            if len(merged) == len(seq):
                continue  # stale index entry: the pair left this word in an earlier merge
            c = counts[wi]
            for p in zip(seq, seq[1:]):
                before.setdefault(p, pair_counts[p])
                pair_counts[p] -= c
            for p in zip(merged, merged[1:]):
                before.setdefault(p, pair_counts.get(p, 0))
                pair_counts[p] = pair_counts.get(p, 0) + c
                if new_id in p:
                    where.setdefault(p, set()).add(wi)
            seqs[wi] = merged
        for p, old in before.items():
            current = pair_counts[p]
            if current <= 0:
                del pair_counts[p]
                where.pop(p, None)
            elif current > old:
                heapq.heappush(heap, entry(p, current))
        if progress is not None:
            progress(1)
    return merges


def _merge_pair(seq: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """`seq` with every occurrence of `pair`, scanned left to right, replaced by `new_id`."""
    a, b = pair
    out = []
    i, n = 0, len(seq)
    while i < n:
        if i + 1 < n and seq[i] == a and seq[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def train_bpe(
    paths_or_texts: str | os.PathLike | Sequence[str | os.PathLike],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    pattern: str = GPT2_PATTERN,
    *,
    num_workers: int | None = None,
    errors: str = "strict",
    progress: bool | None = None,
    use_c: bool | None = None,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer of `vocab_size` ids (256 bytes + merges + special tokens).

    `paths_or_texts`: file paths (pathlib.Path, or a str that names a file or looks like a path such as
    "corpus.txt"; a missing one is an error) or in-memory texts (other str).
    `pattern`: 'gpt2', 'gpt4' or a regex. `errors`: 'strict' (non-UTF-8 input is an error naming the file and
    byte offset) or 'replace'. `use_c`: None = the C extension when built, False = pure Python, True = require C.
    """
    special_tokens = list(special_tokens)
    _check_specials(special_tokens)
    num_merges = vocab_size - 256 - len(special_tokens)
    if num_merges < 0:
        raise TinyformerError(
            f"vocab size {vocab_size} is too small: it must cover 256 byte tokens + {len(special_tokens)} "
            f"special token(s), so at least {256 + len(special_tokens)}"
        )
    if errors not in ("strict", "replace"):
        raise TinyformerError(f"errors must be 'strict' or 'replace', got {errors!r}")
    pattern = resolve_pattern(pattern)
    inputs, is_text = _classify_inputs(paths_or_texts)
    counts = count_pretokens(inputs, pattern, special_tokens, num_workers, is_text, errors, progress)
    # Sorted so the merge loop sees the same word order whatever the input order and core count.
    items = sorted((w.encode("utf-8", errors="surrogatepass"), c) for w, c in counts.items())
    words = [w for w, _ in items]
    freqs = [c for _, c in items]
    del counts, items
    merge_ids = run_merges(words, freqs, num_merges, use_c=use_c, progress=progress)
    token_bytes = [bytes([i]) for i in range(256)]
    merges = []
    for a, b in merge_ids:
        merges.append((token_bytes[a], token_bytes[b]))
        token_bytes.append(token_bytes[a] + token_bytes[b])
    return Tokenizer(merges, special_tokens, pattern)


def run_merges(
    words: Sequence[bytes], counts: Sequence[int], num_merges: int, use_c: bool | None = None, progress=None
) -> list[tuple[int, int]]:
    """The merge loop on distinct pre-tokens `words` with their `counts`, in C when available."""
    if use_c and _bpe is None:
        raise TinyformerError("the C extension tinyformer.tokenizer._bpe is not built; reinstall with a C compiler")
    bar = _merge_bar(num_merges, progress)
    try:
        if _bpe is not None and use_c is not False:
            return _bpe.train_merges(list(words), list(counts), num_merges, bar.update if bar else None)
        return train_merges_python(words, counts, num_merges, bar.update if bar else None)
    finally:
        if bar:
            bar.close()


def _merge_bar(num_merges: int, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty() and num_merges >= 2000
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=num_merges, desc="merges", unit="merge", file=sys.stderr, leave=False, mininterval=0.5)


def _check_specials(special_tokens: Sequence[str]) -> None:
    for s in special_tokens:
        if not isinstance(s, str) or not s:
            raise TinyformerError("special tokens must be non-empty strings; remove the empty special token")
    dup = {s for s in special_tokens if special_tokens.count(s) > 1}
    if dup:
        raise TinyformerError(f"special token {sorted(dup)[0]!r} is given twice; list each special token once")


def _classify_inputs(paths_or_texts) -> tuple[list, bool]:
    """(inputs, is_text): a list of files, or a list of in-memory texts; files are checked for readability."""
    items = [paths_or_texts] if isinstance(paths_or_texts, (str, os.PathLike)) else list(paths_or_texts)
    if not items:
        raise TinyformerError("no training input given; pass at least one file or text")
    is_file = [isinstance(x, os.PathLike) or (isinstance(x, str) and _looks_like_file(x)) for x in items]
    pathish = [f or (x.isprintable() and _PATH_LIKE.fullmatch(x) is not None) for f, x in zip(is_file, map(str, items))]
    if all(pathish):  # files (a missing one gets the usual one-line error)
        return [require_file(x) for x in items], False
    if any(is_file):
        raise TinyformerError("train_bpe got a mix of file paths and texts; pass either files or texts")
    return [str(x) for x in items], True


# A string with no whitespace that ends in a file extension or holds a path separator ("corpus.txt",
# "data/x") is taken to name a file, so a mistyped path is an error rather than a tiny training text.
_PATH_LIKE = regex.compile(r"\S*[/\\]\S*|\S+\.[A-Za-z0-9]{1,5}")


def _looks_like_file(s: str) -> bool:
    try:
        return len(s) < 4096 and "\n" not in s and Path(s).is_file()
    except (OSError, ValueError):  # too long for a file name, or a NUL byte: it is text
        return False
