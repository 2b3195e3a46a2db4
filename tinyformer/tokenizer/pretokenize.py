"""Pre-tokenization: split special tokens out, cut text into regex pre-tokens, count them over big files in parallel.

Files are read in blocks cut at places where the GPT-2/GPT-4/o200k patterns always split (right after a special
token, or at a line end between two visible ASCII characters, the second not '/'), so a chunked count equals a
whole-file count.
"""

from __future__ import annotations

import array
import functools
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import regex

from tinyformer.errors import TinyformerError
from tinyformer.tokenizer._native import _bpe  # None without the C extension: the regex does it all

# The pre-tokenizer regexes of GPT-2 and of GPT-4 (cl100k_base), as published by OpenAI. GPT-4's splits text
# as tiktoken's current cl100k_base does, including `\s++$` (whitespace that ends the text stays one piece:
# "a \n " -> "a", " \n "); it is spelled without `{1,3}+`, which Oniguruma (HF tokenizers) misreads.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s++$|\s*[\r\n]|\s+(?!\S)|\s+"""
)
# o200k_base's (GPT-4o), as tiktoken publishes it.
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "o200k": O200K_PATTERN}

BLOCK_BYTES = 1 << 20  # 1 MiB per work item: amortises process hand-off, balances load, keeps memory small
MAX_BLOCK_BYTES = 1 << 26  # a block with no safe cut grows to at most this before it is cut at any line end


def resolve_pattern(pattern: str) -> str:
    """'gpt2' / 'gpt4' / 'o200k' or a regex of one's own; a regex that does not compile is a one-line error."""
    pattern = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise TinyformerError(f"pre-tokenizer pattern does not compile: {exc}; use gpt2, gpt4, o200k or a valid regex") from None
    return pattern


def special_splitter(special_tokens: Iterable[str]) -> regex.Pattern | None:
    """A regex that finds special tokens, longest first, so overlapping specials resolve to the longest match."""
    specials = sorted(set(special_tokens), key=lambda s: (-len(s), s))
    if not specials:
        return None
    return regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")


def fast_pattern_kind(pattern: str) -> int:
    """2, 4 or 200 when the C extension can pre-tokenize this pattern itself (GPT-2 / GPT-4 / o200k), else 0."""
    if _bpe is None:
        return 0
    kind = {GPT2_PATTERN: 2, GPT4_PATTERN: 4, O200K_PATTERN: 200}.get(pattern, 0)
    if kind == 200 and any(c & 8 and c & 16 for c in ascii_classes()):
        return 0  # the C scan assumes no ASCII character is in both of o200k's letter sets
    return kind


@functools.cache
def ascii_classes() -> bytes:
    """For each ASCII character, as the regex module itself decides: 1 = \\s, 2 = \\p{L}, 4 = \\p{N},
    8 = [\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}], 16 = [\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}] (o200k's two letter sets)."""
    classes = (r"\s", r"\p{L}", r"\p{N}", r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]")
    return bytes(sum(1 << bit for bit, cls in enumerate(classes) if regex.match(cls, chr(c))) for c in range(128))


@functools.cache
def unicode_classes() -> tuple[bytes, list[tuple[int, str]]]:
    """The classes of `ascii_classes` for every code point, and the non-ASCII characters that a case-insensitive
    contraction letter matches ((?i)s matches U+017F), as the regex module decides: the C pre-tokenizer then
    splits text of any script itself. Made on first need (about 0.15 s)."""
    every = array.array("I", range(0x110000)).tobytes().decode("utf-32-le", "surrogatepass")
    classes = (r"\s", r"\p{L}", r"\p{N}", r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]")
    table = 0  # the bit sets of all code points as one big int: OR-ing whole tables is then one operation
    for bit, cls in enumerate(classes):
        marks, value = bytearray(0x110000), bytes([1 << bit])
        for match in regex.finditer(cls + "+", every):
            start, end = match.span()
            marks[start:end] = value * (end - start)
        table |= int.from_bytes(marks, "big")
    folds = [(m.start() + 128, letter) for m in regex.finditer("(?i)[sdmtlver]", every[128:])
             for letter in "sdmtlver" if regex.fullmatch(f"(?i){letter}", m.group())]
    return table.to_bytes(0x110000, "big"), folds


def count_pretokens_in_text(
    text: str, pattern: regex.Pattern, splitter: regex.Pattern | None, counts: Counter | None = None
) -> Counter:
    """Counts of pre-tokens (as str) in `text`, special tokens removed first; added to `counts` if given."""
    pieces = [text] if splitter is None else splitter.split(text)[::2]  # even positions are ordinary text
    counts = Counter() if counts is None else counts
    kind = fast_pattern_kind(pattern.pattern)
    if kind:
        # The C pre-tokenizer counts ASCII stretches itself and hands the rest to the regex.
        classes = ascii_classes()
        for piece in pieces:
            _bpe.count_fast(piece, classes, kind, counts, lambda part: counts.update(pattern.findall(part)))
        return counts
    for piece in pieces:
        counts.update(pattern.findall(piece))
    return counts


