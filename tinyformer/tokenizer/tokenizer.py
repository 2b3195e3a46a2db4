"""The byte-level BPE `Tokenizer`: encode/decode, special tokens, save/load, fingerprint.

Ids 0..255 are raw bytes, id 256+i is merge i, special tokens take the last ids in the order given.
A pre-token is encoded GPT-2 style: repeatedly merge the adjacent pair with the lowest merge rank.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import regex

from tinyformer.errors import TinyformerError
from tinyformer.tokenizer.pretokenize import (
    GPT2_PATTERN,
    ascii_classes,
    cut_rules,
    fast_pattern_kind,
    resolve_pattern,
    special_splitter,
)

try:
    from tinyformer.tokenizer import _bpe
except ImportError:
    _bpe = None

FORMAT = "tinyformer-bpe"
VERSION = 1
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
EOT = "<|endoftext|>"
CACHE_SIZE = 1 << 17  # pre-token -> ids entries kept before the cache is cleared

_VISIBLE_ASCII = frozenset(chr(c) for c in range(0x21, 0x7F))
_VISIBLE_AFTER = _VISIBLE_ASCII - {"/"}  # a line end before '/' is no sure split for o200k


class Tokenizer:
    """A byte-level BPE tokenizer: `merges` in rank order, `special_tokens` appended, `pattern` to pre-tokenize."""

    def __init__(
        self,
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Sequence[str] = (),
        pattern: str = GPT2_PATTERN,
    ) -> None:
        self.pattern = resolve_pattern(pattern)
        self._regex = regex.compile(self.pattern)
        self._merges = [(bytes(a), bytes(b)) for a, b in merges]
        id_of: dict[bytes, int] = {bytes([i]): i for i in range(256)}
        self._token_bytes: list[bytes] = [bytes([i]) for i in range(256)]
        self._ranks: dict[tuple[int, int], int] = {}  # (left id, right id) -> merged id (= 256 + rank)
        for rank, (a, b) in enumerate(self._merges):
            if a not in id_of or b not in id_of:
                raise TinyformerError(
                    f"merge {rank} ({a!r}, {b!r}) uses a token that no earlier merge made; the merges are corrupt"
                )
            new_id = 256 + rank
            self._ranks.setdefault((id_of[a], id_of[b]), new_id)
            id_of.setdefault(a + b, new_id)
            self._token_bytes.append(a + b)
        specials = list(special_tokens)
        if len(set(specials)) != len(specials) or any(not s for s in specials):
            raise TinyformerError("special tokens must be distinct non-empty strings")
        self._special_tokens = {s: 256 + len(self._merges) + i for i, s in enumerate(specials)}
        self._special_by_id = {i: s for s, i in self._special_tokens.items()}
        self._token_bytes.extend(s.encode("utf-8") for s in specials)
        self._special_re = special_splitter(specials)
        self._vocab: Mapping[int, bytes] | None = None  # built on first use: see `vocab`
        self._cache: dict[str, list[int]] = {}
        self._concurrent = False  # True in a per-thread copy: the regex then releases the GIL too
        self._native = None  # the C encoder, when the extension is built
        self._fast_kind = 0  # 2 / 4: the C encoder also pre-tokenizes ASCII text (GPT-2 / GPT-4 pattern)
        if _bpe is not None:
            self._fast_kind = fast_pattern_kind(self.pattern)
            self._native = self._new_encoder(release_gil=False)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        return list(self._merges)

    @property
    def vocab(self) -> Mapping[int, bytes]:
        """id -> token bytes (read-only), built once per tokenizer: exporters index it once per id."""
        if self._vocab is None:
            self._vocab = self._build_vocab()
        return self._vocab

    def _build_vocab(self) -> Mapping[int, bytes]:
        return MappingProxyType(dict(enumerate(self._token_bytes)))

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self._token_bytes)

    @property
    def eot_id(self) -> int | None:
        return self._special_tokens.get(EOT)

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical saved content: equal for equal tokenizers, whatever the file layout."""
        canonical = json.dumps(self._to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, specials={list(self._special_tokens)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self._to_json() == other._to_json()

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __getstate__(self) -> dict:
        return self._to_json()

    def __setstate__(self, state: dict) -> None:
        self.__init__(*_from_json(state))

    # ------------------------------------------------------------------------------------------ encoding
    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text` with no special-token handling: special-token text is encoded as ordinary text."""
        if self._fast_kind:
            return self._native.encode_fast(text, self._encode_ordinary_regex)
        return self._encode_ordinary_regex(text)

    def _encode_ordinary_regex(self, text: str) -> list[int]:
        if self._native is not None:
            return self._native.encode_pieces(
                self._regex.findall(text, concurrent=self._concurrent), self._cache, CACHE_SIZE)
        ids: list[int] = []
        cache = self._cache
        for piece in self._regex.findall(text, concurrent=self._concurrent):
            hit = cache.get(piece)
            if hit is None:
                hit = self._encode_piece(piece)
            ids.extend(hit)
        return ids

    def _encode_piece(self, piece: str) -> list[int]:
        data = piece.encode("utf-8", errors="surrogatepass")
        ids = self._native.encode_piece(data) if self._native is not None else self._encode_bytes_python(data)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def thread_copy(self) -> Tokenizer:
        """A copy for one thread's exclusive use: its encoder and regex release the GIL while they work."""
        other = Tokenizer.__new__(Tokenizer)
        other.__dict__.update(self.__dict__)
        other._cache = {}
        other._concurrent = True
        if self._native is not None:
            other._native = self._new_encoder(release_gil=True)
        return other

    def _new_encoder(self, release_gil: bool):
        classes = ascii_classes() if self._fast_kind else None
        return _bpe.Encoder(self._ranks, classes, release_gil, self._fast_kind)

    def _encode_bytes_python(self, data: bytes) -> list[int]:
        """Merge the adjacent pair with the lowest rank until none is left (all its occurrences at once)."""
        ids = list(data)
        ranks = self._ranks
        while len(ids) >= 2:
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, 1 << 62))
            new_id = ranks.get(best)
            if new_id is None:
                break
            a, b = best
            out, i, n = [], 0, len(ids)
            while i < n:
                if i + 1 < n and ids[i] == a and ids[i + 1] == b:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return ids

    def encode(self, text: str, allowed_special: str | Iterable[str] = ()) -> list[int]:
        """Ids of `text`; specials in `allowed_special` ("all" or a set) become their ids, others stay text."""
        splitter = self._allowed_splitter(allowed_special)
        if splitter is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, piece in enumerate(splitter.split(text)):
            if i % 2:
                ids.append(self._special_tokens[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def _allowed_splitter(self, allowed_special) -> regex.Pattern | None:
        if allowed_special == "all":
            return self._special_re
        allowed = {allowed_special} if isinstance(allowed_special, str) else set(allowed_special)
        if not allowed:
            return None
        unknown = allowed - set(self._special_tokens)
        if unknown:
            raise TinyformerError(
                f"allowed_special names {sorted(unknown)[0]!r}, which is not a special token of this tokenizer "
                f"(it has {sorted(self._special_tokens)})"
            )
        if allowed == set(self._special_tokens):
            return self._special_re
        return special_splitter(allowed)

    def encode_batch(
        self, texts: Sequence[str], allowed_special: str | Iterable[str] = (), num_workers: int | None = None
    ) -> list[list[int]]:
        """Ids of each text; big batches are spread over `num_workers` threads (default: all cores)."""
        from tinyformer.tokenizer.parallel import encode_batch

        return encode_batch(self, texts, allowed_special, num_workers)

    def encode_iterable(self, chunks: Iterable[str], allowed_special: str | Iterable[str] = ()) -> Iterator[int]:
        """Ids of the concatenation of `chunks` (e.g. a file's lines), streamed with bounded memory.

        Text is held back only up to the last place where the pre-tokenizer is sure to split (a line end
        between two visible ASCII characters, or an allowed special token), so the ids equal
        `encode("".join(chunks))`.
        """
        splitter = self._allowed_splitter(allowed_special)
        allowed = tuple(self._special_tokens) if allowed_special == "all" else tuple(
            [allowed_special] if isinstance(allowed_special, str) else allowed_special)
        rules = cut_rules(tuple(sorted(allowed)))
        hold = max((len(s) for s in allowed), default=0) + 1  # room to see a whole special, or the next char
        buf = ""
        for chunk in chunks:
            buf += chunk
            if len(buf) < 1 << 16:
                continue
            cut = _stream_cut(buf, len(buf) - hold, splitter, rules)
            if cut:
                yield from self.encode(buf[:cut], allowed_special)
                buf = buf[cut:]
        if buf:
            yield from self.encode(buf, allowed_special)

    # ------------------------------------------------------------------------------------------ decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of `ids` concatenated (special tokens as their UTF-8 text)."""
        table = self._token_bytes
        ids = ids if isinstance(ids, list) else list(ids)
        try:
            if not ids or min(ids) >= 0:  # a negative id would index from the end
                return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            pass
        bad = next(i for i in ids if not _valid_id(i, len(table)))
        raise TinyformerError(f"token id {bad!r} is out of range for this tokenizer (vocab size {len(table)})")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD, never an exception."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_bytes(self, token_id: int) -> bytes:
        return self._token_bytes[token_id]

    # ------------------------------------------------------------------------------------------ files
    def _to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "pattern": self.pattern,
            "special_tokens": list(self._special_tokens),
            "merges": [[a.hex(), b.hex()] for a, b in self._merges],
        }

    def save(self, directory: str | os.PathLike, force: bool = False) -> Path:
        """Write `tokenizer.json` (for machines) and `vocab.txt` (for people) into `directory`, atomically."""
        from tinyformer.fileio import atomic_dir

        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise TinyformerError(f"output {directory} exists and is not a directory; choose another path")
        if directory.is_dir() and any(directory.iterdir()) and not force:
            raise TinyformerError(f"output {directory} already exists; pass --force to overwrite it")
        with atomic_dir(directory, force=True) as tmp:
            (tmp / TOKENIZER_FILE).write_text(json.dumps(self._to_json(), indent=1) + "\n", encoding="utf-8")
            (tmp / VOCAB_FILE).write_text(self.vocab_listing(), encoding="utf-8")
        return directory

    def vocab_listing(self) -> str:
        """One line per id: id, the token's bytes escaped, and for merges the two parent ids."""
        lines = [f"# {FORMAT} vocab: {self.vocab_size} ids (256 bytes, {len(self._merges)} merges, "
                 f"{len(self._special_tokens)} special); fingerprint {self.fingerprint}",
                 "# id\ttoken\tparents"]
        id_of = {bytes([i]): i for i in range(256)}
        for i, data in enumerate(self._token_bytes):
            if i < 256:
                parents = "byte"
            elif i in self._special_by_id:
                parents = "special"
            else:
                a, b = self._merges[i - 256]
                parents = f"{id_of[a]} + {id_of[b]}"
                id_of.setdefault(data, i)
            lines.append(f"{i}\t{escape_bytes(data)}\t{parents}")
        return "\n".join(lines) + "\n"

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer saved by `save` (a directory, or its tokenizer.json); one-line error if corrupt."""
        path = Path(directory)
        if path.is_dir() and not (path / TOKENIZER_FILE).is_file() and (path / "merges.txt").is_file():
            return cls.from_gpt2_files(path / "vocab.json", path / "merges.txt")  # GPT-2-style files
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
            return cls(*_from_json(data))
        except TinyformerError as exc:
            raise TinyformerError(f"tokenizer file {path}: {exc}") from None

    @classmethod
    def from_gpt2_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> Tokenizer:
        """A tokenizer from GPT-2-style `vocab.json` + `merges.txt` files."""
        from tinyformer.tokenizer.gpt2_files import from_gpt2_files

        return from_gpt2_files(vocab_json, merges_txt)

    def to_tiktoken(self, name: str | None = None):
        """A `tiktoken.Encoding` with these ranks, pattern and special tokens (same ids)."""
        from tinyformer.tokenizer.export import to_tiktoken

        return to_tiktoken(self, name)


def _valid_id(token_id, vocab_size: int) -> bool:
    try:
        return 0 <= operator.index(token_id) < vocab_size
    except TypeError:
        return False


def _stream_cut(buf: str, limit: int, splitter: regex.Pattern | None, rules: tuple[bool, bool]) -> int:
    """The last place before `limit` where `buf` can be cut without changing its encoding; 0 if none."""
    line_ok, special_ok = rules
    if line_ok:
        i = buf.rfind("\n", 0, limit)
        while i > 0:
            if buf[i - 1] in _VISIBLE_ASCII and buf[i + 1] in _VISIBLE_AFTER:
                return i + 1
            i = buf.rfind("\n", 0, i)
    if special_ok and splitter is not None:
        ends = [m.end() for m in splitter.finditer(buf) if m.end() <= limit]
        if ends:
            return ends[-1]
    return 0


def _from_json(data) -> tuple[list[tuple[bytes, bytes]], list[str], str]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TinyformerError(f"not a {FORMAT} tokenizer file (missing \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise TinyformerError(
            f"unknown tokenizer file version {data.get('version')!r} (this tinyformer reads version {VERSION}); "
            "upgrade tinyformer or re-train the tokenizer"
        )
    try:
        merges = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in data["merges"]]
        specials = [str(s) for s in data["special_tokens"]]
        pattern = str(data["pattern"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TinyformerError(f"tokenizer file is corrupt ({_short(exc)})") from None
    return merges, specials, pattern


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
