"""Where `data prepare text` reads documents from: text files, folders, JSONL, CSV, Parquet and Hugging Face
datasets, each read as a stream of documents (one document in memory at a time, plus one Parquet or
dataset batch of rows; Parquet is read a row group at a time).

A SOURCE is resolved (checked to exist, a folder listed, an optional dependency imported) before anything
is read, so a mistake in any of them is a one-line error before any output is made.
"""

from __future__ import annotations

import codecs
import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tinyformer.errors import TinyformerError

READ_BYTES = 1 << 20  # a text file is read and split in pieces of this many bytes
BATCH_ROWS = 1024  # rows per Parquet / dataset batch
OWN_VAL_SPLITS = ("validation", "valid", "val", "test")  # a dataset's own validation split, first found wins
HF_SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what `Dataset(Dict).save_to_disk` leaves in a folder
INSTALL = "pip install 'tinyformer[data]'"


@dataclass
class Source:
    """One resolved SOURCE: its kind (text, jsonl, csv, parquet, hf, folder), what names it, and its files."""

    spec: str
    kind: str
    files: list[Path] = field(default_factory=list)

    def describe(self) -> dict:
        out = {"source": self.spec, "kind": self.kind}
        if self.kind == "folder":
            out["files"] = len(self.files)
        return out


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(suffix, "text")


def resolve(spec: str, glob: str = "**/*.txt") -> Source:
    """Check one SOURCE and say what it is: `hf:NAME` (a Hugging Face dataset by name or local path), a folder
    saved by `datasets`, a folder of files (those matching `glob`, recursively, in sorted order) or a file."""
    if spec.startswith("hf:"):
        _import_datasets(spec)
        if not spec[3:]:
            raise TinyformerError("hf: names no dataset; write hf:NAME (a Hugging Face dataset) or hf:PATH")
        return Source(spec, "hf")
    path = Path(spec)
    if not path.exists():
        raise TinyformerError(f"source {spec} does not exist; check the path (a Hugging Face dataset by name "
                              "is written hf:NAME)")
    if path.is_dir():
        if any((path / marker).is_file() for marker in HF_SAVED_MARKERS):
            _import_datasets(spec)
            return Source(spec, "hf")
        files = sorted(p for p in path.glob(glob) if p.is_file())
        if not files:
            raise TinyformerError(f"no files under {spec} match --glob {glob!r}; no documents found")
        for p in files:
            _check_kind(file_kind(p), p)
        return Source(spec, "folder", files)
    kind = file_kind(path)
    _check_kind(kind, path)
    return Source(spec, kind, [path])


def _check_kind(kind: str, path: Path) -> None:
    if kind == "parquet":
        _import_pyarrow(path)


def _import_datasets(spec: str):
    try:
        import datasets
    except ImportError:
        raise TinyformerError(f"source {spec} is a Hugging Face dataset, which needs the `datasets` package: "
                              f"{INSTALL}") from None
    return datasets


