"""`tinyformer tokenizer train|info|encode|export`: train a BPE tokenizer, inspect it, apply it, export it.

The verb sits above both the tokenizer package and the data package (whose `encode` writes token files
with a tokenizer), so no module imports a layer above its own.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="COMMAND", required=True)

    train = sub.add_parser("train", help="train a byte-level BPE tokenizer on text files",
                           description="Train a byte-level BPE tokenizer: ids 0..255 are bytes, then merges, "
                                       "then special tokens; --vocab-size counts all of them.")
    train.add_argument("inputs", nargs="+", metavar="INPUT", help="UTF-8 text files")
    train.add_argument("--vocab-size", type=int, required=True, help="total ids: 256 bytes + merges + specials")
    train.add_argument("--special-tokens", nargs="+", action="extend", default=[], metavar="TOKEN",
                       help='special tokens, e.g. "<|endoftext|>" (split out before training; last ids)')
    train.add_argument("--special-tokens-file", metavar="FILE",
                       help="a file of special tokens, one per line (added after --special-tokens)")
    train.add_argument("--pattern", default="gpt2",
                       help="pre-tokenizer: gpt2 (default), gpt4, o200k, or a regex of your own")
    train.add_argument("--out", required=True, help="output directory (tokenizer.json + vocab.txt)")
    train.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    train.add_argument("--errors", choices=["strict", "replace"], default="strict",
                       help="invalid UTF-8 in the input: strict = error naming file and offset, replace = U+FFFD")
    train.add_argument("--workers", type=int, default=None, help="processes for pre-tokenization (default: all cores)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--python", action="store_true", help="use the pure-Python merge loop (for checking)")

    info = sub.add_parser("info", help="show a tokenizer's vocab size, special tokens, pattern, fingerprint")
    info.add_argument("--tokenizer", required=True, metavar="DIR", help="a tokenizer directory")
    info.add_argument("--top", type=int, default=10, help="how many of the longest tokens to show")

    help_text = "encode text files into a token file (NAME.bin + NAME.json) on all cores"
    add_encode_arguments(sub.add_parser("encode", help=help_text, description=help_text))
    help_text = "export a tokenizer to HF tokenizer.json or tiktoken"
    add_export_arguments(sub.add_parser("export", help=help_text, description=help_text))


def add_encode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="UTF-8 text files; each file is one document")
    parser.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory (from `tokenizer train`)")
    parser.add_argument("--out", required=True, metavar="NAME.bin", help="token file to write (sidecar: NAME.json)")
    parser.add_argument("--append-eot", action="store_true", help="append the <|endoftext|> id after each input file")
    parser.add_argument(
        "--allowed-special",
        default="none",
        metavar="all|none|TOKEN[,TOKEN]",
        help="special-token text to encode as its special id (default none: encoded as ordinary text). For "
        "files that already separate documents with <|endoftext|> lines (TinyStories) pass 'all', "
        "not --append-eot",
    )
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="processes (default: all cores)")
    parser.add_argument("--errors", choices=("strict", "replace"), default="strict",
                        help="bytes that are not UTF-8: stop with an error naming the file and offset "
                        "(strict, default) or encode U+FFFD in their place (replace)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing token file")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from tinyformer.tokenizer.export import FORMATS, TIKTOKEN_RANKS, TIKTOKEN_SETTINGS

    parser.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory to export")
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="hf: tokenizer.json + tokenizer_config.json (PreTrainedTokenizerFast); tiktoken: "
        f"{TIKTOKEN_RANKS} + {TIKTOKEN_SETTINGS}; gpt2: vocab.json + merges.txt",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")


def run(args: argparse.Namespace) -> int:
    run_command = {"train": run_train, "info": run_info, "encode": run_encode, "export": run_export}
    return run_command[args.tokenizer_command](args)


def run_train(args: argparse.Namespace) -> int:
    from tinyformer.errors import TinyformerError
    from tinyformer.fileio import check_output, require_file
    from tinyformer.tokenizer.train import train_bpe

    if args.workers is not None and args.workers < 1:
        raise TinyformerError(f"--workers must be at least 1, got {args.workers}")
    inputs = [require_file(p) for p in args.inputs]
    if all(p.stat().st_size == 0 for p in inputs):
        names = ", ".join(str(p) for p in inputs)
        raise TinyformerError(f"{names}: {'the input is' if len(inputs) == 1 else 'every input is'} empty, so there "
                              "is nothing to learn merges from; pass a text file")
    specials = special_tokens(args.special_tokens, args.special_tokens_file)
    out = check_output(args.out, args.force)
    start = time.perf_counter()
    tok = train_bpe(inputs, args.vocab_size, specials, args.pattern, num_workers=args.workers,
                    errors=args.errors, progress=False if args.no_progress else None,
                    use_c=False if args.python else None)
    seconds = time.perf_counter() - start
    tok.save(out, force=args.force)
    n_bytes = sum(p.stat().st_size for p in inputs)
    print(f"trained {len(tok.merges)} merges on {n_bytes / 1e6:.1f} MB in {seconds:.1f} s: vocab size "
          f"{tok.vocab_size}, special tokens {list(tok.special_tokens) or 'none'}")
    if tok.vocab_size < args.vocab_size:
        print(f"note: the input has too few distinct pairs for {args.vocab_size} ids; stopped at {tok.vocab_size}",
              file=sys.stderr)
    print(f"saved {out}/tokenizer.json and {out}/vocab.txt (fingerprint {tok.fingerprint[:16]})")
    return 0


def special_tokens(given: list[str], path: str | None) -> list[str]:
    """--special-tokens plus the lines of --special-tokens-file. A given token that names an existing file is
    refused: the user almost certainly meant the file's tokens, not its name as a token."""
    from pathlib import Path

    from tinyformer.errors import TinyformerError
    from tinyformer.fileio import require_file

    def is_file(name: str) -> bool:
        try:
            return Path(name).is_file()
        except (OSError, ValueError):  # a name too long or with a NUL byte is no file
            return False

    for token in given:
        if token and is_file(token):
            raise TinyformerError(f"--special-tokens {token!r} is the name of a file; to read special tokens "
                                  f"from it (one per line), pass --special-tokens-file {token}")
    out = list(given)
    if path is not None:
        try:
            text = require_file(path, "--special-tokens-file").read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise TinyformerError(f"--special-tokens-file {path} is not UTF-8 text") from None
        out += [line.strip() for line in text.splitlines() if line.strip()]  # ends of lines are never part of a token
        if len(out) == len(given):
            raise TinyformerError(f"--special-tokens-file {path} has no tokens; write one special token per line")
    return out


