"""`data prepare text`: any corpus (text files, folders, JSONL, CSV, Parquet, Hugging Face datasets) into the
directory `data prepare` makes (OUT/tokenizer, OUT/train.bin + .json, OUT/val.bin + .json, OUT/prepare.json),
whole or not at all.

Documents are kept whole and each is followed by `<|endoftext|>`. Validation documents are drawn one by one
with a seeded generator (each document is validation with probability `val_fraction`), so the split needs no
count of the documents in advance; a dataset with its own train and validation (or test) splits keeps them.

Memory is bounded, whatever the corpus size: documents stream from the sources to the two split files on disk
(one document, or one batch of 1024 Parquet/dataset rows, in memory at a time); the BPE trainer streams its
input in blocks and holds one count per distinct pre-token (which grows slowly with natural text;
`tokenizer_sample_bytes` trains on the first N bytes of training text and so bounds it by N); the encoder
holds a few blocks per worker. Disk use is about twice the corpus text while it runs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tinyformer.data.corpora import EOT
from tinyformer.data.encode import encode_files
from tinyformer.data.sources import Source, dataset_documents, documents, hf_splits, own_splits, resolve
from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir
from tinyformer.tokenizer import Tokenizer, train_bpe

EOT_BYTES = EOT.encode("utf-8")


class SplitWriter:
    """Appends documents (each followed by EOT) to train.txt or val.txt in `work`, and the first
    `sample_bytes` bytes of training text to sample.txt."""

    def __init__(self, work: Path, sample_bytes: int | None = None) -> None:
        self.paths = {"train": work / "train.txt", "val": work / "val.txt"}
        self.files = {name: open(path, "wb") for name, path in self.paths.items()}  # noqa: SIM115 -- closed in close()
        self.counts = {"train": 0, "val": 0}
        self.last_start = {"train": 0, "val": 0}  # where each file's last document begins, to move it if need be
        self.sample_path = work / "sample.txt" if sample_bytes else None
        self.sample = open(self.sample_path, "wb") if self.sample_path else None  # noqa: SIM115
        self.sample_left = sample_bytes or 0
        self.blank = 0
        self.with_eot = 0

    def write(self, part: str, text: str, where: str) -> None:
        if not text.strip():
            self.blank += 1  # nothing to learn from; a separator at the end of a file leaves one
            return
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise TinyformerError(f"a document of {where} is not valid Unicode text (a lone surrogate); fix the "
                                  "source") from None
        self.with_eot += EOT in text
        f = self.files[part]
        self.last_start[part] = f.tell()
        f.write(data + EOT_BYTES)
        self.counts[part] += 1
        if part == "train" and self.sample is not None and self.sample_left > 0:
            piece = data + EOT_BYTES if len(data) + len(EOT_BYTES) <= self.sample_left else _utf8_head(data, self.sample_left)
            self.sample.write(piece)
            self.sample_left -= len(piece) if piece else self.sample_left

    def move_last(self, source: str, dest: str) -> None:
        """Move the last document of one split file to the other (so that neither is empty)."""
        f = self.files[source]
        f.flush()
        with open(self.paths[source], "rb") as r:
            r.seek(self.last_start[source])
            data = r.read()
        f.truncate(self.last_start[source])
        f.seek(self.last_start[source])
        self.counts[source] -= 1
        self.last_start[dest] = self.files[dest].tell()
        self.files[dest].write(data)
        self.counts[dest] += 1

    def close(self) -> None:
        for f in [*self.files.values(), *([self.sample] if self.sample else [])]:
            f.close()


def _utf8_head(data: bytes, n: int) -> bytes:
    """The first n bytes of UTF-8 `data`, cut back to a character boundary."""
    while 0 < n < len(data) and (data[n] & 0xC0) == 0x80:
        n -= 1
    return data[:n]


def write_splits(
    sources: Sequence[Source], writer: SplitWriter, *, val_fraction: float, seed: int, text_field: str,
    separator: str | None,
) -> str:
    """Stream every document into the writer; returns how the split was made (for prepare.json and the log)."""
    if len(sources) == 1 and sources[0].kind == "hf":
        splits = hf_splits(sources[0])
        own = own_splits(splits)
        if own is not None:
            by_name = dict(splits)
            for part, name in zip(("train", "val"), own):
                for text in dataset_documents(by_name[name], sources[0].spec, text_field):
                    writer.write(part, text, sources[0].spec)
            _check_counts(writer, sources)
            return f"the dataset's own splits: {own[0]} for training, {own[1]} for validation"
    rng = random.Random(seed)
    for source in sources:
        for text in documents(source, text_field=text_field, separator=separator):
            if text.strip():  # a blank document draws nothing, so blank lines never change the split
                writer.write("val" if rng.random() < val_fraction else "train", text, source.spec)
            else:
                writer.blank += 1
    n = writer.counts["train"] + writer.counts["val"]
    if n >= 2 and writer.counts["val"] == 0:
        writer.move_last("train", "val")
    elif n >= 2 and writer.counts["train"] == 0:
        writer.move_last("val", "train")
    _check_counts(writer, sources)
    return f"by document, seeded: seed {seed}, val fraction {val_fraction}"


def _check_counts(writer: SplitWriter, sources: Sequence[Source]) -> None:
    names = ", ".join(s.spec for s in sources)
    n = writer.counts["train"] + writer.counts["val"]
    if n == 0:
        raise TinyformerError(f"no documents found in {names} (every one is empty or blank); check the sources, "
                              "--glob, --text-field and --separator")
    for part, label in (("train", "training"), ("val", "validation")):
        if writer.counts[part] == 0:
            raise TinyformerError(f"found {n} document{'s' if n != 1 else ''} in {names} and none for {label}; "
                                  "a split needs at least one of each (give more documents or a --separator)")


def prepare_text(
    sources: Iterable[str],
    out: str | Path,
    *,
    vocab_size: int | None = None,
    tokenizer: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    separator: str | None = None,
    glob: str = "**/*.txt",
    text_field: str = "text",
    tokenizer_sample_bytes: int | None = None,
    workers: int | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build OUT from the documents of `sources` (see the module docstring); returns prepare.json's record."""
    specs = [str(s) for s in sources]
    if not specs:
        raise TinyformerError("data prepare text needs at least one SOURCE (a file, a folder or hf:NAME)")
    if not 0.0 < val_fraction < 1.0:
        raise TinyformerError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if tokenizer is not None and vocab_size is not None:
        raise TinyformerError("--tokenizer reuses a tokenizer and --vocab-size trains one; pass only one of them")
    if tokenizer_sample_bytes is not None and tokenizer_sample_bytes <= 0:
        raise TinyformerError(f"--tokenizer-sample-bytes must be positive, got {tokenizer_sample_bytes}")
    if separator == "":
        raise TinyformerError("--separator is empty; give the text that separates documents, e.g. '<|endoftext|>'")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise TinyformerError(f"output {out} already exists; pass --force to rebuild it")
    resolved = [resolve(s, glob) for s in specs]
    tok = _reused_tokenizer(tokenizer) if tokenizer is not None else None
    size = vocab_size or 10_000
    record: dict[str, Any] = {"corpus": "text", "sources": [s.describe() for s in resolved],
                              "text_field": text_field, "separator": separator, "glob": glob}
    with atomic_dir(out, force=True) as tmp:
        work = tmp / "work"
        work.mkdir()
        writer = SplitWriter(work, tokenizer_sample_bytes if tok is None else None)
        try:
            record["split"] = write_splits(resolved, writer, val_fraction=val_fraction, seed=seed,
                                           text_field=text_field, separator=separator)
        finally:
            writer.close()
        seeded = record["split"].startswith("by document")
        record.update(split_kind="seeded" if seeded else "dataset", seed=seed if seeded else None,
                      val_fraction=val_fraction if seeded else None, train_documents=writer.counts["train"],
                      val_documents=writer.counts["val"], blank_documents_skipped=writer.blank)
        if writer.with_eot:
            log(f"note: {writer.with_eot} document(s) contain the text {EOT}; it is encoded as the end-of-text token")
        if tok is None:
            train_input = writer.sample_path or writer.paths["train"]
            what = f"the first {tokenizer_sample_bytes:,} bytes of the training text" if writer.sample_path else \
                "the training documents"
            log(f"training a {size}-token BPE tokenizer on {what} ...")
            tok = train_bpe([train_input], size, special_tokens=[EOT], num_workers=workers)
            record["tokenizer"] = f"trained on {what}"
        else:
            record["tokenizer"] = f"reused from {tokenizer}"
        tok.save(tmp / "tokenizer")
        record["tokenizer_fingerprint"] = tok.fingerprint
        for part in ("train", "val"):
            meta = encode_files(tok, [writer.paths[part]], tmp / f"{part}.bin", allowed_special=[EOT],
                                workers=workers, log=lambda text: log(text.replace(str(tmp), str(out))))
            record[f"{part}_tokens"] = meta["n_tokens"]
            meta["sources"] = [{**s.describe(), "part": f"{part} split", "n_bytes": meta["n_bytes"],
                                "sha256_of_split_text": meta["sources"][0]["sha256"]} for s in resolved]
            (tmp / f"{part}.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
        (tmp / "prepare.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    log(f"prepared {out}: {record['train_tokens']:,} train / {record['val_tokens']:,} val tokens from "
        f"{record['train_documents']:,} / {record['val_documents']:,} documents (split {record['split']})")
    return record


def _reused_tokenizer(directory: str | Path) -> Tokenizer:
    tok = Tokenizer.load(directory)
    if tok.eot_id is None:
        raise TinyformerError(f"tokenizer {directory} has no {EOT} special token, which separates the documents; "
                              "train one with --special-tokens '<|endoftext|>' or leave out --tokenizer")
    return tok
