"""Resumable, checksummed downloads: bytes go to NAME.part, an interrupted download continues where it
stopped (HTTP Range; file:// sources are read from the same offset), and NAME appears only once the
whole file is there and its SHA-256 matches."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write

CHUNK = 1 << 20
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of redirect responses: Hugging Face sends the file's SHA-256 (X-Linked-ETag) there."""

    def __init__(self) -> None:
        self.seen: list = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.seen.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, offset: int):
    """(stream, total size or None, server sha256 or None, whether it starts at `offset`)."""
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(url[len("file://") :]))
        if not path.is_file():
            raise TinyformerError(f"source {url} does not exist; check --url-base")
        f = open(path, "rb")  # noqa: SIM115 -- handed to the caller, which closes it
        f.seek(offset)
        return f, path.stat().st_size, None, True
    redirects = _RecordRedirects()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers={"User-Agent": "tinyformer"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = opener.open(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range past the end: the .part file is already whole (or wrong)
            return None, offset, None, True
        raise TinyformerError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TinyformerError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}; check the network or --url-base") from None
    resumed = offset > 0 and response.status == 206
    length = response.headers.get("Content-Length")
    total = (int(length) + (offset if resumed else 0)) if length else None
    server_sha = None
    for headers in [*redirects.seen, response.headers]:
        tag = (headers.get("X-Linked-ETag") or "").strip('"').lower()
        if HEX64.match(tag):
            server_sha = tag
    return response, total, server_sha, resumed or offset == 0


def _read(stream, url: str, done: int) -> bytes:
    """The next block of a download; a connection that breaks off is a one-line error (the bytes so far stay)."""
    try:
        return stream.read(CHUNK)
    except OSError as exc:
        raise TinyformerError(
            f"download of {url} broke off after {done:,} bytes ({exc}); run the command again to resume"
        ) from None


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[str, int]:
    """Fetch `url` to `dest`, continuing a `dest.part` left by an interrupted run. Returns (sha256, bytes
    already present before this call). A checksum mismatch deletes the partial file and is an error."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    stream, total, server_sha, continues = _open(url, offset)  # first: a source that fails creates nothing
    if not continues:  # the server ignored the Range request: start over
        offset = 0
    expected = (sha256 or server_sha or "").lower() or None
    digest = hashlib.sha256()
    if offset:
        with open(part, "rb") as f:
            while block := f.read(CHUNK):
                digest.update(block)
    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = offset
    try:
        if stream is not None:
            with stream, open(part, "ab" if offset else "wb") as out:
                while block := _read(stream, url, done):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
        if total is not None and done != total:
            raise TinyformerError(
                f"download of {url} stopped at {done} of {total} bytes; run the command again to resume"
            )
    except TinyformerError:
        if done == 0:  # nothing came: leave nothing behind (no empty .part, no directory made for it)
            _discard(part, created)
        raise
    got = digest.hexdigest()
    if expected and got != expected:
        _discard(part, created)
        raise TinyformerError(
            f"checksum mismatch for {dest.name}: expected {expected[:16]}..., got {got[:16]}...; the partial "
            "file was removed, run the command again"
        )
    os.replace(part, dest)
    return got, offset


def _discard(part: Path, created: list[Path]) -> None:
    """Remove a partial file and the directories made for it (innermost first; only those left empty)."""
    part.unlink(missing_ok=True)
    for d in created:
        with contextlib.suppress(OSError):
            d.rmdir()


def read_sums(path: Path) -> dict[str, str]:
    """`sha256sum`-format file -> {file name: hex digest}."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and HEX64.match(parts[0].lower()):
            out[parts[1].lstrip("*").removeprefix("./")] = parts[0].lower()
    return out


def write_sums(path: Path, sums: dict[str, str]) -> None:
    with atomic_write(path) as f:
        f.writelines(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
