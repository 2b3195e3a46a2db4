"""Atomic file and directory writes, and checks on output paths, so a failure never leaves partial output."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tinyformer.errors import TinyformerError


def _default_mode(directory: bool) -> int:
    """The permissions a plain open()/mkdir() would give under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def check_output(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an existing output unless `force`; make sure its parent can be written. Returns the path."""
    path = Path(path)
    if path.exists() and not force:
        raise TinyformerError(f"output {path} already exists; pass --force to overwrite it or choose another path")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TinyformerError(f"cannot create directory {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise TinyformerError(f"cannot write to {parent}: permission denied; choose a writable output path")
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Write to a temporary file beside `path`, fsync, then rename over it; on error nothing is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _default_mode(directory=False))
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name beside `path` and rename it into place at the end."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, _default_mode(directory=True))
        yield tmp
        if path.exists():
            if not force:
                raise TinyformerError(f"output {path} already exists; pass --force to overwrite it")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str = "input") -> Path:
    """A readable regular file, or a one-line error naming it."""
    path = Path(path)
    if not path.exists():
        raise TinyformerError(f"{what} {path} does not exist; check the path")
    if path.is_dir():
        raise TinyformerError(f"{what} {path} is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise TinyformerError(f"{what} {path} is not readable; check its permissions")
    return path
