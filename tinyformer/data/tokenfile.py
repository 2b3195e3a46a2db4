"""Token files: a flat little-endian uint16/uint32 array `NAME.bin` plus a `NAME.json` sidecar that says
what it holds (dtype, token count, vocab size, tokenizer fingerprint, source checksums)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyformer.errors import TinyformerError
from tinyformer.fileio import check_output

FORMAT = "tinyformer-tokens"
VERSION = 1
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
REQUIRED_KEYS = ("format", "version", "dtype", "n_tokens", "vocab_size")


def dtype_for_vocab(vocab_size: int) -> str:
    """'uint16' when every id fits in 16 bits (vocab_size <= 65536), else 'uint32'."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def sidecar_path(path_bin: str | os.PathLike) -> Path:
    """NAME.json beside NAME.bin."""
    return Path(path_bin).with_suffix(".json")


def bin_path(path: str | os.PathLike) -> Path:
    """The `.bin` path of a token file given as NAME.bin, NAME.json or NAME."""
    path = Path(path)
    if path.suffix == ".json":
        return path.with_suffix(".bin")
    if path.suffix != ".bin" and not path.exists():
        return path.with_name(path.name + ".bin")
    return path


@dataclass(frozen=True)
class TokenFile:
    """A token file whose sidecar was read and checked once (`open_token_file`): its `.bin` path and sidecar
    dict. `tokens()` maps the ids again without reading the sidecar, so a run passes this along instead of
    re-reading the header for every check, batch source and evaluation."""

    path: Path
    meta: dict[str, Any]

    @property
    def n_tokens(self) -> int:
        return self.meta["n_tokens"]

    def tokens(self) -> np.ndarray:
        """A read-only memmap of the ids (an empty array for an empty file: numpy cannot map one)."""
        dtype = DTYPES[self.meta["dtype"]]
        if self.n_tokens == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", shape=(self.n_tokens,))


def open_token_file(path_bin: str | os.PathLike) -> TokenFile:
    """The token file at `path_bin`, its sidecar read and checked against the file's size; any inconsistency
    is a one-line error."""
    path = bin_path(path_bin)
    meta = read_sidecar(path)
    if not path.is_file():
        raise TinyformerError(f"token file {path} does not exist (its sidecar {sidecar_path(path)} does); re-create both")
    size = path.stat().st_size
    expected = meta["n_tokens"] * DTYPES[meta["dtype"]].itemsize
    if size != expected:
        raise TinyformerError(
            f"token file {path} has {size} bytes but its sidecar says {meta['n_tokens']} {meta['dtype']} tokens "
            f"({expected} bytes): the file is truncated or corrupt; re-create it with `tinyformer tokenizer encode`"
        )
    return TokenFile(path, meta)


def as_token_file(source: str | os.PathLike | TokenFile) -> TokenFile:
    """`source` itself when it is an opened token file, else the file at that path (its sidecar read now)."""
    return source if isinstance(source, TokenFile) else open_token_file(source)


def read_token_file(path_bin: str | os.PathLike | TokenFile) -> tuple[np.ndarray, dict[str, Any]]:
    """(read-only memmap of the ids, sidecar dict) of a token file; any inconsistency is a one-line error."""
    file = as_token_file(path_bin)
    return file.tokens(), file.meta


def read_sidecar(path_bin: str | os.PathLike) -> dict[str, Any]:
    """The validated sidecar dict of a token file."""
    path = bin_path(path_bin)
    side = sidecar_path(path)
    if not side.is_file():
        if path.is_file():
            raise TinyformerError(
                f"token file {path} has no sidecar {side}; re-create it with `tinyformer tokenizer encode`"
            )
        raise TinyformerError(f"token file {path} does not exist; check the path (expected NAME.bin + NAME.json)")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TinyformerError(f"sidecar {side} is not valid JSON ({exc}); re-create the token file") from None
    if not isinstance(meta, dict):
        raise TinyformerError(f"sidecar {side} is not a JSON object; re-create the token file")
    if meta.get("format") != FORMAT:
        raise TinyformerError(f"sidecar {side} has format {meta.get('format')!r}, expected {FORMAT!r}; not a tinyformer token file")
    if meta.get("version") != VERSION:
        raise TinyformerError(
            f"sidecar {side} has version {meta.get('version')!r}, this tinyformer reads version {VERSION}; "
            "upgrade tinyformer or re-create the token file"
        )
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise TinyformerError(f"sidecar {side} lacks {', '.join(missing)}; re-create the token file")
    if meta["dtype"] not in DTYPES:
        raise TinyformerError(f"sidecar {side} has dtype {meta['dtype']!r}; expected one of {', '.join(DTYPES)}")
    for key in ("n_tokens", "vocab_size"):
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 0:
            raise TinyformerError(f"sidecar {side} has {key}={meta[key]!r}; expected a non-negative integer")
    if meta["dtype"] == "uint16" and meta["vocab_size"] > 1 << 16:
        raise TinyformerError(f"sidecar {side} says uint16 for a vocab of {meta['vocab_size']} ids; the file is corrupt")
    return meta


def _max_token_id(tokens: np.ndarray, chunk: int = 1 << 24) -> int:
    return max(int(tokens[i : i + chunk].max()) for i in range(0, len(tokens), chunk)) if len(tokens) else -1


