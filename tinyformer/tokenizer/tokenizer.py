"""The byte-level BPE `Tokenizer`: encode/decode, special tokens, fingerprint; its files through `storage`,
`gpt2_files` and `tiktoken_files` (below it: they read and write its arguments), exports through `export`.

Ids 0..255 are raw bytes, id 256+i is merge i, special tokens take the last ids in the order given. A tokenizer
read from a tiktoken rank file keeps tiktoken's ids instead: its 256 byte ids may be in another order
(`byte_order`) and its special tokens have ids of their own (with gaps).
A pre-token is encoded by repeatedly merging the leftmost adjacent pair with the lowest merged id. With
`merge_rule="pairs"` (GPT-2, HF) only the listed merges apply; with "tiktoken" any two adjacent tokens whose
bytes together are a token merge into it, as tiktoken does.
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
from tinyformer.tokenizer import export, parallel, storage
from tinyformer.tokenizer._native import _bpe  # None without the C extension: `merges` stands in
from tinyformer.tokenizer.gpt2_files import read_gpt2_files
from tinyformer.tokenizer.merges import (
    IDENTITY_BYTES,
    all_splits,
    bpe_python,
    check_byte_order,
    inverse_byte_order,
)
from tinyformer.tokenizer.pretokenize import (
    GPT2_PATTERN,
    ascii_classes,
    cut_rules,
    fast_pattern_kind,
    resolve_pattern,
    special_splitter,
    stream_cut,
    unicode_classes,
)
from tinyformer.tokenizer.storage import FORMAT, VERSION
from tinyformer.tokenizer.tiktoken_files import rank_file_args

MERGE_RULES = ("pairs", "tiktoken")
EOT = "<|endoftext|>"
CACHE_SIZE = 1 << 17  # pre-token -> ids entries kept before the cache is cleared


class Tokenizer:
    """A byte-level BPE tokenizer: `merges` in rank order, `special_tokens` appended, `pattern` to pre-tokenize."""

    def __init__(
        self,
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Sequence[str] | Mapping[str, int] = (),
        pattern: str = GPT2_PATTERN,
        *,
        byte_order: Sequence[int] | None = None,
        merge_rule: str = "pairs",
    ) -> None:
        """`special_tokens`: names (ids follow the merges, in order) or name -> id (any ids after the merges);
        `byte_order`: the byte value of ids 0..255 (default: id = byte); `merge_rule`: "pairs" or "tiktoken"."""
        self.pattern = resolve_pattern(pattern)
        self._regex = regex.compile(self.pattern)
        self._merges = [(bytes(a), bytes(b)) for a, b in merges]
        self._byte_order = check_byte_order(byte_order)
        if merge_rule not in MERGE_RULES:
            raise TinyformerError(f"unknown merge rule {merge_rule!r}; use one of {', '.join(MERGE_RULES)}")
        self.merge_rule = merge_rule
        id_of: dict[bytes, int] = {bytes([b]): i for i, b in enumerate(self._byte_order)}
        self._token_bytes: list[bytes | None] = [bytes([b]) for b in self._byte_order]
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
        if merge_rule == "tiktoken":
            if len(id_of) != len(self._token_bytes):
                raise TinyformerError("the tiktoken merge rule needs distinct token bytes; two merges make the same")
            self._ranks = all_splits(self._token_bytes, id_of)
        self._special_tokens = self._special_ids(special_tokens)
        self._special_by_id = {i: s for s, i in self._special_tokens.items()}
        if self._special_tokens:
            self._token_bytes.extend([None] * (max(self._special_tokens.values()) + 1 - len(self._token_bytes)))
        for text, i in self._special_tokens.items():
            self._token_bytes[i] = text.encode("utf-8")
        self._special_re = special_splitter(self._special_tokens)
        self._vocab: Mapping[int, bytes] | None = None  # built on first use: see `vocab`
        self._cache: dict[str, list[int]] = {}
        self._concurrent = False  # True in a per-thread copy: the regex then releases the GIL too
        self._native = None  # the C encoder, when the extension is built
        self._fast_kind = 0  # 2 / 4 / 200: the C encoder also pre-tokenizes text (GPT-2 / GPT-4 / o200k)
        self._unicode = False  # True once the C pre-tokenizer has the classes of all characters, not only ASCII
        if _bpe is not None:
            self._fast_kind = fast_pattern_kind(self.pattern)
            self._native = self._new_encoder(release_gil=False)

    def _special_ids(self, special_tokens: Sequence[str] | Mapping[str, int]) -> dict[str, int]:
        first = 256 + len(self._merges)
        if isinstance(special_tokens, Mapping):
            ids = {str(s): int(i) for s, i in special_tokens.items()}
        else:
            ids = {str(s): first + i for i, s in enumerate(special_tokens)}
            if len(ids) != len(special_tokens):
                raise TinyformerError("special tokens must be distinct non-empty strings")
        if any(not s for s in ids) or len(set(ids.values())) != len(ids) or any(i < first for i in ids.values()):
            raise TinyformerError(f"special tokens must be distinct non-empty strings with distinct ids >= {first}")
        return ids

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
        return MappingProxyType({i: token for i, token in enumerate(self._token_bytes) if token is not None})

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (ids a tiktoken file leaves unused count too, as in tiktoken's n_vocab)."""
        return len(self._token_bytes)

    @property
    def byte_order(self) -> list[int]:
        """The byte value of each of the ids 0..255."""
        return list(self._byte_order)

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
        args, kwargs = storage.from_json(state)
        self.__init__(*args, **kwargs)

    # ------------------------------------------------------------------------------------------ encoding
    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text` with no special-token handling: special-token text is encoded as ordinary text."""
        if self._fast_kind:
            if not self._unicode and not text.isascii():
                self._use_unicode()
            return self._native.encode_fast(text, self._encode_ordinary_regex)
        return self._encode_ordinary_regex(text)

    def _use_unicode(self) -> None:
        """Give the C pre-tokenizer the classes of every character (made once per process, on first need)."""
        table, folds = unicode_classes()
        if len(folds) <= 8:
            self._native.set_unicode(table, folds)
        self._unicode = True

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
            other._native = self._native.copy(True)  # the tables copied in C: cheap for any vocab size
        return other

    def _new_encoder(self, release_gil: bool):
        classes = ascii_classes() if self._fast_kind else None
        byte_ids = None if self._byte_order == IDENTITY_BYTES else inverse_byte_order(self._byte_order)
        return _bpe.Encoder(self._ranks, classes, release_gil, self._fast_kind, byte_ids)

    def _encode_bytes_python(self, data: bytes) -> list[int]:
        """Merge the leftmost adjacent pair with the lowest merged id until none is left."""
        return bpe_python(data, self._ranks, None if self._byte_order == IDENTITY_BYTES else inverse_byte_order(self._byte_order))

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
        return parallel.encode_batch(self, texts, allowed_special, num_workers)

    def _encode_many(self, texts: list[str], allowed_special: str | Iterable[str] = ()) -> list[list[int]]:
        """`encode` of each text; with the C pre-tokenizer all ordinary text goes to it in one call."""
        if not self._fast_kind:
            return [self.encode(t, allowed_special) for t in texts]
        if not self._unicode and not all(t.isascii() for t in texts):
            self._use_unicode()
        splitter = self._allowed_splitter(allowed_special)
        if splitter is None:
            return self._native.encode_fast_batch(texts, self._encode_ordinary_regex)
        parts = [splitter.split(t) for t in texts]  # ordinary text at even positions, specials at odd ones
        encoded = iter(self._native.encode_fast_batch([p for ps in parts for p in ps[::2]], self._encode_ordinary_regex))
        out = []
        for ps in parts:
            ids = next(encoded)
            for special in ps[1::2]:
                ids.append(self._special_tokens[special])
                ids.extend(next(encoded))
            out.append(ids)
        return out

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
            cut = stream_cut(buf, len(buf) - hold, splitter, rules)
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
        bad = next(i for i in ids if not _valid_id(i, table))
        raise TinyformerError(f"token id {bad!r} is out of range for this tokenizer (vocab size {len(table)})")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD (never a decoding error). An id outside
        the vocabulary is a `TinyformerError` naming it, not a silent skip."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_bytes(self, token_id: int) -> bytes:
        return self._token_bytes[token_id]

    # ------------------------------------------------------------------------------------------ files
    def _to_json(self) -> dict:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "pattern": self.pattern,
            "special_tokens": list(self._special_tokens),
            "merges": [[a.hex(), b.hex()] for a, b in self._merges],
        }
        # What the default tokenizers lack is written only when present (then as version 2), so their files
        # and fingerprints stay as they were.
        if self._special_tokens != self._special_ids(list(self._special_tokens)):
            data["special_tokens"] = dict(self._special_tokens)
        if self._byte_order != IDENTITY_BYTES:
            data["byte_order"] = list(self._byte_order)
        if self.merge_rule != "pairs":
            data["merge_rule"] = self.merge_rule
        if len(data) > 5 or isinstance(data["special_tokens"], dict):
            data["version"] = 2
        return data

    def save(self, directory: str | os.PathLike, force: bool = False) -> Path:
        """Write `tokenizer.json` (for machines) and `vocab.txt` (for people) into `directory`, atomically."""
        return storage.save(self, directory, force)

    def vocab_listing(self) -> str:
        """One line per id: id, the token's bytes escaped, and for merges the two parent ids."""
        return storage.vocab_listing(self)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer saved by `save` (a directory, or its tokenizer.json), or GPT-2 / tiktoken export
        files; one-line error if corrupt."""
        return storage.load(directory, cls)

    @classmethod
    def from_gpt2_files(cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike) -> Tokenizer:
        """A tokenizer from GPT-2-style `vocab.json` + `merges.txt` files (with GPT-2's pre-tokenizer pattern)."""
        merges, specials = read_gpt2_files(vocab_json, merges_txt)
        return cls(merges, special_tokens=specials, pattern=GPT2_PATTERN)

    @classmethod
    def from_tiktoken_file(
        cls, path: str | os.PathLike, pattern: str, special_tokens: Mapping[str, int] | None = None
    ) -> Tokenizer:
        """A tokenizer from a tiktoken rank file (`base64(token) rank` lines, as cl100k_base.tiktoken) whose ids
        are tiktoken's own: ranks, with `special_tokens` at their given ids. The file holds no pattern."""
        return cls(**rank_file_args(path, pattern, special_tokens))

    def to_tiktoken(self, name: str | None = None):
        """A `tiktoken.Encoding` with these ranks, pattern and special tokens (same ids)."""
        return export.to_tiktoken(self, name)


def _valid_id(token_id, table: list[bytes | None]) -> bool:
    try:
        return 0 <= operator.index(token_id) < len(table) and table[token_id] is not None
    except TypeError:
        return False

