"""`tinyformer tokenizer train|info` through the real CLI: the happy path and every bad input, one line each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tinyformer.tokenizer import Tokenizer, train_bpe

TEXT = "Once upon a time there was a little dog named Max.<|endoftext|>Max liked to play in the park.\n" * 200


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if name in p.name]


def test_train_then_info(cli, corpus, tmp_path):
    out = tmp_path / "tok"
    proc = cli("tokenizer", "train", corpus, "--vocab-size", "300", "--special-tokens", "<|endoftext|>",
               "--out", out)
    assert proc.returncode == 0, proc.stderr
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 300 and tok.special_tokens == {"<|endoftext|>": 299}
    assert tok.merges == train_bpe([TEXT], 300, ["<|endoftext|>"]).merges  # CLI = Python API
    assert (out / "vocab.txt").is_file()
    info = cli("tokenizer", "info", "--tokenizer", out)
    assert info.returncode == 0, info.stderr
    assert "300" in info.stdout and tok.fingerprint in info.stdout and "<|endoftext|> = 299" in info.stdout
    assert "' little'" in info.stdout  # among the longest learned tokens


def test_special_tokens_file_and_a_file_name_given_as_a_token(one_line_error, cli, corpus, tmp_path):
    specials = tmp_path / "special_tokens.txt"
    specials.write_text("<|endoftext|>\n<|pad|>\r\n\n<|sep|>\n", encoding="utf-8")
    out = tmp_path / "tok"
    proc = cli("tokenizer", "train", corpus, "--vocab-size", "300", "--special-tokens-file", specials, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert Tokenizer.load(out).special_tokens == {"<|endoftext|>": 297, "<|pad|>": 298, "<|sep|>": 299}
    # the reference workflow's mistake: the file's name passed where tokens go is refused, with the fix named
    proc = cli("tokenizer", "train", corpus, "--vocab-size", "300", "--special-tokens", str(specials),
               "--out", tmp_path / "tok2")
    one_line_error(proc, "is the name of a file", f"--special-tokens-file {specials}")
    assert not (tmp_path / "tok2").exists()
    (tmp_path / "empty.txt").write_text("\n\n")
    proc = cli("tokenizer", "train", corpus, "--vocab-size", "300", "--special-tokens-file", tmp_path / "empty.txt",
               "--out", tmp_path / "tok3")
    one_line_error(proc, "has no tokens")
    proc = cli("tokenizer", "train", corpus, "--vocab-size", "300", "--special-tokens-file", tmp_path / "missing.txt",
               "--out", tmp_path / "tok3")
    one_line_error(proc, "--special-tokens-file", "does not exist")


def test_gpt4_and_custom_patterns(cli, corpus, tmp_path):
    assert cli("tokenizer", "train", corpus, "--vocab-size", "280", "--pattern", "gpt4",
               "--out", tmp_path / "a").returncode == 0
    assert Tokenizer.load(tmp_path / "a").pattern.startswith("'(?i:")
    assert cli("tokenizer", "train", corpus, "--vocab-size", "280", "--pattern", r"\S+|\s+",
               "--out", tmp_path / "b").returncode == 0
    assert Tokenizer.load(tmp_path / "b").pattern == r"\S+|\s+"


def test_missing_input(one_line_error, cli, tmp_path):
    proc = cli("tokenizer", "train", tmp_path / "nope.txt", "--vocab-size", "300", "--out", tmp_path / "tok")
    one_line_error(proc, "nope.txt", "does not exist")
    assert not (tmp_path / "tok").exists()


def test_empty_input(one_line_error, cli, tmp_path):
    """An empty file would give a tokenizer with no merges (bytes only): refused, nothing written."""
    (tmp_path / "empty.txt").write_text("")
    proc = cli("tokenizer", "train", tmp_path / "empty.txt", "--vocab-size", "300", "--out", tmp_path / "tok")
    one_line_error(proc, "empty.txt", "empty")
    assert not (tmp_path / "tok").exists()


def test_directory_as_input(one_line_error, cli, tmp_path):
    proc = cli("tokenizer", "train", tmp_path, "--vocab-size", "300", "--out", tmp_path / "tok")
    one_line_error(proc, "is a directory")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read any file")
def test_unreadable_input(one_line_error, cli, corpus, tmp_path):
    corpus.chmod(0)
    proc = cli("tokenizer", "train", corpus, "--vocab-size", "300", "--out", tmp_path / "tok")
    one_line_error(proc, "not readable")


def test_vocab_size_too_small(one_line_error, cli, corpus, tmp_path):
    proc = cli("tokenizer", "train", corpus, "--vocab-size", "256", "--special-tokens", "<|endoftext|>",
               "--out", tmp_path / "tok")
    one_line_error(proc, "vocab size 256 is too small", "257")
    assert leftovers(tmp_path, "tok") == []


def test_empty_special_token(one_line_error, cli, corpus, tmp_path):
    proc = cli("tokenizer", "train", corpus, "--vocab-size", "300", "--special-tokens", "",
               "--out", tmp_path / "tok")
    one_line_error(proc, "empty special token")


def test_output_exists_needs_force(one_line_error, cli, corpus, tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = cli("tokenizer", "train", corpus, "--vocab-size", "300", "--out", out)
    one_line_error(proc, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    proc = cli("tokenizer", "train", corpus, "--vocab-size", "300", "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert Tokenizer.load(out).vocab_size == 300 and not (out / "keep.txt").exists()
    assert leftovers(tmp_path, ".tok.") == []  # no temporary directory left beside it


def test_input_not_utf8_names_file_and_offset(one_line_error, cli, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world\n" * 10 + b"caf\xe9 latin-1\n")
    proc = cli("tokenizer", "train", bad, "--vocab-size", "300", "--out", tmp_path / "tok")
    one_line_error(proc, "bad.txt", "not valid UTF-8", "byte offset 123", "--errors replace")
    assert leftovers(tmp_path, "tok") == []
    proc = cli("tokenizer", "train", bad, "--vocab-size", "300", "--errors", "replace", "--out", tmp_path / "tok")
    assert proc.returncode == 0, proc.stderr
    assert Tokenizer.load(tmp_path / "tok").vocab_size <= 300


@pytest.mark.parametrize(
    "content, needle",
    [("garbage{", "corrupt"),
     ('{"format": "tinyformer-bpe", "version": 7, "merges": [], "special_tokens": [], "pattern": "x"}',
      "unknown tokenizer file version 7")],
)
def test_info_on_corrupt_or_unknown_version_file(one_line_error, cli, tmp_path, content, needle):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(content)
    one_line_error(cli("tokenizer", "info", "--tokenizer", tmp_path / "tok"), needle)


def test_info_on_missing_tokenizer(one_line_error, cli, tmp_path):
    one_line_error(cli("tokenizer", "info", "--tokenizer", tmp_path / "none"), "no tokenizer at")

