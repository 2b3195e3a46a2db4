"""Exports of a Tokenizer for other libraries: HF `tokenizer.json` (+ `tokenizer_config.json`), tiktoken
(an `Encoding` in memory, or a `.tiktoken` rank file + its settings), and GPT-2-style vocab.json/merges.txt."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir, check_output
from tinyformer.tokenizer.gpt2_files import bytes_to_token_str, check_representable, write_gpt2_files

EOT = "<|endoftext|>"
FORMATS = ("hf", "tiktoken", "gpt2")
TIKTOKEN_RANKS = "tokenizer.tiktoken"
TIKTOKEN_SETTINGS = "tiktoken.json"


# ---------------------------------------------------------------------------------------------- HF


def hf_tokenizer_json(tok) -> dict[str, Any]:
    """The `tokenizer.json` dict: a byte-level BPE whose pre-tokenizer is our regex (a Split, its inline flags in
    Oniguruma's spelling: `hf_pattern`), then the byte-to-unicode step with its own regex off, so any pattern, not only GPT-2's, carries over."""
    check_representable(tok)
    vocab, merges = tok.vocab, tok.merges
    n_ordinary = 256 + len(merges)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": text,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for text, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": hf_pattern(tok.pattern)}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {bytes_to_token_str(vocab[i]): i for i in range(n_ordinary)},
            # "a b" strings, not pairs: the form every tokenizers version reads (byte-level text has no spaces)
            "merges": [f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in merges],
        },
    }


def pad_token(tok) -> str | None:
    """The padding token of an export: a special token named as one (`<|pad|>`, `<pad>`, `[PAD]`), else the
    end-of-text token (GPT-2's convention: padded positions are masked, so any id serves), else None."""
    named = [s for s in tok.special_tokens if "pad" in s.lower()]
    return named[0] if named else (EOT if EOT in tok.special_tokens else None)


def hf_tokenizer_config(tok, model_max_length: int | None = None) -> dict[str, Any]:
    """`tokenizer_config.json`: the generic fast class, so transformers 4.x and 5.x load it the same way.
    `model_max_length`: the context the model was trained on (a tokenizer alone has none: 1e9)."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,  # decode must give back the exact text
        "model_max_length": model_max_length or 1_000_000_000,
    }
    if EOT in tok.special_tokens:
        config.update(bos_token=EOT, eos_token=EOT)
    if pad_token(tok) is not None:
        config["pad_token"] = pad_token(tok)
    return config


# Text on which HF's regex engine (Oniguruma) must split exactly as ours does before an export is trusted.
PATTERN_PROBE = (
    "Don't I'LL we've 's\r\n\t  x  12345 3.14 ١٢٣ café cafe\u0301 日本語、テキスト。 👍🏽 👨\u200d👩\u200d👧 "
    "a\u200bb\ufeff \u00a0\u3000 (a+b)*c!!! “q” —\n\n  end.\n \n "
)


# Inline flags as Oniguruma (Ruby syntax) spells them: its `m` is Python's `s` (dot matches a line end); its
# `^`/`$` always match at line ends and it has no ASCII/Unicode/locale flags, so the others have no equivalent.
ONIGURUMA_FLAGS = {"i": "i", "x": "x", "s": "m"}
_FLAG_GROUP = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])")


def hf_pattern(pattern: str) -> str:
    """`pattern` as HF tokenizers' Oniguruma reads it: inline flags `(?s)`, `(?is:...)` ... rewritten
    (`(?s).` -> `(?m).`); the rest is the same syntax. A flag with no equivalent is a one-line error."""
    out, i, flags_end = [], 0, 0  # flags_end: where the leading global flag groups end
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
        elif c == "[":  # a class is copied whole: "(?s)" inside one is four characters
            end = _class_end(pattern, i)
            out.append(pattern[i:end])
            i = end
        elif (m := _FLAG_GROUP.match(pattern, i)) and (m.group(1) or m.group(2)):
            on, off, end = m.group(1), m.group(2) or "", m.group(3)
            if end == ")" and i > flags_end:
                raise TinyformerError(
                    f"HF export: the inline flags {m.group(0)!r} stand mid-pattern, where Oniguruma applies them "
                    "only to the rest of their group; put them at the start of the pattern or scope them: "
                    f"(?{on}{'-' + off if off else ''}:...)"
                )
            out.append(f"(?{_oniguruma_flags(on, pattern)}{'-' + _oniguruma_flags(off, pattern) if off else ''}{end}")
            i = m.end()
            flags_end = i if end == ")" and i - len(m.group(0)) == flags_end else flags_end
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _class_end(pattern: str, start: int) -> int:
    """The index after the `]` that closes the class opened at `start` (a `]` first in it is a literal)."""
    i = start + 1 + (pattern[start + 1 : start + 2] == "^")
    i += pattern[i : i + 1] == "]"
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _oniguruma_flags(flags: str, pattern: str) -> str:
    missing = [f for f in flags if f not in ONIGURUMA_FLAGS]
    if missing:
        hint = {"m": "Oniguruma's ^ and $ always match at line ends: write (?:^|(?<=\\n)) for ^ and (?=\\n|\\Z) for $",
                "a": "write the ASCII classes out, e.g. [0-9] for \\d and [A-Za-z0-9_] for \\w"}.get(missing[0], "")
        raise TinyformerError(
            f"HF export: Oniguruma has no equivalent of the inline flag {missing[0]!r} (pattern {pattern!r}; the "
            f"export translates i, x and s only); rewrite the pattern without it{'; ' + hint if hint else ''}"
        )
    return "".join(ONIGURUMA_FLAGS[f] for f in flags)


def check_pattern_in_hf(pattern: str) -> None:
    """One-line error when HF `tokenizers` (if installed) splits the probe text with `hf_pattern(pattern)`
    differently from our regex with `pattern`."""
    try:
        from tokenizers import Regex, pre_tokenizers
    except ImportError:
        return
    import regex

    ours = regex.findall(pattern, PATTERN_PROBE)
    translated = hf_pattern(pattern)
    try:
        theirs = [piece for piece, _ in pre_tokenizers.Split(Regex(translated), "isolated").pre_tokenize_str(PATTERN_PROBE)]
    except Exception as exc:  # any failure of the other engine means the export cannot work
        raise TinyformerError(
            f"HF tokenizers cannot use the pre-tokenizer pattern {translated!r}: {exc}; rewrite it in syntax "
            "both engines read alike"
        ) from None
    if ours != theirs:
        i = next(i for i, (a, b) in enumerate(zip(ours + [""], theirs + [""])) if a != b)
        raise TinyformerError(
            f"HF tokenizers (Oniguruma regex) splits text differently with this pattern (piece {i}: ours "
            f"{ours[i] if i < len(ours) else None!r}, HF {theirs[i] if i < len(theirs) else None!r}); rewrite the "
            "pattern in syntax both engines read alike (e.g. no possessive {n,m}+)"
        )


def to_hf(tok, out_dir: str | os.PathLike, model_max_length: int | None = None) -> Path:
    """Write `tokenizer.json` and `tokenizer_config.json` into an existing directory `out_dir`."""
    check_pattern_in_hf(tok.pattern)
    out_dir = Path(out_dir)
    _write_json(out_dir / "tokenizer.json", hf_tokenizer_json(tok))
    _write_json(out_dir / "tokenizer_config.json", hf_tokenizer_config(tok, model_max_length))
    return out_dir


# ---------------------------------------------------------------------------------------------- tiktoken


def mergeable_ranks(tok) -> dict[bytes, int]:
    """tiktoken's rank table: token bytes -> id, for every non-special token."""
    check_representable(tok)
    vocab = tok.vocab
    return {vocab[i]: i for i in range(256 + len(tok.merges))}


def to_tiktoken(tok, name: str | None = None):
    """A `tiktoken.Encoding` with our ranks, pattern and special tokens (ids equal ours)."""
    tiktoken = _import_tiktoken()
    return tiktoken.Encoding(
        name=name or f"tinyformer-{tok.fingerprint[:12]}",
        pat_str=tok.pattern,
        mergeable_ranks=mergeable_ranks(tok),
        special_tokens=dict(tok.special_tokens),
        explicit_n_vocab=_n_vocab(tok),
    )


def _n_vocab(tok) -> int | None:
    """tiktoken's check that every id is used, or None (no check) for a tokenizer with unused ids."""
    return tok.vocab_size if len(tok.vocab) == tok.vocab_size else None


def write_tiktoken(tok, out_dir: str | os.PathLike) -> Path:
    """Write `tokenizer.tiktoken` (one `base64(token) rank` line per token, the file `load_tiktoken_bpe`
    reads) and `tiktoken.json` (pattern and special tokens, which the rank file cannot hold)."""
    out_dir = Path(out_dir)
    lines = [f"{base64.b64encode(token).decode('ascii')} {rank}" for token, rank in mergeable_ranks(tok).items()]
    (out_dir / TIKTOKEN_RANKS).write_text("\n".join(lines) + "\n", encoding="ascii")
    settings = {
        "name": f"tinyformer-{tok.fingerprint[:12]}",
        "pat_str": tok.pattern,
        "special_tokens": dict(tok.special_tokens),
        "explicit_n_vocab": _n_vocab(tok),
        "ranks_file": TIKTOKEN_RANKS,
    }
    _write_json(out_dir / TIKTOKEN_SETTINGS, settings)
    return out_dir


def load_tiktoken_export(out_dir: str | os.PathLike):
    """The `tiktoken.Encoding` of a directory written by `write_tiktoken`, read with tiktoken's own loader."""
    tiktoken = _import_tiktoken()
    from tiktoken.load import load_tiktoken_bpe

    out_dir = Path(out_dir)
    settings = json.loads((out_dir / TIKTOKEN_SETTINGS).read_text(encoding="utf-8"))
    return tiktoken.Encoding(
        name=settings["name"],
        pat_str=settings["pat_str"],
        mergeable_ranks=load_tiktoken_bpe(str(out_dir / settings["ranks_file"])),
        special_tokens=settings["special_tokens"],
        explicit_n_vocab=settings["explicit_n_vocab"],
    )


# ---------------------------------------------------------------------------------------------- all formats


def export(tok, fmt: str, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write `tok` in format `fmt` (hf, tiktoken, gpt2) as the directory `out_dir`, atomically."""
    if fmt not in FORMATS:
        raise TinyformerError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_output(out_dir, force)
    writer = {"hf": to_hf, "tiktoken": write_tiktoken, "gpt2": write_gpt2_files}[fmt]
    with atomic_dir(out_dir, force) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any directory
        writer(tok, tmp)
    return Path(out_dir)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _import_tiktoken():
    try:
        import tiktoken
    except ImportError:
        raise TinyformerError("tiktoken is not installed; pip install 'tinyformer[tiktoken]'") from None
    return tiktoken