# ---------------------------------------------------------------------------------------------- file blocks

_VISIBLE = frozenset(range(0x21, 0x7F))
_VISIBLE_AFTER = _VISIBLE - {ord("/")}  # o200k's punctuation pre-tokens go on over a line end and '/'


@functools.cache
def cut_rules(specials: tuple[str, ...]) -> tuple[bool, bool]:
    """(line ends are safe cuts, special-token ends are safe cuts) for this set of special tokens.

    A line end is unsafe when a special token contains one (the cut could split it); a special token's end
    is unsafe when specials can overlap or contain each other (an occurrence might not be a real match).
    """
    line_ok = not any("\n" in s for s in specials)
    special_ok = all(
        (a == b or a not in b) and not any(b.startswith(a[k:]) for k in range(1, len(a)))
        for a in specials for b in specials
    )
    return line_ok, special_ok


_VISIBLE_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))
_VISIBLE_CHARS_AFTER = _VISIBLE_CHARS - {"/"}  # a line end before '/' is no sure split for o200k


def stream_cut(buf: str, limit: int, splitter: regex.Pattern | None, rules: tuple[bool, bool]) -> int:
    """The last place before `limit` where the text `buf` can be cut without changing its encoding; 0 if none."""
    line_ok, special_ok = rules
    if line_ok:
        i = buf.rfind("\n", 0, limit)
        while i > 0:
            if buf[i - 1] in _VISIBLE_CHARS and buf[i + 1] in _VISIBLE_CHARS_AFTER:
                return i + 1
            i = buf.rfind("\n", 0, i)
    if special_ok and splitter is not None:
        ends = [m.end() for m in splitter.finditer(buf) if m.end() <= limit]
        if ends:
            return ends[-1]
    return 0


def _safe_cut(block: bytes, specials: Sequence[bytes], force: bool, rules: tuple[bool, bool] = (True, True)) -> int:
    """The last byte offset at which `block` can be cut without changing pre-tokenization; 0 if none."""
    line_ok, special_ok = rules
    cut = 0
    if special_ok:
        for sp in specials:
            i = block.rfind(sp)
            if i >= 0:
                cut = max(cut, i + len(sp))
    i = len(block) - 1
    while line_ok:
        i = block.rfind(b"\n", 0, i)
        if i <= 0 or i + 1 <= cut:
            break
        if block[i - 1] in _VISIBLE and block[i + 1] in _VISIBLE_AFTER:
            return i + 1
    if cut:
        return cut
    if force:  # no safe place in a huge block: a line end, else a UTF-8 character boundary
        i = block.rfind(b"\n")
        if i > 0:
            return i + 1
        i = len(block) - 1
        while i > 0 and (block[i] & 0xC0) == 0x80:
            i -= 1
        return i or len(block)
    return 0


def _first_safe_cut(window: bytes, specials: Sequence[bytes], rules: tuple[bool, bool]) -> int:
    """The first offset in `window` (past 0) where it can be cut safely; 0 if none."""
    line_ok, special_ok = rules
    best = 0
    if special_ok:
        found = [window.find(sp) + len(sp) for sp in specials if window.find(sp) >= 0]
        best = min(found, default=0)
    i = 0
    while line_ok:
        i = window.find(b"\n", i + 1)
        if i < 0 or i + 1 >= len(window) or (best and i + 1 >= best):
            break
        if window[i - 1] in _VISIBLE and window[i + 1] in _VISIBLE_AFTER:
            return i + 1
    return best


