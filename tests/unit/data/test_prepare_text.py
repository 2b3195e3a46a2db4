"""`data prepare text`: every kind of source gives the ids of encoding its documents joined by <|endoftext|>;
the split is by whole documents, seeded, or the dataset's own; the tokenizer learns from the training part."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from tinyformer.data.corpora import EOT
from tinyformer.data.prepare_text import prepare_text
from tinyformer.data.tokenfile import read_token_file
from tinyformer.tokenizer import Tokenizer, train_bpe

WORDS = ["the", "cat", "sat", "on", "a", "mat", "café", "日本", "dog's", "ran", "\"quoted\"", "comma,", "42"]


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Distinct documents with several lines, quotes, commas and non-ASCII text (all that CSV and JSON escape)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(rng.randint(1, 4))]
        docs.append(f"Doc {i}: " + "\n".join(lines) + ("\n" if i % 3 else ""))
    return docs


DOCS = make_docs(40)


def write_source(kind: str, root: Path, docs: list[str]) -> tuple[str, dict]:
    """A source of this kind holding `docs` in order, and the keyword arguments that read it."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "txt":
        path = root / "corpus.txt"
        path.write_text("<|sep|>".join(docs), encoding="utf-8")
        return str(path), {"separator": "<|sep|>"}
    if kind == "folder":  # one document per file, in nested folders; sorted paths give the order
        for i, doc in enumerate(docs):
            (root / f"part{i // 10}").mkdir(exist_ok=True)
            (root / f"part{i // 10}" / f"{i:03d}.txt").write_text(doc, encoding="utf-8")
        (root / "notes.md").write_text("not matched by the glob")
        return str(root), {}
    if kind == "jsonl":
        path = root / "corpus.jsonl"
        path.write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
        return str(path), {"text_field": "body"}
    if kind == "csv":
        path = root / "corpus.csv"
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text"])
            writer.writerows([i, d] for i, d in enumerate(docs))
        return str(path), {}
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = root / "corpus.parquet"
        pq.write_table(pa.table({"text": docs, "n": list(range(len(docs)))}), path, row_group_size=7)
        return str(path), {}
    if kind == "hf-saved":
        import datasets

        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(root / "saved"))
        return str(root / "saved"), {}
    if kind == "hf-files":  # the by-name path, datasets.load_dataset, on a local folder of data files
        (root / "files").mkdir()
        (root / "files" / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        return f"hf:{root / 'files'}", {}
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A fixed BPE tokenizer with <|endoftext|>, trained on text like the documents."""
    path = tmp_path_factory.mktemp("tok") / "tok"
    train_bpe(["\n".join(make_docs(300, seed=9))], 400, special_tokens=[EOT]).save(path)
    return path


def read_split(out: Path, tok: Tokenizer) -> tuple[list[str], list[str]]:
    """The documents of train.bin and val.bin: their text decoded, cut at each end-of-text id."""
    parts = []
    for name in ("train", "val"):
        ids, meta = read_token_file(out / f"{name}.bin")
        assert meta["tokenizer_fingerprint"] == tok.fingerprint
        assert ids[-1] == tok.eot_id  # every document, the last one too, ends with end-of-text
        text = tok.decode(ids.tolist())
        parts.append(text.split(EOT)[:-1])
    return parts[0], parts[1]


def assert_partition(train: list[str], val: list[str], docs: list[str]) -> None:
    """Every document whole in exactly one part, each part in the source order."""
    index = {d: i for i, d in enumerate(docs)}
    assert all(d in index for d in train + val), "a document was cut or changed"
    t, v = [index[d] for d in train], [index[d] for d in val]
    assert sorted(t + v) == list(range(len(docs))) and t == sorted(t) and v == sorted(v)
    assert t and v


@pytest.mark.parametrize("kind", ["txt", "folder", "jsonl", "csv", "parquet", "hf-saved", "hf-files"])
def test_each_source_kind_encodes_its_documents_as_the_tokenizer_does(kind, tmp_path, tok_dir):
    source, kwargs = write_source(kind, tmp_path / "src", DOCS)
    record = prepare_text([source], tmp_path / "out", tokenizer=tok_dir, val_fraction=0.25, seed=3,
                          log=lambda _: None, **kwargs)
    tok = Tokenizer.load(tok_dir)
    train, val = read_split(tmp_path / "out", tok)
    assert_partition(train, val, DOCS)
    for name, part in (("train", train), ("val", val)):
        ids, _ = read_token_file(tmp_path / "out" / f"{name}.bin")
        assert ids.tolist() == tok.encode(EOT.join(part) + EOT, allowed_special={EOT})
    assert (record["train_documents"], record["val_documents"]) == (len(train), len(val))
    assert record["split_kind"] == "seeded" and record["seed"] == 3
    assert Tokenizer.load(tmp_path / "out" / "tokenizer").fingerprint == tok.fingerprint
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "prepare.json", "tokenizer", "train.bin", "train.json", "val.bin", "val.json"]


def test_the_split_is_by_document_and_follows_the_seed(tmp_path, tok_dir):
    docs = make_docs(200, seed=1)
    source, kwargs = write_source("jsonl", tmp_path / "src", docs)
    tok = Tokenizer.load(tok_dir)
    vals = {}
    for run, seed in (("a", 5), ("b", 5), ("c", 6)):
        prepare_text([source], tmp_path / run, tokenizer=tok_dir, val_fraction=0.2, seed=seed, log=lambda _: None,
                     **kwargs)
        train, val = read_split(tmp_path / run, tok)
        assert_partition(train, val, docs)
        vals[run] = val
        assert 20 <= len(val) <= 60  # about a fifth of 200
    assert (tmp_path / "a" / "val.bin").read_bytes() == (tmp_path / "b" / "val.bin").read_bytes()
    assert vals["a"] == vals["b"] and vals["a"] != vals["c"]


def test_a_dataset_with_its_own_splits_keeps_them(tmp_path, tok_dir):
    import datasets

    train_docs, val_docs = make_docs(30, seed=2), make_docs(6, seed=3)
    for val_name in ("validation", "test"):
        path = tmp_path / f"dd-{val_name}"
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": train_docs}),
                              val_name: datasets.Dataset.from_dict({"text": val_docs})}).save_to_disk(str(path))
        logged: list[str] = []
        record = prepare_text([str(path)], tmp_path / f"out-{val_name}", tokenizer=tok_dir, log=logged.append)
        train, val = read_split(tmp_path / f"out-{val_name}", Tokenizer.load(tok_dir))
        assert (train, val) == (train_docs, val_docs)
        assert record["split_kind"] == "dataset" and record["seed"] is None
        assert f"{val_name} for validation" in record["split"] and f"{val_name} for validation" in logged[-1]


def test_the_tokenizer_is_trained_on_the_training_documents_only(tmp_path):
    source, kwargs = write_source("txt", tmp_path / "src", DOCS)
    prepare_text([source], tmp_path / "out", vocab_size=300, val_fraction=0.3, seed=1, log=lambda _: None, **kwargs)
    tok = Tokenizer.load(tmp_path / "out" / "tokenizer")
    train, val = read_split(tmp_path / "out", tok)
    assert_partition(train, val, DOCS)
    reference = tmp_path / "train-docs.txt"
    reference.write_text(EOT.join(train) + EOT, encoding="utf-8")
    assert tok.fingerprint == train_bpe([reference], 300, special_tokens=[EOT]).fingerprint
    assert tok.vocab_size == 300

    # --tokenizer-sample-bytes: the BPE learns from the first N bytes of that same training text
    n = len((EOT.join(train[:3]) + EOT).encode("utf-8")) + 5  # five bytes into the fourth document
    prepare_text([source], tmp_path / "sampled", vocab_size=300, val_fraction=0.3, seed=1, tokenizer_sample_bytes=n,
                 log=lambda _: None, **kwargs)
    head = tmp_path / "head.txt"
    head.write_bytes(reference.read_bytes()[:n])
    sampled = Tokenizer.load(tmp_path / "sampled" / "tokenizer")
    assert sampled.fingerprint == train_bpe([head], 300, special_tokens=[EOT]).fingerprint != tok.fingerprint
    assert read_token_file(tmp_path / "sampled" / "val.bin")[1]["n_bytes"] == \
        read_token_file(tmp_path / "out" / "val.bin")[1]["n_bytes"]  # the same split, only the tokenizer differs


def test_blank_documents_are_skipped_and_neither_part_is_left_empty(tmp_path, tok_dir):
    path = tmp_path / "two.txt"
    path.write_text(f"first story\n{EOT}\n \n{EOT}\nsecond story\n{EOT}\n", encoding="utf-8")
    record = prepare_text([str(path)], tmp_path / "out", tokenizer=tok_dir, separator=EOT, val_fraction=0.01,
                          log=lambda _: None)
    train, val = read_split(tmp_path / "out", Tokenizer.load(tok_dir))
    # documents keep their text as written between separators; the blank one and the trailing newline are dropped
    assert train + val == ["first story\n", "\nsecond story\n"] and len(val) == 1
    assert record["blank_documents_skipped"] == 2


@pytest.mark.parametrize("read_bytes", [1, 3, 7, 64])
def test_a_text_file_read_in_pieces_splits_as_the_whole_text_would(read_bytes, tmp_path, monkeypatch):
    from tinyformer.data import sources

    monkeypatch.setattr(sources, "READ_BYTES", read_bytes)  # separators and characters across piece edges
    rng = random.Random(read_bytes)
    alphabet = ["a", "b", "|", "\n", EOT, "<|end", "é", "日本", "\n\n", "xxxxx"]
    for trial in range(60):
        separator = rng.choice([EOT, "\n\n", "|", "ab"])
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        path = tmp_path / f"{trial}.txt"
        path.write_text(text, encoding="utf-8")
        assert list(sources.text_documents(path, separator)) == text.split(separator)
        assert list(sources.text_documents(path, None)) == [text]