def check_token_file(path: str | os.PathLike | TokenFile | None, vocab_size: int, fingerprint: str | None = None,
                     what: str = "train") -> dict[str, Any]:
    """Before a file is used: it exists and parses, its tokenizer is the run's (by fingerprint) and every id
    is below `vocab_size`. Returns the sidecar. `what` names the config key in messages (data.train, ...)."""
    if not path:
        raise TinyformerError(f"data.{what} is not set; pass data.{what}=PATH.bin (make one with `tinyformer data prepare`)")
    file = as_token_file(path)
    tokens, meta, path = file.tokens(), file.meta, file.path
    if fingerprint and meta.get("tokenizer_fingerprint") not in (None, fingerprint):
        raise TinyformerError(
            f"{path} was encoded with tokenizer {str(meta.get('tokenizer_fingerprint'))[:12]}..., but the run's "
            f"tokenizer is {fingerprint[:12]}...; re-encode the file or set data.tokenizer to the right one"
        )
    top = _max_token_id(tokens)
    if top >= vocab_size:
        raise TinyformerError(
            f"{path} holds token id {top}, but the model's vocab_size is {vocab_size}; "
            f"set model.vocab_size >= {top + 1} or re-encode with the run's tokenizer"
        )
    return meta


def token_file_identity(path_bin: str | os.PathLike | TokenFile, sample: int = 1 << 20) -> str:
    """What tells one token file from another, cheaply for any size: its length and a SHA-256 over the
    sidecar's tokenizer fingerprint and sources and the first and last `sample` bytes of the ids."""
    file = as_token_file(path_bin)
    path, meta = file.path, file.meta
    sources = meta.get("sources") if isinstance(meta.get("sources"), list) else []
    h = hashlib.sha256(json.dumps([meta["n_tokens"], meta["dtype"], str(meta.get("tokenizer_fingerprint")),
                                   [str(s.get("sha256")) for s in sources if isinstance(s, dict)]]).encode())
    with open(path, "rb") as f:
        h.update(f.read(sample))
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - sample))
        h.update(f.read(sample))
    return f"{meta['n_tokens']} tokens, sha256 {h.hexdigest()[:16]}"


def make_meta(
    n_tokens: int,
    vocab_size: int,
    tokenizer_fingerprint: str | None = None,
    sources: list[dict[str, Any]] | None = None,
    n_bytes: int = 0,
    eot_id: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The sidecar dict, fields in the documented order."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype_for_vocab(vocab_size),
        "n_tokens": int(n_tokens),
        "vocab_size": int(vocab_size),
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "sources": list(sources or []),
        "n_bytes": int(n_bytes),
        "bytes_per_token": round(n_bytes / n_tokens, 6) if n_tokens else 0.0,
        "eot_id": eot_id,
        **extra,
    }


class TokenFileWriter:
    """Append id arrays to a temporary file; `commit(meta)` writes the sidecar and renames both into place.

    Leaving the `with` block without `commit` (an error, Ctrl-C) deletes the temporary file, so a token file
    either exists whole with its sidecar or not at all.
    """

    def __init__(self, path_bin: str | os.PathLike, vocab_size: int, force: bool = False):
        self.path = Path(path_bin)
        if self.path.suffix != ".bin":
            raise TinyformerError(f"token file name {self.path} must end in .bin (the sidecar goes to NAME.json)")
        if self.path.is_dir():
            raise TinyformerError(f"output {self.path} is a directory; name the token file NAME.bin")
        check_output(self.path, force)
        check_output(sidecar_path(self.path), force)
        self.vocab_size = vocab_size
        self.dtype = DTYPES[dtype_for_vocab(vocab_size)]
        self.n_tokens = 0
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._file = os.fdopen(fd, "wb")
        os.chmod(self._tmp, _default_file_mode())  # mkstemp makes 0600; the result should look like any file

    def write(self, ids) -> None:
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        self._file.write(np.ascontiguousarray(arr, dtype=self.dtype).data)  # the array's own bytes: no copy
        self.n_tokens += arr.size

    def commit(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Finish: sidecar (with the real token count) and both renames. Returns the sidecar dict."""
        meta = {**meta, "n_tokens": self.n_tokens, "dtype": dtype_for_vocab(self.vocab_size)}
        n_bytes = meta.get("n_bytes", 0)
        meta["bytes_per_token"] = round(n_bytes / self.n_tokens, 6) if self.n_tokens else 0.0
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        side = sidecar_path(self.path)
        fd, side_tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".tmp", dir=side.parent)
        try:
            os.chmod(side_tmp, _default_file_mode())
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
            os.replace(side_tmp, side)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(side_tmp)
            raise
        return meta

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)

    def __enter__(self) -> TokenFileWriter:
        return self

    def __exit__(self, *exc) -> None:
        if os.path.exists(self._tmp):  # not committed
            self.abort()


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_token_file(
    path_bin: str | os.PathLike, ids, vocab_size: int, force: bool = False, **meta: Any
) -> dict[str, Any]:
    """Write an in-memory id array as a token file (other metadata as in `make_meta`). Returns the sidecar."""
    with TokenFileWriter(path_bin, vocab_size, force) as writer:
        writer.write(ids)
        return writer.commit(make_meta(writer.n_tokens, vocab_size, **meta))
