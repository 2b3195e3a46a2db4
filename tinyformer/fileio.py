"""Atomic, durable file and directory writes, a lock on an output directory, and checks on output paths, so a
failure never leaves partial output and two processes never write one directory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import socket
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


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory `path` (a rename into it, a new file) survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # a filesystem that cannot sync directories has nothing to make durable
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _make_parent(path: Path) -> None:
    """Create `path`'s parent; a directory created here is made durable in its own parent."""
    parent = path.parent
    if not parent.is_dir():
        parent.mkdir(parents=True, exist_ok=True)
        fsync_dir(parent.parent)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: str | os.PathLike | None) -> TinyformerError:
    """The one line for a full disk or an exhausted quota: which file, and what to do."""
    where = f" while writing {path}" if path else ""
    return TinyformerError(f"no space left on the device (or the disk quota is used up){where}; free some space, "
                           "then run the same command again (a run resumes from its last checkpoint)")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk met while writing `path` into a one-line error naming it."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise disk_full_error(path) from None
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Write to a temporary file beside `path`, fsync, then rename over it and fsync the directory; on error
    nothing is left (a full disk is a one-line error naming `path`)."""
    path = Path(path)
    with writing(path):
        _make_parent(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.chmod(tmp, _default_mode(directory=False))
            with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name beside `path` and rename it into place at the end (its
    entries synced before the rename, the rename synced after)."""
    path = Path(path)
    with writing(path):
        _make_parent(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            os.chmod(tmp, _default_mode(directory=True))
            yield tmp
            fsync_dir(tmp)
            if path.exists():
                if not force:
                    raise TinyformerError(f"output {path} already exists; pass --force to overwrite it")
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                fsync_dir(path.parent)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
                fsync_dir(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


LOCK_FILE = ".lock"


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, what: str = "directory") -> Iterator[None]:
    """Hold `directory`/.lock (an flock, with the holder's pid and host in the file) while the body runs, so
    a second process on the same directory refuses in one line naming the first. The kernel drops the lock
    of a process that dies, so a lock file a dead process left is simply taken over. A directory this
    creates is removed again when the body fails and leaves it empty."""
    directory = Path(directory)
    created = not directory.exists()
    if created:
        try:
            directory.mkdir(parents=True, exist_ok=True)  # another process may create it at the same moment
            fsync_dir(directory.parent)
        except OSError as exc:
            raise TinyformerError(f"cannot create {what} {directory}: {exc.strerror}") from None
    path = directory / LOCK_FILE
    fd = _take_lock(path, what)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the unlock: a process that opened the old file sees it replaced and retries
        os.close(fd)
        if created and failed:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty


def _take_lock(path: Path, what: str) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, _default_mode(directory=False))
        except OSError as exc:
            raise TinyformerError(f"cannot lock {what} {path.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise TinyformerError(f"cannot lock {what} {path.parent}: {exc.strerror}") from None
            raise TinyformerError(
                f"{what} {path.parent} is in use by another process ({holder}); wait for it to end or stop it, "
                f"or choose another directory"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file as we opened it: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "pid unknown"


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
