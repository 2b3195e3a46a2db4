"""Encode text files into one token file on all cores, streaming: each worker process reads and encodes its own
byte ranges of the files and sends back their ids, which the parent writes in order (with a bounded number of
ranges in flight) while it checksums the files."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinyformer.data.tokenfile import DTYPES, TokenFileWriter, dtype_for_vocab, make_meta
from tinyformer.errors import TinyformerError
from tinyformer.fileio import require_file
from tinyformer.tokenizer.pretokenize import BLOCK_BYTES, decode_block, iter_blocks, split_file

IN_FLIGHT_PER_WORKER = 2  # ranges queued per worker: enough to keep it busy, few enough to bound memory
RANGES_PER_WORKER = 4  # at least this many ranges per worker, so the last ones finish close together
MAX_RANGE_BLOCKS = 8  # a range is at most this many blocks: bounds the ids held per range in flight

# Set in each worker process by `_init_worker` (inherited, not pickled, under fork).
_WORKER: dict[str, Any] = {}


def resolve_allowed_special(tokenizer, allowed: str | Iterable[str] | None) -> frozenset[str]:
    """'all' / 'none' / a comma-separated list / an iterable of special tokens -> the set to treat as special."""
    if allowed is None or allowed == "none":
        return frozenset()
    if allowed == "all":
        return frozenset(tokenizer.special_tokens)
    names = [s for s in allowed.split(",") if s] if isinstance(allowed, str) else list(allowed)
    unknown = [s for s in names if s not in tokenizer.special_tokens]
    if unknown:
        have = ", ".join(tokenizer.special_tokens) or "none"
        raise TinyformerError(f"--allowed-special names {', '.join(unknown)}, not special tokens of this tokenizer (it has: {have})")
    return frozenset(names)


def _init_worker(tokenizer, allowed: frozenset[str], dtype: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it cleans up
    _WORKER.update(tokenizer=tokenizer, allowed=allowed, dtype=dtype)


def _encode_range(job: tuple[str, int, int, str, int]) -> tuple[np.ndarray, int]:
    """(ids of the byte range [start, end) of a file, how many not-allowed special-token strings it holds).

    The worker reads the range itself, block by block, so only ids travel between processes.
    """
    path, start, end, errors, block_bytes = job
    tok, allowed, dtype = _WORKER["tokenizer"], _WORKER["allowed"], DTYPES[_WORKER["dtype"]]
    not_allowed = [s for s in tok.special_tokens if s not in allowed]
    parts, n_special_text = [], 0
    for offset, block in iter_blocks(path, sorted(allowed), block_bytes, start=start, end=end):
        text = decode_block(block, path, offset, errors)
        ids = tok.encode(text, allowed_special=allowed) if allowed else tok.encode_ordinary(text)
        parts.append(np.fromiter(ids, dtype=dtype, count=len(ids)))  # fromiter: faster than asarray(list)
        n_special_text += sum(text.count(s) for s in not_allowed)
    ids = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, dtype)
    return ids, n_special_text


def _ordered_map(fn: Callable, items: Iterable, workers: int, initargs: tuple) -> Iterator:
    """fn(job) for (key, job) items in a process pool, as (key, result) in input order; a None job passes through.

    At most workers * IN_FLIGHT_PER_WORKER items are in flight, so memory does not grow with the input.
    """
    if workers <= 1:
        _WORKER.update(zip(("tokenizer", "allowed", "dtype"), initargs))
        try:
            for key, job in items:
                yield key, None if job is None else fn(job)
        finally:
            _WORKER.clear()
        return
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pending: deque = deque()
    with ctx.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        for key, job in items:
            pending.append((key, None if job is None else pool.apply_async(fn, (job,))))
            while len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                key0, result = pending.popleft()
                yield key0, None if result is None else result.get()
        while pending:
            key0, result = pending.popleft()
            yield key0, None if result is None else result.get()


def encode_files(
    tokenizer,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    append_eot: bool = False,
    allowed_special: str | Iterable[str] | None = None,
    workers: int | None = None,
    force: bool = False,
    errors: str = "strict",
    progress: bool | None = None,
    block_bytes: int = BLOCK_BYTES,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Encode each input file as one document into the token file `out` (NAME.bin + NAME.json).

    The ids equal `tokenizer.encode(file_text, allowed_special)` per file, concatenated (with the
    `<|endoftext|>` id after each file when `append_eot`), whatever the number of workers. Returns the sidecar.
    """
    if errors not in ("strict", "replace"):
        raise TinyformerError(f"--errors must be strict or replace, not {errors!r}")
    if not inputs:
        raise TinyformerError("no input files given; name one or more text files to encode")
    paths = [require_file(p) for p in inputs]
    if append_eot and tokenizer.eot_id is None:
        raise TinyformerError(
            "--append-eot needs a tokenizer with the special token <|endoftext|>; this one has "
            f"{', '.join(tokenizer.special_tokens) or 'no special tokens'} (retrain with --special-tokens '<|endoftext|>')"
        )
    allowed = resolve_allowed_special(tokenizer, allowed_special)
    workers = max(1, workers or os.cpu_count() or 1)
    total_bytes = sum(p.stat().st_size for p in paths)
    if total_bytes <= block_bytes:
        workers = 1  # one block: a pool would only add start-up time
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    sources: list[dict[str, Any]] = []
    bar = _progress_bar(total_bytes, progress)
    start = time.perf_counter()
    n_special_text = 0
    with TokenFileWriter(out, tokenizer.vocab_size, force) as writer:
        per_range = total_bytes // (RANGES_PER_WORKER * workers)
        # One worker encodes in this process, range after range: a range of one block holds the least
        # memory and changes no id (ranges are cut where the encoding can be cut).
        range_bytes = block_bytes if workers == 1 else min(MAX_RANGE_BLOCKS * block_bytes, max(block_bytes, per_range))
        items = _jobs(paths, sorted(allowed), errors, block_bytes, range_bytes, sources)
        for n_bytes, result in _ordered_map(_encode_range, items, workers, (tokenizer, allowed, dtype)):
            if result is None:  # end of a document
                if append_eot:
                    writer.write([tokenizer.eot_id])
                continue
            ids, n_special = result
            writer.write(ids)
            n_special_text += n_special
            bar.update(n_bytes)
            if writer.n_tokens:
                bar.set_postfix_str(f"{bar.n / writer.n_tokens:.2f} B/token", refresh=False)
        bar.close()
        n_text_bytes = sum(s["n_bytes"] for s in sources)
        if n_text_bytes == 0:
            raise TinyformerError(f"the input{'s' if len(paths) > 1 else ''} contain no text; nothing to encode")
        meta = writer.commit(
            make_meta(
                writer.n_tokens,
                tokenizer.vocab_size,
                tokenizer_fingerprint=tokenizer.fingerprint,
                sources=sources,
                n_bytes=n_text_bytes,
                eot_id=tokenizer.eot_id,
                append_eot=append_eot,
                allowed_special=sorted(allowed),
            )
        )
    seconds = time.perf_counter() - start
    if log is not None:
        if n_special_text:
            log(
                f"note: the input contains special-token text {n_special_text} times, encoded as ordinary text; "
                "pass --allowed-special all to encode it as special tokens"
            )
        log(
            f"wrote {meta['n_tokens']:,} tokens ({dtype}) to {writer.path}: {n_text_bytes:,} bytes of text, "
            f"{meta['bytes_per_token']:.3f} bytes/token, {n_text_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s "
            f"on {workers} worker{'s' if workers > 1 else ''}"
        )
    return meta