def run_info(args: argparse.Namespace) -> int:
    from tinyformer.tokenizer.pretokenize import PATTERNS
    from tinyformer.tokenizer.storage import escape_bytes
    from tinyformer.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    pattern_name = next((name for name, pat in PATTERNS.items() if pat == tok.pattern), "custom")
    print(f"tokenizer    {args.tokenizer}")
    print(f"vocab size   {tok.vocab_size} (256 bytes + {len(tok.merges)} merges + {len(tok.special_tokens)} special)")
    specials = ", ".join(f"{s} = {i}" for s, i in tok.special_tokens.items()) or "none"
    print(f"specials     {specials}")
    print(f"pattern      {pattern_name}: {tok.pattern}")
    print(f"fingerprint  {tok.fingerprint}")
    vocab = tok.vocab
    merged = sorted(range(256, 256 + len(tok.merges)), key=lambda i: (-len(vocab[i]), i))[: args.top]
    print(f"longest {len(merged)} tokens:")
    for i in merged:
        print(f"  {i:>7}  {len(vocab[i]):>3} bytes  {escape_bytes(vocab[i])}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from tinyformer.data.encode import encode_files
    from tinyformer.errors import TinyformerError
    from tinyformer.tokenizer.tokenizer import Tokenizer

    if args.workers is not None and args.workers < 1:
        raise TinyformerError(f"--workers must be at least 1, not {args.workers}")
    tok = Tokenizer.load(args.tokenizer)
    encode_files(tok, args.inputs, args.out, append_eot=args.append_eot, allowed_special=args.allowed_special,
                 workers=args.workers, force=args.force, errors=args.errors, progress=args.progress, log=print)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from tinyformer.tokenizer.export import export
    from tinyformer.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    out = export(tok, args.format, args.out, args.force)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote the {args.format} export of {args.tokenizer} ({tok.vocab_size} ids) to {out}: {files}")
    return 0
