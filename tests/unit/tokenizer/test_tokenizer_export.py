"""Exports and GPT-2-style files: what we write is read by the other libraries' own loaders and gives our ids;
GPT-2 vocab.json/merges.txt load back into the same tokenizer; bad input is a one-line error, nothing left."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from tinyformer.errors import TinyformerError
from tinyformer.tokenizer import GPT2_PATTERN, Tokenizer, train_bpe
from tinyformer.tokenizer.export import to_hf
from tinyformer.tokenizer.gpt2_files import BYTE_TO_UNICODE, write_gpt2_files

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is a reference (pip install '.[dev]')")
hf_tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers is a reference (pip install '.[dev]')")
transformers = pytest.importorskip("transformers", reason="transformers is a reference (pip install '.[dev]')")

TEXT = (
    "Once upon a time, there was a little dog named Max. Max didn't like baths; he'd run away!\n"
    "In 2024 he ran 12345 metres.\r\nCafé au lait, naïve coöperation, 日本語, emoji 👍🏽 and 👨\u200d👩\u200d👧.\n"
)
SAMPLES = [TEXT, "don't I'LL we've", "\t  x  \n\n", "a\u200bb", "<|endoftext|>", ""]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(0)
    words = TEXT.split(" ")
    corpus = "".join(" ".join(rng.sample(words, 12)) + "\n<|endoftext|>\n" for _ in range(300))
    return train_bpe([corpus], 256 + 200 + 1, special_tokens=["<|endoftext|>"], pattern=GPT2_PATTERN)


@pytest.fixture(scope="module")
def tok_dir(tok: Tokenizer, tmp_path_factory) -> Path:
    return tok.save(tmp_path_factory.mktemp("tok") / "tok")


def test_gpt2_files_load_back_and_match_hf_bpe_from_file(tok: Tokenizer, tok_dir: Path, tmp_path: Path, cli):
    out = tmp_path / "gpt2"
    proc = cli("tokenizer", "export", "--tokenizer", tok_dir, "--format", "gpt2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["<|endoftext|>"] == tok.eot_id and vocab["Ġ"] == ord(" ")  # GPT-2's table: space shows as Ġ
    assert (out / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")

    loaded = Tokenizer.from_gpt2_files(out / "vocab.json", out / "merges.txt")
    assert loaded.fingerprint == tok.fingerprint
    assert Tokenizer.load(out).fingerprint == tok.fingerprint  # a directory with the two files loads too

    # HF reads the same files with its own loader and its own built-in GPT-2 regex (ByteLevel use_regex)
    hf = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE.from_file(str(out / "vocab.json"), str(out / "merges.txt")))
    hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = hf_tokenizers.decoders.ByteLevel()
    for text in SAMPLES:
        ids = loaded.encode(text)
        assert ids == tok.encode(text) == hf.encode(text, add_special_tokens=False).ids
        assert hf.decode(ids) == text


def test_gpt2_files_in_original_gpt2_id_order_load_with_a_warning(tok: Tokenizer, tmp_path: Path):
    write_gpt2_files(tok, tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    # the original GPT-2 vocab.json numbers the 256 byte tokens in the order of its byte->unicode table
    table_order = sorted(range(256), key=lambda b: ord(BYTE_TO_UNICODE[b]))
    for new_id, b in enumerate(table_order):
        vocab[BYTE_TO_UNICODE[b]] = new_id
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.warns(UserWarning, match="numbers its tokens differently"):
        loaded = Tokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens


def test_gpt2_files_that_do_not_fit_are_one_line_errors(tok: Tokenizer, tmp_path: Path):
    write_gpt2_files(tok, tmp_path)
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    (tmp_path / "merges.txt").write_text("\n".join(merges[:2] + ["Ġzzqq Ġ"] + merges[2:]), encoding="utf-8")
    with pytest.raises(TinyformerError, match=r"merges.txt line 3: 'Ġzzqq' is neither a byte nor"):
        Tokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "merges.txt").write_text("\n".join(merges + ["Ġ Ġ"]), encoding="utf-8")
    with pytest.raises(TinyformerError, match="lacks 1 tokens.*do not belong together"):
        Tokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    with pytest.raises(TinyformerError, match="does not exist"):
        Tokenizer.from_gpt2_files(tmp_path / "nope.json", tmp_path / "merges.txt")


def test_tiktoken_rank_file_is_read_by_tiktokens_loader(tok: Tokenizer, tok_dir: Path, tmp_path: Path, cli):
    from tiktoken.load import load_tiktoken_bpe

    out = tmp_path / "tt"
    proc = cli("tokenizer", "export", "--tokenizer", tok_dir, "--format", "tiktoken", "--out", out)
    assert proc.returncode == 0, proc.stderr
    ranks = load_tiktoken_bpe(str(out / "tokenizer.tiktoken"))
    assert ranks == {tok.vocab[i]: i for i in range(256 + len(tok.merges))}
    first = (out / "tokenizer.tiktoken").read_text().splitlines()[0]
    assert first == f"{base64.b64encode(bytes([0])).decode()} 0"
    settings = json.loads((out / "tiktoken.json").read_text())
    enc = tiktoken.Encoding(name="t", pat_str=settings["pat_str"], mergeable_ranks=ranks,
                            special_tokens=settings["special_tokens"])
    for text in SAMPLES:
        assert enc.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_hf_export_cli_loads_in_transformers(tok: Tokenizer, tok_dir: Path, tmp_path: Path, cli):
    out = tmp_path / "hf"
    proc = cli("tokenizer", "export", "--tokenizer", tok_dir, "--format", "hf", "--out", out)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    for text in SAMPLES:
        ids = tok.encode(text, allowed_special="all")
        assert fast.encode(text, add_special_tokens=False) == ids == auto.encode(text, add_special_tokens=False)
        assert fast.decode(ids) == text
    assert fast.eos_token_id == tok.eot_id


def test_export_refuses_existing_output_and_leaves_nothing_on_error(tok_dir: Path, tmp_path: Path, cli):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = cli("tokenizer", "export", "--tokenizer", tok_dir, "--format", "hf", "--out", out)
    assert proc.returncode == 2 and "--force" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    proc = cli("tokenizer", "export", "--tokenizer", tok_dir, "--format", "hf", "--out", out, "--force")
    assert proc.returncode == 0 and sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text('{"format": "tinyformer-bpe", "version": 99}')
    proc = cli("tokenizer", "export", "--tokenizer", bad, "--format", "tiktoken", "--out", tmp_path / "tt")
    assert proc.returncode == 2 and "version" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "hf"]  # no partial or temporary output


def test_duplicate_token_bytes_cannot_be_exported(tmp_path: Path):
    # two merges that spell the same bytes: formats keyed by token bytes cannot hold both
    tok = Tokenizer([(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"a", b"bc")])
    with pytest.raises(TinyformerError, match="same bytes b'abc'"):
        to_hf(tok, tmp_path)
    with pytest.raises(TinyformerError, match="same bytes"):
        tok.to_tiktoken()


def test_pattern_that_hf_reads_differently_is_refused(tmp_path: Path):
    # tiktoken's literal cl100k string: in Oniguruma `\p{N}{1,3}+` means (\p{N}{1,3})+, so digits would split apart
    literal_cl100k = (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
        r"""\s+(?!\S)|\s"""
    )
    with pytest.raises(TinyformerError, match="splits text differently.*ours '123', HF '12345'"):
        to_hf(Tokenizer([], pattern=literal_cl100k), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_every_export_builds_the_id_to_bytes_table_once(tok: Tokenizer, tmp_path: Path, monkeypatch):
    """Exporters read the table once per id; were it rebuilt per read, exports would be quadratic."""
    from tinyformer.tokenizer.export import export, hf_tokenizer_json, to_tiktoken

    builds = []
    build = Tokenizer._build_vocab
    monkeypatch.setattr(Tokenizer, "_build_vocab", lambda self: builds.append(1) or build(self))
    fresh = Tokenizer(tok.merges, list(tok.special_tokens), tok.pattern)
    hf_tokenizer_json(fresh)
    to_tiktoken(fresh)
    for fmt in ("hf", "tiktoken", "gpt2"):
        export(fresh, fmt, tmp_path / fmt)
    assert fresh.vocab[300] == fresh.id_to_bytes(300)
    assert len(builds) == 1  # 256 + 200 ids, read by seven exports
    with pytest.raises(TypeError):
        fresh.vocab[0] = b"x"  # shared, so read-only


def test_documented_dotall_pattern_exports_and_hf_gives_our_ids(tmp_path: Path, cli):
    # docs/number-sequences.md trains with --pattern '(?s).'; Oniguruma spells that flag (?m)
    corpus = tmp_path / "rows.txt"
    corpus.write_text("+12+34+46+\n+9a+1+ab+\n<|endoftext|>\n" * 20, encoding="utf-8")
    (tmp_path / "specials.txt").write_text("<|endoftext|>\n", encoding="utf-8")
    cli("tokenizer", "train", corpus, "--vocab-size", 257, "--pattern", "(?s).", "--special-tokens-file",
             tmp_path / "specials.txt", "--out", tmp_path / "tok", check=True)
    tok = Tokenizer.load(tmp_path / "tok")
    assert tok.pattern == "(?s)."
    cli("tokenizer", "export", "--tokenizer", tmp_path / "tok", "--format", "hf", "--out", tmp_path / "hf",
             check=True)
    hf = hf_tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "hf"))
    for text in ["+12+34+46+\n+9a+1+ab+\n", "a\r\n\nb\n", "\n", TEXT]:
        ids = tok.encode(text)
        assert len(ids) == len(text.encode("utf-8"))  # one token per byte: line ends are pieces of their own
        assert hf.encode(text, add_special_tokens=False).ids == ids
        assert fast.encode(text, add_special_tokens=False) == ids and fast.decode(ids) == text


def test_inline_flags_without_an_oniguruma_equivalent_are_refused_saying_what_exports(tmp_path: Path):
    from tinyformer.tokenizer.export import hf_pattern

    assert hf_pattern(r"(?i)(?s)[(?s)]|(?s:.)") == r"(?i)(?m)[(?s)]|(?m:.)"  # in a class it is text; scoped flags map
    with pytest.raises(TinyformerError, match=r"no equivalent of the inline flag 'm'.*\(\?:\^\|\(\?<=\\n\)\)"):
        to_hf(Tokenizer([], pattern=r"(?m)^\s+|\S+|\s+"), tmp_path)
    with pytest.raises(TinyformerError, match=r"mid-pattern.*\(\?s:\.\.\.\)"):
        to_hf(Tokenizer([], pattern=r"\S+|(?s)."), tmp_path)
    assert list(tmp_path.iterdir()) == []
