"""`tinyformer demo`: train a small BPE tokenizer on tinyformer's own source and docs and show what it learned.

Needs no downloads and runs in seconds; the result is deterministic for a given version of the package.
(A placeholder main job until the length-generalization lab brings its own demo.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

EXAMPLE = "def encode(self, text: str) -> list[int]:\n    return self.tokenizer.encode(text)  # 日本語 too"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab-size", type=int, default=1000, help="ids of the demo tokenizer (default 1000)")
    parser.add_argument("--text", default=EXAMPLE, help="a text to encode and decode with the result")
    parser.add_argument("--out", default=None, help="also save the tokenizer to this directory")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def corpus_files() -> list[Path]:
    """The package's own sources and docs (and, in a source checkout, README and docs/), sorted."""
    import tinyformer

    package = Path(tinyformer.__file__).resolve().parent
    files = [p for ext in ("*.py", "*.c", "*.md", "*.yaml") for p in package.rglob(ext)]
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file():  # a source checkout: its docs are text we wrote too
        files += [checkout / "README.md", *sorted((checkout / "docs").glob("*.md"))]
    return sorted({p for p in files if p.is_file() and "__pycache__" not in p.parts})


def run(args: argparse.Namespace) -> int:
    from tinyformer.errors import TinyformerError
    from tinyformer.tokenizer import train_bpe
    from tinyformer.tokenizer.tokenizer import escape_bytes

    files = corpus_files()
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if n_bytes == 0:
        raise TinyformerError("found no source text in the installed package to train on")
    print(f"tinyformer demo: a byte-level BPE tokenizer trained on this package's own {len(files)} source "
          f"and doc files ({n_bytes / 1e3:.0f} kB)")
    start = time.perf_counter()
    tok = train_bpe(["<|endoftext|>".join(texts)], args.vocab_size, ["<|endoftext|>"], num_workers=1,
                    progress=False)
    seconds = time.perf_counter() - start
    vocab = tok.vocab
    print(f"trained {len(tok.merges)} merges in {seconds:.2f} s: vocab size {tok.vocab_size} "
          f"(256 bytes + {len(tok.merges)} merges + 1 special), fingerprint {tok.fingerprint[:12]}")

    print("\nfirst merges (the most frequent pairs):")
    print("  " + "  ".join(f"{escape_bytes(a)}+{escape_bytes(b)}" for a, b in tok.merges[:8]))
    longest = sorted(range(256, 256 + len(tok.merges)), key=lambda i: (-len(vocab[i]), i))[:12]
    print("longest learned tokens:")
    print("  " + "  ".join(escape_bytes(vocab[i]) for i in longest))
    words = ["def", " self", " return", " import", " tokenizer", " TinyformerError", " the"]
    learned = [w for w in words if len(tok.encode_ordinary(w)) == 1]
    print(f"whole words that became single tokens: {', '.join(repr(w) for w in learned) or 'none'}")

    corpus_ids = sum(len(tok.encode(t)) for t in texts)
    print(f"\ncompression on its own training text: {n_bytes / corpus_ids:.2f} bytes per token "
          f"({n_bytes:,} bytes -> {corpus_ids:,} tokens)")

    ids = tok.encode(args.text, allowed_special="all")
    pieces = [escape_bytes(tok.decode_bytes([i]))[1:-1] for i in ids]
    print(f"\nexample: {args.text!r}")
    print(f"  {len(args.text.encode('utf-8'))} bytes -> {len(ids)} tokens: " + "|".join(pieces))
    print(f"  ids: {ids[:24]}{' ...' if len(ids) > 24 else ''}")
    decoded = tok.decode(ids)
    print(f"  decode(encode(text)) == text: {decoded == args.text}")
    if args.out:
        from tinyformer.fileio import check_output

        tok.save(check_output(args.out, args.force), force=args.force)
        print(f"\nsaved to {args.out} (inspect it with: tinyformer tokenizer info --tokenizer {args.out})")
    return 0 if decoded == args.text else 1