def _jobs(
    paths: Sequence[Path], allowed: Sequence[str], errors: str, block_bytes: int, range_bytes: int,
    sources: list[dict[str, Any]],
) -> Iterator[tuple[int, tuple[str, int, int, str, int] | None]]:
    """(n_bytes, job) per byte range of each file, then (0, None) at the end of the file; fills `sources`.

    Ranges and the blocks inside them are cut only where pre-tokenization always splits; after a special
    token only when it is allowed (then the encoder splits there too), so per-range encodings concatenate to
    the whole-file one. The parent reads each range once more for the file's checksum as it hands it out,
    while the workers encode the ranges before it.
    """
    for path in paths:
        digest, n_bytes = hashlib.sha256(), 0
        size = path.stat().st_size
        parts = max(1, -(-size // range_bytes))
        ranges = split_file(path, parts, allowed) if parts > 1 else ([(0, size)] if size else [])
        with open(path, "rb") as f:
            for start, end in ranges:
                f.seek(start)
                while f.tell() < end and (block := f.read(min(BLOCK_BYTES, end - f.tell()))):
                    digest.update(block)
                n_bytes += end - start
                yield end - start, (str(path), start, end, errors, block_bytes)
        sources.append({"path": str(path), "sha256": digest.hexdigest(), "n_bytes": n_bytes})
        yield 0, None


class _NoBar:
    n = 0

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool | None):
    """A tqdm bar (bytes, and bytes per token so far) on stderr; by default only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="encode", unit="B", unit_scale=True, file=sys.stderr, leave=False)

