"""`tinyformer data download|prepare`: fetch TinyStories / Tiny Shakespeare, or bring any corpus (`prepare text`),
and turn them into token files."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = sub.add_parser("download", help="fetch a corpus (resumable, checksummed)")
    d.add_argument("corpus", choices=("tinystories", "shakespeare"))
    d.add_argument("--version", help="tinystories: v2 (GPT-4 only, default) or v1")
    d.add_argument("--out", help="directory (default data/CORPUS)")
    d.add_argument("--url-base", help="where the files live (default: their public home; file:// works)")
    d.add_argument("--checksums", help="sha256sum-format file with the expected checksums")
    p = sub.add_parser("prepare", help="split, train the tokenizer, encode train/val token files",
                       description="tinystories / shakespeare: the named corpora (--source). text SOURCE...: any "
                                   "corpus, see docs/bring-your-corpus.md")
    p.add_argument("corpus", choices=("tinystories", "shakespeare", "text"))
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="text: a text file, a folder, a .jsonl/.csv/.parquet file, a folder saved by `datasets`, "
                        "or hf:NAME (a Hugging Face dataset)")
    p.add_argument("--source", help="text file (or tinystories download dir); default data/CORPUS[/input.txt]")
    p.add_argument("--out", help="output directory (default data/CORPUS-tok; required for text)")
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary of tinystories and text (default 10000)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--version", default="v2", help="tinystories files to look for in a download dir")
    p.add_argument("--force", action="store_true")
    t = p.add_argument_group("text")
    t.add_argument("--separator", help="text files: the text between documents, e.g. '<|endoftext|>' "
                                       "(default: one document per file)")
    t.add_argument("--glob", default="**/*.txt", help="files of a folder SOURCE, recursively (default **/*.txt)")
    t.add_argument("--text-field", default="text", help="JSONL/CSV/Parquet/dataset field of the text (default text)")
    t.add_argument("--seed", type=int, default=0, help="seed of the train/validation split by document (default 0)")
    t.add_argument("--tokenizer", help="reuse this tokenizer directory instead of training one")
    t.add_argument("--tokenizer-sample-bytes", type=int,
                   help="train the BPE on the first N bytes of training text (bounds its memory)")
    t.add_argument("--workers", type=int, help="processes for the tokenizer and the encoder (default: all cores)")
    s = sub.add_parser("sequences", help="generate a number-sequence text dataset from a YAML file",
                       description="Rows of numbers (a b a+b, or a recurrence) in any base 2-16, for "
                                   "`tokenizer train`, `tokenizer encode` and `train`; see tinyformer/tasks/sequences.py")
    s.add_argument("--config", required=True, help="YAML file: output, kind, count, min_value, max_value, base, "
                                                   "reverse, column_delimiter, row_delimiter, ...")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. count=1000")
    s.add_argument("--out", help="output text file (default: the config's output)")
    s.add_argument("--force", action="store_true", help="overwrite the output file")


def _sequences(args: argparse.Namespace) -> int:
    from tinyformer.config import load_config
    from tinyformer.tasks.sequences import SequencesConfig, write_sequences

    cfg = load_config(SequencesConfig, args.config, args.overrides)
    path = write_sequences(cfg, force=args.force, output=args.out)
    print(f"wrote {cfg.count:,} {cfg.kind} rows in base {cfg.base} to {path} ({path.stat().st_size:,} bytes)")
    return 0


def _download(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from tinyformer.data.corpora import CORPORA
    from tinyformer.data.download import download, read_sums, write_sums
    from tinyformer.errors import TinyformerError

    corpus = CORPORA[args.corpus]
    version = args.version or corpus.default_version
    if version not in corpus.versions:
        raise TinyformerError(f"{args.corpus} has versions {', '.join(corpus.versions)}, not {version!r}")
    out = Path(args.out or f"data/{args.corpus}")
    base = (args.url_base or corpus.url_base).rstrip("/")
    sums_path = out / "SHA256SUMS"
    recorded = read_sums(sums_path)
    given = read_sums(Path(args.checksums)) if args.checksums else {}
    if args.checksums and not given:
        raise TinyformerError(f"--checksums {args.checksums} holds no 'HEX  NAME' lines")
    for remote in corpus.versions[version]:
        expected = given.get(remote.name) or remote.sha256 or recorded.get(remote.name)
        dest = out / remote.name
        if dest.exists():
            from tinyformer.fileio import sha256_file

            got = sha256_file(dest)
            if expected and got != expected:
                raise TinyformerError(f"{dest} exists but its checksum does not match; delete it and run again")
            recorded[remote.name] = got
            print(f"{dest}: already there, checksum ok")
            continue
        tty = sys.stderr.isatty()

        def show(done: int, total: int | None, name=remote.name, tty=tty) -> None:
            if tty:
                pct = f" {100 * done / total:5.1f}%" if total else ""
                print(f"\r{name}: {done / 1e6:9.1f} MB{pct}", end="", file=sys.stderr, flush=True)

        got, resumed_at = download(f"{base}/{remote.name}", dest, expected, show)
        if tty:
            print(file=sys.stderr)
        recorded[remote.name] = got
        how = f"resumed at {resumed_at:,} bytes" if resumed_at else "downloaded"
        check = "checksum verified" if expected else "no published checksum; recorded in SHA256SUMS"
        print(f"{dest}: {how}, {dest.stat().st_size:,} bytes, {check}")
        write_sums(sums_path, recorded)
    write_sums(sums_path, recorded)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tinyformer.data.prepare import prepare
    from tinyformer.errors import TinyformerError

    if args.corpus == "text":
        from tinyformer.data.prepare_text import prepare_text

        if args.source:
            raise TinyformerError("data prepare text takes its sources as arguments: data prepare text SOURCE... --out DIR")
        if not args.out:
            raise TinyformerError("data prepare text needs --out DIR")
        prepare_text(args.sources, args.out, vocab_size=args.vocab_size, tokenizer=args.tokenizer,
                     val_fraction=args.val_fraction, seed=args.seed, separator=args.separator, glob=args.glob,
                     text_field=args.text_field, tokenizer_sample_bytes=args.tokenizer_sample_bytes,
                     workers=args.workers, force=args.force)
        return 0
    text_only = [f"--{k.replace('_', '-')}" for k in ("separator", "tokenizer", "tokenizer_sample_bytes", "workers")
                 if getattr(args, k) is not None]
    if args.sources or text_only:
        raise TinyformerError(f"{' '.join(args.sources[:1] + text_only[:1])} is for data prepare text; "
                              f"data prepare {args.corpus} reads --source FILE")
    default_source = {"tinystories": "data/tinystories", "shakespeare": "data/shakespeare/input.txt"}[args.corpus]
    source = Path(args.source or default_source)
    out = Path(args.out or f"data/{args.corpus}-tok")
    prepare(args.corpus, source, out, vocab_size=args.vocab_size, val_fraction=args.val_fraction,
            version=args.version, force=args.force)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "sequences":
        return _sequences(args)
    return _download(args) if args.action == "download" else _prepare(args)