def split_file(path: str | os.PathLike, parts: int, specials: Sequence[str]) -> list[tuple[int, int]]:
    """Byte ranges [start, end) covering the file, about `parts` of them, each cut at a safe place."""
    size = os.path.getsize(path)
    special_bytes = [s.encode("utf-8") for s in specials]
    rules = cut_rules(tuple(specials))
    bounds = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            start = max(size * k // parts, bounds[-1])
            f.seek(start)
            window = f.read(min(BLOCK_BYTES, MAX_BLOCK_BYTES))
            cut = _first_safe_cut(window, special_bytes, rules) if window else 0
            if cut and start + cut < size:
                bounds.append(start + cut)
    bounds.append(size)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def iter_blocks(
    path: str | os.PathLike,
    specials: Sequence[str],
    block_bytes: int | None = None,
    start: int = 0,
    end: int | None = None,
) -> Iterator[tuple[int, bytes]]:
    """(byte offset, block) pieces of a file (or of its range [start, end)), streamed, cut only at safe places."""
    block_bytes = block_bytes or BLOCK_BYTES
    special_bytes = [s.encode("utf-8") for s in specials]
    rules = cut_rules(tuple(specials))
    pending = b""
    offset = start
    try:
        f = open(path, "rb")  # noqa: SIM115 - the generator closes it
    except OSError as exc:
        raise TinyformerError(f"cannot read input {path}: {exc.strerror}") from None
    with f:
        f.seek(start)
        remaining = None if end is None else end - start
        while True:
            want = block_bytes if remaining is None else min(block_bytes, remaining - len(pending) - (offset - start))
            data = f.read(want) if want > 0 else b""
            if not data:
                break
            pending += data
            if len(pending) < block_bytes:
                continue
            cut = _safe_cut(pending, special_bytes, len(pending) >= MAX_BLOCK_BYTES, rules)
            if cut:
                yield offset, pending[:cut]
                offset += cut
                pending = pending[cut:]
    if pending:
        yield offset, pending


def decode_block(block: bytes, path: str, offset: int, errors: str) -> str:
    """UTF-8 text of a block; a strict decode error names the file and the absolute byte offset."""
    try:
        return block.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise TinyformerError(
            f"input {path} is not valid UTF-8 at byte offset {offset + exc.start}; "
            "fix the file or pass --errors replace"
        ) from None


def _count_range(job: tuple[str, int, int | None, str, str, tuple[str, ...], bool]) -> Counter:
    """Counts over the byte range [start, end) of a file, streamed in blocks (or over one in-memory text)."""
    source, start, end, errors, pattern, specials, is_text = job
    compiled, splitter = _compiled(pattern), special_splitter(specials)
    counts: Counter = Counter()
    if is_text:
        return count_pretokens_in_text(source, compiled, splitter, counts)
    for offset, block in iter_blocks(source, specials, start=start, end=end):
        count_pretokens_in_text(decode_block(block, source, offset, errors), compiled, splitter, counts)
    return counts


_PATTERN_CACHE: dict[str, regex.Pattern] = {}


def _compiled(pattern: str) -> regex.Pattern:
    if pattern not in _PATTERN_CACHE:
        _PATTERN_CACHE[pattern] = regex.compile(pattern)
    return _PATTERN_CACHE[pattern]


def count_pretokens(
    inputs: Sequence[str | os.PathLike],
    pattern: str,
    special_tokens: Sequence[str] = (),
    num_workers: int | None = None,
    is_text: bool = False,
    errors: str = "strict",
    progress: bool | None = None,
) -> Counter:
    """Pre-token counts (str -> count) over files (or in-memory texts), in parallel, streaming the files.

    Each worker streams its own byte ranges of the files (cut at safe places) and sends back one count table,
    so the result does not depend on `num_workers` and memory is bounded by the distinct pre-tokens.
    """
    specials = tuple(special_tokens)
    workers = num_workers or os.cpu_count() or 1
    sizes = [len(str(t)) for t in inputs] if is_text else [Path(p).stat().st_size for p in inputs]
    parallel = workers > 1 and sum(sizes) > 2 * BLOCK_BYTES
    jobs = []
    for item, size in zip(inputs, sizes):
        if is_text:
            jobs.append((str(item), 0, None, errors, pattern, specials, True))
            continue
        parts = max(1, round(2 * workers * size / sum(sizes))) if parallel else 1  # 2 per worker: balance
        for start, end in split_file(item, parts, specials) if parts > 1 else [(0, None)]:
            jobs.append((str(item), start, end, errors, pattern, specials, False))
    bar = _progress_bar(sum(sizes), "pre-tokenize", progress)
    counts: Counter = Counter()
    results = parallel_map(_count_range, jobs, workers, size=_job_size) if parallel else (
        (_count_range(job), _job_size(job)) for job in jobs)
    for part, n_bytes in results:
        if counts:
            counts.update(part)
        else:
            counts = part
        bar.update(n_bytes)
    bar.close()
    return counts


def _job_size(job) -> int:
    source, start, end, *_, is_text = job
    return len(source) if is_text else (end if end is not None else os.path.getsize(source)) - start


def parallel_map(fn, jobs: Iterable, workers: int, size=len, in_flight_per_worker: int = 2) -> Iterator:
    """Ordered (fn(job), size(job)) over a process pool with at most workers*in_flight jobs in memory."""
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pending: list = []
    with ctx.Pool(workers) as pool:
        for job in jobs:
            pending.append((pool.apply_async(fn, (job,)), size(job)))
            while len(pending) >= workers * in_flight_per_worker:
                result, n = pending.pop(0)
                yield result.get(), n
        while pending:
            result, n = pending.pop(0)
            yield result.get(), n


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, desc: str, enabled: bool | None):
    """A tqdm bar on stderr for long runs; off when asked, or (by default) when stderr is not a terminal."""
    import sys

    if enabled is None:
        enabled = sys.stderr.isatty() and total > 8 * BLOCK_BYTES
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, leave=False)
