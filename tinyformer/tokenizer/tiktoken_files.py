"""tiktoken rank files (`.tiktoken`: one `base64(token bytes) rank` line per token, the format cl100k_base and
o200k_base ship in) read into the arguments of a Tokenizer whose ids are tiktoken's: ranks, specials at their
own ids (`Tokenizer.from_tiktoken_file` builds it).

A rank file holds tokens, not merges: each token's merge is recovered by running BPE on its bytes with only
the lower ranks, which must leave exactly two parts. The tokenizer then encodes by tiktoken's rule (any two
adjacent tokens whose bytes together are a token merge, lowest rank first), so its ids equal tiktoken's.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tinyformer.errors import TinyformerError
from tinyformer.tokenizer._native import _bpe  # None: the Python BPE of `merges` recovers the same merges
from tinyformer.tokenizer.merges import all_splits, bpe_python
from tinyformer.tokenizer.pretokenize import GPT4_PATTERN, O200K_PATTERN

# The published settings of OpenAI's two current encodings (the rank files themselves are downloaded by tiktoken).
# GPT4_PATTERN splits exactly as tiktoken's cl100k string does (see pretokenize.py).
ENCODINGS: dict[str, tuple[str, dict[str, int]]] = {
    "cl100k_base": (GPT4_PATTERN, {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                                   "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}),
    "o200k_base": (O200K_PATTERN, {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
}


def read_tiktoken_file(path: str | os.PathLike) -> list[bytes]:
    """Token bytes in rank order; one-line errors for a file that is not a rank file with ranks 0..N-1 and the
    256 single bytes first (the layout of every tiktoken BPE file)."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise TinyformerError(f"cannot read tiktoken rank file {path}: {exc.strerror}") from None
    by_rank: dict[int, bytes] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank_text = line.split()
            token, rank = base64.b64decode(token_b64, validate=True), int(rank_text)
        except (ValueError, binascii.Error):
            raise TinyformerError(
                f"{path} line {number}: expected `base64(token) rank`, got {line[:60]!r}; not a tiktoken rank file"
            ) from None
        if rank in by_rank or not token:
            raise TinyformerError(f"{path} line {number}: rank {rank} appears twice or its token is empty")
        by_rank[rank] = token
    tokens = [by_rank.get(rank) for rank in range(len(by_rank))]
    if None in tokens:
        raise TinyformerError(f"{path}: the ranks are not 0..{len(by_rank) - 1} without gaps")
    if len(set(tokens)) != len(tokens):
        raise TinyformerError(f"{path}: two ranks have the same token bytes")
    if sorted(tokens[:256]) != [bytes([b]) for b in range(256)]:
        raise TinyformerError(f"{path}: ranks 0..255 must be the 256 single bytes (as in every tiktoken BPE file)")
    return tokens


def recover_merges(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The merge (left bytes, right bytes) of each token from rank 256 on, in rank order: the two parts that BPE
    on its bytes leaves when only lower ranks may merge."""
    id_of = {token: rank for rank, token in enumerate(tokens)}
    splits = all_splits(tokens, id_of)
    byte_ids = [id_of[bytes([b])] for b in range(256)]
    if _bpe is not None:
        encoder = _bpe.Encoder(splits, None, False, 0, byte_ids)
        split = encoder.split
    else:
        def split(token: bytes, rank: int) -> list[int]:
            return bpe_python(token, splits, byte_ids, below=rank)
    merges = []
    for rank in range(256, len(tokens)):
        parts = split(tokens[rank], rank)
        if len(parts) != 2:
            raise TinyformerError(
                f"token {rank} ({tokens[rank]!r}) cannot be made from two lower-ranked tokens by BPE "
                f"(it splits into {len(parts)}); the file is not a BPE rank file"
            )
        merges.append((tokens[parts[0]], tokens[parts[1]]))
    return merges


def rank_file_args(
    path: str | os.PathLike, pattern: str, special_tokens: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """The keyword arguments of a Tokenizer with tiktoken's ids from a rank file, its pre-tokenizer `pattern`
    and special tokens."""
    tokens = read_tiktoken_file(path)
    return {
        "merges": recover_merges(tokens),
        "special_tokens": dict(special_tokens or {}),
        "pattern": pattern,
        "byte_order": [token[0] for token in tokens[:256]],
        "merge_rule": "tiktoken",
    }


def export_dir_args(directory: str | os.PathLike) -> dict[str, Any]:
    """The keyword arguments of the Tokenizer of a directory that `tinyformer tokenizer export --format tiktoken`
    wrote (rank file + `tiktoken.json` with the pattern and special tokens)."""
    directory = Path(directory)
    try:
        settings = json.loads((directory / "tiktoken.json").read_text(encoding="utf-8"))
        ranks_file, pattern, specials = settings["ranks_file"], settings["pat_str"], settings["special_tokens"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TinyformerError(f"{directory / 'tiktoken.json'} is not a tiktoken settings file ({exc})") from None
    return rank_file_args(directory / ranks_file, pattern, specials)