def _import_pyarrow(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TinyformerError(f"source {path} is a Parquet file, which needs pyarrow: {INSTALL}") from None
    return pq


# ---------------------------------------------------------------------------------------------- one split


def documents(source: Source, *, text_field: str = "text", separator: str | None = None) -> Iterator[str]:
    """Every document of a source, in order (all splits of a dataset, in its own order)."""
    if source.kind == "hf":
        for _, dataset in hf_splits(source):
            yield from dataset_documents(dataset, source.spec, text_field)
        return
    for path in source.files:
        yield from file_documents(path, text_field=text_field, separator=separator)


def file_documents(path: Path, *, text_field: str = "text", separator: str | None = None) -> Iterator[str]:
    kind = file_kind(path)
    if kind == "jsonl":
        return jsonl_documents(path, text_field)
    if kind == "csv":
        return csv_documents(path, text_field)
    if kind == "parquet":
        return parquet_documents(path, text_field)
    return text_documents(path, separator)


def text_documents(path: Path, separator: str | None) -> Iterator[str]:
    """The whole file as one document, or its pieces between `separator`s, read a piece at a time (each
    character is copied a bounded number of times, however long a document is)."""
    parts: list[str] = []  # the current document so far
    carry = ""  # text after the last separator found that may still hold the start of one
    keep = len(separator) - 1 if separator else 0
    for chunk in _decoded_chunks(path):
        if not separator:
            parts.append(chunk)
            continue
        pieces = (carry + chunk).split(separator)
        if len(pieces) > 1:
            yield "".join([*parts, pieces[0]])
            yield from pieces[1:-1]
            parts, carry = [], pieces[-1]
        elif len(pieces[0]) > keep:  # no separator yet: all but its possible beginning belongs to the document
            cut = len(pieces[0]) - keep
            parts.append(pieces[0][:cut])
            carry = pieces[0][cut:]
        else:
            carry = pieces[0]
    yield "".join([*parts, carry])


def _decoded_chunks(path: Path) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    with _open(path, "rb") as f:
        while True:
            block = f.read(READ_BYTES)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                raise TinyformerError(f"source {path} is not UTF-8 text (near byte {offset + exc.start}); "
                                      "convert it to UTF-8 first") from None
            offset += len(block)
            if text:
                yield text
            if not block:
                return


def jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with _open(path, "r", encoding="utf-8") as f:
        line_no = 0
        try:
            for line_no, line in enumerate(f, 1):  # noqa: B007 -- read in the error message
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TinyformerError(f"{path} line {line_no} is not JSON ({exc.msg}); write one JSON object "
                                          "per line") from None
                if not isinstance(record, dict):
                    raise TinyformerError(f"{path} line {line_no} is not a JSON object; write one object per line")
                yield _field(record, text_field, f"{path} line {line_no}", list(record))
        except UnicodeDecodeError:
            raise TinyformerError(f"{path} is not UTF-8 text (after line {line_no}); convert it to UTF-8 first") from None


def csv_documents(path: Path, text_field: str) -> Iterator[str]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a document may be longer than csv's 128 KiB default
    with _open(path, "r", encoding="utf-8", newline="") as f:
        try:
            reader = csv.DictReader(f)
            names = reader.fieldnames or []
            if names and text_field not in names:
                raise TinyformerError(f"{path} has no column {text_field!r} (its columns: {', '.join(names)}); "
                                      "pass --text-field NAME")
            for row in reader:
                yield _field(row, text_field, f"{path} row {reader.line_num}", names)
        except UnicodeDecodeError:
            raise TinyformerError(f"{path} is not UTF-8 text; convert it to UTF-8 first") from None
        except csv.Error as exc:
            raise TinyformerError(f"{path} is not valid CSV ({exc})") from None


def parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    pq = _import_pyarrow(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet vary by version
        raise TinyformerError(f"cannot read {path} as Parquet: {str(exc).splitlines()[0]}") from None
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise TinyformerError(f"Parquet file {path} has no column {text_field!r} (its columns: "
                              f"{', '.join(names)}); pass --text-field NAME")
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            yield _text(text, f"{path} column {text_field!r}")


# ---------------------------------------------------------------------------------------------- datasets


def hf_splits(source: Source) -> list[tuple[str, object]]:
    """(split name, datasets.Dataset) for each split of a Hugging Face dataset: a folder saved with
    `save_to_disk`, else `datasets.load_dataset(NAME, split=...)` for each of its splits (a name on the Hub, or
    a local folder or file `datasets` can read)."""
    datasets = _import_datasets(source.spec)
    name = source.spec.removeprefix("hf:")
    path = Path(name)
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in HF_SAVED_MARKERS):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                return list(loaded.items())
            return [("train", loaded)]
        return [(split, datasets.load_dataset(name, split=split)) for split in datasets.get_dataset_split_names(name)]
    except TinyformerError:
        raise
    except Exception as exc:  # not found, no network, a folder it cannot read: its own message, first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TinyformerError(f"cannot load the Hugging Face dataset {name}: {first}") from None


def own_splits(splits: list[tuple[str, object]]) -> tuple[str, str] | None:
    """(train split, validation split) names when a dataset has a train split and a validation or test one."""
    names = [n for n, _ in splits]
    val = next((n for n in OWN_VAL_SPLITS if n in names), None)
    return ("train", val) if "train" in names and val else None


def dataset_documents(dataset, spec: str, text_field: str) -> Iterator[str]:
    names = list(dataset.column_names)
    if text_field not in names:
        raise TinyformerError(f"dataset {spec} has no field {text_field!r} (its fields: {', '.join(names)}); "
                              "pass --text-field NAME")
    for batch in dataset.select_columns([text_field]).iter(batch_size=BATCH_ROWS):
        for text in batch[text_field]:
            yield _text(text, f"dataset {spec} field {text_field!r}")


# ---------------------------------------------------------------------------------------------- helpers


def _open(path: Path, mode: str, **kwargs):
    try:
        return open(path, mode, **kwargs)  # noqa: SIM115 -- the caller's `with` closes it
    except OSError as exc:
        raise TinyformerError(f"cannot read source {path}: {exc.strerror}") from None


def _field(record: dict, name: str, where: str, present: list[str]) -> str:
    if name not in record:
        raise TinyformerError(f"{where} has no field {name!r} (its fields: {', '.join(map(str, present)) or 'none'}); "
                              "pass --text-field NAME")
    return _text(record[name], where)


def _text(value, where: str) -> str:
    if value is None:
        return ""  # a missing value is an empty document, skipped like a blank one
    if not isinstance(value, str):
        raise TinyformerError(f"{where} holds a {type(value).__name__}, not text; pass --text-field NAME of a "
                              "text field")
    return value
