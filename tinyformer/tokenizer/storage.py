"""A tokenizer's files: `tokenizer.json` (format, version, pattern, special tokens, merges as hex pairs; version 2
adds byte_order, special ids and merge_rule only when a tokenizer has them) and the readable `vocab.txt`;
reading them back (also GPT-2 `vocab.json` + `merges.txt` and tiktoken export directories) with one-line
errors for anything missing or corrupt. The module sits below the `Tokenizer` class: `load` makes the tokenizer
with the constructor it is given, and `save` reads what it writes from the tokenizer it is handed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir
from tinyformer.tokenizer.gpt2_files import read_gpt2_files
from tinyformer.tokenizer.pretokenize import GPT2_PATTERN
from tinyformer.tokenizer.tiktoken_files import export_dir_args

FORMAT = "tinyformer-bpe"
VERSION = 1  # written for tokenizers with the default ids and rule; version 2 adds byte_order, special ids, merge_rule
VERSIONS = (1, 2)
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"

T = TypeVar("T")


def save(tok, directory: str | os.PathLike, force: bool = False) -> Path:
    """Write `tokenizer.json` (for machines) and `vocab.txt` (for people) of the Tokenizer `tok` into
    `directory`, atomically."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TinyformerError(f"output {directory} exists and is not a directory; choose another path")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise TinyformerError(f"output {directory} already exists; pass --force to overwrite it")
    with atomic_dir(directory, force=True) as tmp:
        (tmp / TOKENIZER_FILE).write_text(json.dumps(tok._to_json(), indent=1) + "\n", encoding="utf-8")
        (tmp / VOCAB_FILE).write_text(vocab_listing(tok), encoding="utf-8")
    return directory


def vocab_listing(tok) -> str:
    """One line per id of the Tokenizer `tok`: id, the token's bytes escaped, and for merges the two parent ids."""
    merges, special_ids = tok.merges, set(tok.special_tokens.values())
    lines = [f"# {FORMAT} vocab: {tok.vocab_size} ids (256 bytes, {len(merges)} merges, "
             f"{len(special_ids)} special); fingerprint {tok.fingerprint}",
             "# id\ttoken\tparents"]
    id_of = {bytes([b]): i for i, b in enumerate(tok.byte_order)}
    for i, data in tok.vocab.items():  # in id order, without the ids left unused before a special token's own id
        if i < 256:
            parents = "byte"
        elif i in special_ids:
            parents = "special"
        else:
            a, b = merges[i - 256]
            parents = f"{id_of[a]} + {id_of[b]}"
            id_of.setdefault(data, i)
        lines.append(f"{i}\t{escape_bytes(data)}\t{parents}")
    return "\n".join(lines) + "\n"


def load(directory: str | os.PathLike, build: Callable[..., T]) -> T:
    """Read a tokenizer saved by `save` (a directory, or its tokenizer.json), or GPT-2 / tiktoken export
    files, and make it with `build` (the Tokenizer class); one-line error if corrupt."""
    path = Path(directory)
    if path.is_dir() and not (path / TOKENIZER_FILE).is_file() and (path / "merges.txt").is_file():
        merges, specials = read_gpt2_files(path / "vocab.json", path / "merges.txt")  # GPT-2-style files
        return build(merges, special_tokens=specials, pattern=GPT2_PATTERN)
    if path.is_dir() and not (path / TOKENIZER_FILE).is_file() and (path / "tiktoken.json").is_file():
        return build(**export_dir_args(path))  # what `tinyformer tokenizer export --format tiktoken` writes
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise TinyformerError(f"no tokenizer at {directory}: {path} does not exist; train one with "
                              "`tinyformer tokenizer train`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TinyformerError(f"tokenizer file {path} is corrupt ({_short(exc)}); re-train or re-save it") from None
    try:
        args, kwargs = from_json(data)
        return build(*args, **kwargs)
    except TinyformerError as exc:
        raise TinyformerError(f"tokenizer file {path}: {exc}") from None


def from_json(data) -> tuple[tuple, dict]:
    """(args, keyword args) of `Tokenizer` from the saved JSON."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TinyformerError(f"not a {FORMAT} tokenizer file (missing \"format\": \"{FORMAT}\")")
    if data.get("version") not in VERSIONS:
        raise TinyformerError(
            f"unknown tokenizer file version {data.get('version')!r} (this tinyformer reads versions "
            f"{', '.join(map(str, VERSIONS))}); upgrade tinyformer or re-train the tokenizer"
        )
    try:
        merges = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in data["merges"]]
        specials = data["special_tokens"]
        specials = {str(s): int(i) for s, i in specials.items()} if isinstance(specials, dict) else [
            str(s) for s in specials]
        pattern = str(data["pattern"])
        kwargs = {"byte_order": data.get("byte_order"), "merge_rule": str(data.get("merge_rule", "pairs"))}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise TinyformerError(f"tokenizer file is corrupt ({_short(exc)})") from None
    return (merges, specials, pattern), kwargs


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def escape_bytes(data: bytes) -> str:
    """Token bytes as quoted readable text: printable characters as is, the rest escaped (\\n, \\xNN, \\u200d)."""
    out = []
    for ch in data.decode("utf-8", errors="surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not (part of) valid UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in "\\'":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "'" + "".join(out) + "'"
