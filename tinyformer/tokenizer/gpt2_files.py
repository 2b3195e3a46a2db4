"""GPT-2-style `vocab.json` + `merges.txt`: the original GPT-2 tokenizer's files, where every byte is shown
as a printable unicode character (the "bytes to unicode" table): written from our Tokenizer, and read into its
merges and special tokens (`Tokenizer.from_gpt2_files` builds it)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from tinyformer.errors import TinyformerError

MERGES_HEADER = "#version: 0.2"


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space,
    0x7F-0xA0, soft hyphen) take the characters from U+0100 upwards, in byte order. Text of any bytes then
    has no whitespace or control characters, so `merges.txt` can separate the two parts by a space."""
    table = {b: chr(b) for b in [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + shifted)
            shifted += 1
    return table


BYTE_TO_UNICODE: dict[int, str] = _byte_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_UNICODE.items()}


def bytes_to_token_str(token: bytes) -> str:
    """The GPT-2 vocab string of a byte sequence (b' the' -> 'Ġthe')."""
    return "".join(BYTE_TO_UNICODE[b] for b in token)


def token_str_to_bytes(text: str) -> bytes | None:
    """Inverse of `bytes_to_token_str`; None when `text` has a character outside the table."""
    try:
        return bytes(UNICODE_TO_BYTE[c] for c in text)
    except KeyError:
        return None


def check_representable(tok) -> None:
    """Formats keyed by token bytes (vocab.json, tokenizer.json, tiktoken ranks) need distinct tokens."""
    seen: dict[bytes, int] = {}
    vocab = tok.vocab
    for i in range(256 + len(tok.merges)):
        token = vocab[i]
        if token in seen:
            raise TinyformerError(
                f"tokens {seen[token]} and {i} are the same bytes {token!r}; formats keyed by token text "
                "cannot hold this vocab"
            )
        seen[token] = i


def write_gpt2_files(tok, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write `vocab.json` (token string -> id, special tokens included) and `merges.txt` into `out_dir`."""
    check_representable(tok)
    out_dir = Path(out_dir)
    token_bytes, merges = tok.vocab, tok.merges
    vocab = {bytes_to_token_str(token_bytes[i]): i for i in range(256 + len(merges))}
    for text, i in tok.special_tokens.items():
        if text in vocab:
            raise TinyformerError(f"special token {text!r} has the same vocab.json text as token {vocab[text]}")
        vocab[text] = i
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = [MERGES_HEADER] + [f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in merges]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def read_gpt2_files(
    vocab_json: str | os.PathLike, merges_txt: str | os.PathLike
) -> tuple[list[tuple[bytes, bytes]], list[str]]:
    """(merges in rank order, special tokens in id order) from GPT-2-style files, checked for consistency.

    The files' own ids are used only to order the special tokens: our ids are always 0..255 = raw bytes,
    256+i = merge i, specials last. The original GPT-2 files number the 256 byte tokens in table order
    instead, so for them byte ids differ (merge and special ids agree); a warning says so.
    """
    vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
    for path in (vocab_json, merges_txt):
        if not path.is_file():
            raise TinyformerError(f"GPT-2 tokenizer file {path} does not exist; expected vocab.json and merges.txt")
    try:
        vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TinyformerError(f"{vocab_json} is not valid JSON ({exc})") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise TinyformerError(f"{vocab_json} must be a JSON object mapping token strings to integer ids")
    merges = _read_merges(merges_txt)

    known = {bytes([b]) for b in range(256)} | {a + b for a, b in merges}
    by_bytes = {}
    for text in vocab:
        token = token_str_to_bytes(text)
        if token is not None and token in known:
            by_bytes[token] = text
    missing = [t for t in sorted(known) if t not in by_bytes]
    if missing:
        raise TinyformerError(
            f"{vocab_json} lacks {len(missing)} tokens that the bytes and {merges_txt.name} need "
            f"(first: {bytes_to_token_str(missing[0])!r}); the two files do not belong together"
        )
    token_texts = set(by_bytes.values())
    specials = sorted((t for t in vocab if t not in token_texts), key=lambda t: vocab[t])
    ours = {bytes_to_token_str(bytes([b])): b for b in range(256)}
    ours.update({bytes_to_token_str(a + b): 256 + i for i, (a, b) in enumerate(merges)})
    ours.update({t: 256 + len(merges) + i for i, t in enumerate(specials)})
    if any(vocab[t] != i for t, i in ours.items()):
        warnings.warn(
            f"{vocab_json} numbers its tokens differently from tinyformer (ids 0..255 = raw bytes, 256+i = merge i, "
            "special tokens last); the same text gives the same tokens but some ids differ",
            stacklevel=3,
        )
    return merges, specials


def _read_merges(path: Path) -> list[tuple[bytes, bytes]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise TinyformerError(f"{path} is not UTF-8 (byte offset {exc.start})") from None
    known = {bytes([b]) for b in range(256)}
    merges = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        pair = [token_str_to_bytes(p) for p in parts] if len(parts) == 2 else []
        if len(pair) != 2 or None in pair or b"" in pair:
            raise TinyformerError(f"{path} line {number}: expected two GPT-2 token strings separated by a space, got {line!r}")
        a, b = pair
        for part, text in zip(pair, parts):
            if part not in known:
                raise TinyformerError(f"{path} line {number}: {text!r} is neither a byte nor the result of an earlier merge")
        merges.append((a, b))
        known.add(a + b)
    return merges

