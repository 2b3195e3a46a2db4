"""Tokenizer encode/decode behaviour users rely on: round trips, special tokens, streaming, batches, files."""

from __future__ import annotations

import hashlib
import json
import pickle
import random

import pytest

from tinyformer.errors import TinyformerError
from tinyformer.tokenizer import GPT4_PATTERN, Tokenizer, parallel, train_bpe
from tinyformer.tokenizer import tokenizer as tokenizer_module

EOT = "<|endoftext|>"

HARD_STRINGS = [
    "",
    "a",
    "Hello, world! It's what they'll've done; we're I'd I'm.",
    "digits 1 12 123 1234 12345678901234567890 3.14159 1,000,000",
    "crlf\r\nline\r\n\r\nend\rcr",
    "tabs\tand\t\t  spaces    \t\n  mixed   ",
    "accents: naïve café résumé Ångström Zoë",
    "CJK: 東京は日本の首都です。中文字符。한국어",
    "emoji 👩‍👩‍👧‍👦 with joiners 👍🏽 🏳️‍🌈 and skin tones",
    "zero\u200bwidth\u200cjoiner\u200dand\ufeffbom",
    "special <|endoftext|> inside <|endoftext|><|endoftext|> text<|pad|>",
    "   leading and trailing spaces   ",
    "\n\n\n",
    "control \x00\x01\x7f chars",
]

TRAIN_TEXT = " ".join(HARD_STRINGS) * 30 + (
    "Once upon a time there was a little dog named Max. Max liked to play in the park. " * 40
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe([TRAIN_TEXT], 700, [EOT, "<|pad|>"], num_workers=1)


@pytest.fixture(scope="module")
def tok_py(tok) -> Tokenizer:
    """The same tokenizer with the C encoder switched off."""
    other = Tokenizer(tok.merges, list(tok.special_tokens), tok.pattern)
    other._native, other._fast_kind = None, 0
    return other


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_decode_encode_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    assert tok.decode_bytes(tok.encode_ordinary(text)) == text.encode("utf-8")


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_c_and_python_encoders_agree(tok, tok_py, text):
    assert tok.encode(text, allowed_special="all") == tok_py.encode(text, allowed_special="all")
    assert tok.encode_ordinary(text) == tok_py.encode_ordinary(text)


def test_merges_are_actually_used(tok):
    ids = tok.encode("Once upon a time there was a little dog")
    assert len(ids) < len("Once upon a time there was a little dog") / 2
    assert all(i < tok.vocab_size for i in ids)


def test_allowed_and_not_allowed_special_tokens(tok):
    text = f"a{EOT}b<|pad|>c"
    eot, pad = tok.special_tokens[EOT], tok.special_tokens["<|pad|>"]
    assert tok.encode(text, allowed_special="all").count(eot) == 1
    only_eot = tok.encode(text, allowed_special={EOT})
    assert eot in only_eot and pad not in only_eot
    assert tok.decode(only_eot) == text
    # Not allowed: the special text is ordinary text, exactly as encode_ordinary would encode it.
    assert tok.encode(text) == tok.encode_ordinary(text)
    assert eot not in tok.encode(text) and pad not in tok.encode(text)
    with pytest.raises(TinyformerError, match="not a special token"):
        tok.encode(text, allowed_special={"<|nope|>"})


def test_overlapping_special_tokens_longest_match_wins():
    for specials in (["<s>", "<s>x", "<s>xy"], ["<s>xy", "<s>", "<s>x"]):
        tok = Tokenizer([], specials)
        ids = tok.encode("a<s>xyz<s>x<s>", allowed_special="all")
        sp = tok.special_tokens
        assert ids == [ord("a"), sp["<s>xy"], ord("z"), sp["<s>x"], sp["<s>"]]
        assert tok.decode(ids) == "a<s>xyz<s>x<s>"


def test_special_ids_come_last_in_given_order(tok):
    n = 256 + len(tok.merges)
    assert tok.special_tokens == {EOT: n, "<|pad|>": n + 1}
    assert tok.eot_id == n and tok.vocab_size == n + 2
    assert tok.vocab[n] == EOT.encode()


def test_ids_follow_merge_order(tok):
    vocab = tok.vocab
    for i, (a, b) in enumerate(tok.merges):
        assert vocab[256 + i] == a + b
    assert all(vocab[i] == bytes([i]) for i in range(256))


def test_decode_never_raises_on_invalid_utf8(tok):
    assert tok.decode([0xFF]) == "\ufffd"
    euro = list("€".encode())
    assert tok.decode(euro[:2]) == "\ufffd"  # a cut multi-byte character
    assert tok.decode(euro[:2] + [ord("a")]) == "\ufffda"
    assert tok.decode_bytes(euro[:2]) == "€".encode()[:2]
    for bad in (tok.vocab_size, -1):
        with pytest.raises(TinyformerError, match="out of range"):
            tok.decode([5, bad])


def _random_chunks(text: str, rng: random.Random) -> list[str]:
    chunks, i = [], 0
    while i < len(text):
        n = rng.choice([1, 2, 3, 7, 100, 5000, 70000])
        chunks.append(text[i:i + n])
        i += n
    return chunks


@pytest.mark.parametrize("allowed", [(), "all"])
@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_encode_iterable_equals_encode_of_the_whole(tok, allowed, pattern):
    if pattern != "gpt2":
        tok = Tokenizer(tok.merges, list(tok.special_tokens), pattern)
    rng = random.Random(0)
    pieces = HARD_STRINGS + ["Max liked to play.\n", "word " * 50, "x\ny\n", "'ll\n'", "99\n9", "a.\n/b", "!\n//"]
    text = "".join(rng.choice(pieces) for _ in range(6000))
    assert len(text) > 3 * (1 << 16)  # long enough that the stream is cut several times
    streamed = list(tok.encode_iterable(_random_chunks(text, rng), allowed_special=allowed))
    assert streamed == tok.encode(text, allowed_special=allowed)


def test_encode_iterable_streams_without_reading_everything(tok):
    consumed = 0

    def lines():
        nonlocal consumed
        for _ in range(100_000):
            consumed += 1
            yield "Max liked to play in the park.\n"

    first = next(iter(tok.encode_iterable(lines())))
    assert first == tok.encode("Max")[0]
    assert consumed < 10_000  # it started emitting ids long before the end of the stream


def test_encode_batch_on_processes_equals_one_by_one(tok, monkeypatch):
    monkeypatch.setattr(parallel, "PARALLEL_MIN_CHARS", 0)
    texts = [s * 3 for s in HARD_STRINGS] * 4
    expected = [tok.encode(t, allowed_special="all") for t in texts]
    assert tok.encode_batch(texts, allowed_special="all", num_workers=2) == expected
    assert tok.encode_batch(texts, num_workers=1) == [tok.encode(t) for t in texts]


def test_pre_token_cache_stays_bounded(tok, monkeypatch):
    monkeypatch.setattr(tokenizer_module, "CACHE_SIZE", 50)
    fresh = Tokenizer(tok.merges, list(tok.special_tokens), tok.pattern)
    words = " ".join(f"w{i}x" for i in range(2000))
    ids = fresh.encode(words)
    assert len(fresh._cache) <= 50
    assert fresh.decode(ids) == words


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded == tok and loaded.fingerprint == tok.fingerprint
    assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
    assert loaded.encode(TRAIN_TEXT, allowed_special="all") == tok.encode(TRAIN_TEXT, allowed_special="all")
    listing = (tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    id_lines = [line.split("\t") for line in listing if not line.startswith("#")]
    assert len(id_lines) == tok.vocab_size
    a, b = tok.merges[0]
    assert id_lines[256][2] == f"{tok.encode_ordinary(a.decode())[0]} + {tok.encode_ordinary(b.decode())[0]}"
    assert id_lines[10][1] == "'\\n'"  # bytes are shown escaped
    with pytest.raises(TinyformerError, match="already exists"):
        tok.save(tmp_path / "tok")


def test_fingerprint_is_the_hash_of_the_content_not_the_layout(tok, tmp_path):
    tok.save(tmp_path / "tok")
    path = tmp_path / "tok" / "tokenizer.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(reversed(list(data.items()))), indent=4))
    assert Tokenizer.load(tmp_path / "tok").fingerprint == tok.fingerprint
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert tok.fingerprint == hashlib.sha256(canonical.encode()).hexdigest()
    other = Tokenizer(tok.merges, [EOT], tok.pattern)
    assert other.fingerprint != tok.fingerprint
    assert Tokenizer(tok.merges, list(tok.special_tokens), GPT4_PATTERN).fingerprint != tok.fingerprint


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "corrupt"),
        ('{"format": "something-else", "version": 1}', "not a tinyformer-bpe tokenizer"),
        ('{"format": "tinyformer-bpe", "version": 99, "merges": [], "special_tokens": [], "pattern": "x"}',
         "unknown tokenizer file version 99"),
        ('{"format": "tinyformer-bpe", "version": 1, "merges": [["zz", "61"]], "special_tokens": [], "pattern": "x"}',
         "corrupt"),
        ('{"format": "tinyformer-bpe", "version": 1, "merges": [["6162", "63"]], "special_tokens": [], "pattern": "x"}',
         "no earlier merge made"),
    ],
)
def test_corrupt_or_unknown_version_files_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(TinyformerError, match=message) as info:
        Tokenizer.load(tmp_path)
    assert "\n" not in str(info.value)


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone == tok and clone.encode(HARD_STRINGS[10], allowed_special="all") == tok.encode(
        HARD_STRINGS[10], allowed_special="all"
    )


def _random_ascii_heavy(rng: random.Random) -> str:
    """Text that stresses the C pre-tokenizers: every ASCII character, space runs, contractions, case runs, line
    ends before '/', and some mixed scripts and cases (combining marks, titlecase and modifier letters)."""
    atoms = [chr(c) for c in range(128)] + [" ", "  ", "   \n", "\n", "\r\n", "\t", "'s", "'ll", "'ve", "'re", "'t",
                                            "'d", "'m", "'x", "'LL", "'Ve", "'S", "abc", "Abc", "123", "12345", "!!",
                                            " é", "東", "👍", "\u00a0", "\u2028", "x\ny", ".\n", " \n ", "\t\n\t",
                                            "(abc", "\tx", "  \r\n  ", "HELLO", "HeLLo", "ABCdef's", "/", "!\n/",
                                            ".\n/x", "//\n", " /", "'ALL", "Ünïcödé", "ÀB", "Straße", "Привет мир",
                                            "ΣΑΣ", "x\u0301", "\u01c5x", "\u02b0", "\u0660\u0661", "ǅ'S"]
    return "".join(rng.choice(atoms) for _ in range(rng.randint(0, 60)))


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_c_pre_tokenizer_gives_the_regex_ids(pattern):
    if not tokenizer_module._bpe:
        pytest.skip("C extension not built")
    rng = random.Random(5)
    corpus = [_random_ascii_heavy(rng) for _ in range(3000)]
    tok = train_bpe(corpus, 1500, pattern=pattern, num_workers=1)  # dense merges: a split shows in the ids
    assert tok._fast_kind
    for text in corpus[:1500] + [_random_ascii_heavy(rng) for _ in range(1500)] + HARD_STRINGS:
        assert tok.encode_ordinary(text) == tok._encode_ordinary_regex(text), repr(text)
    joined = "".join(corpus)  # long, mixed: cut into ASCII and non-ASCII stretches
    assert tok.encode_ordinary(joined) == tok._encode_ordinary_regex(joined)


def test_long_pieces_encode_like_short_ones():
    """Pieces over 64 bytes take the O(n log n) heap path in C; it must merge exactly like the simple loop."""
    if not tokenizer_module._bpe:
        pytest.skip("C extension not built")
    rng = random.Random(3)
    words = ["".join(rng.choices("abcab ", k=rng.randint(1, 12))) for _ in range(4000)]
    tok = train_bpe([" ".join(words)], 700, num_workers=1)
    for n in (65, 66, 200, 3000):
        for _ in range(5):
            piece = "".join(rng.choices("aabbcc", k=n)).encode()
            assert tok._native.encode_piece(piece) == tok._encode_bytes_python(piece)
    spaces = " " * 100_000  # one huge pre-token: must not take quadratic time
    assert tok.decode(tok.encode(spaces)) == spaces


def test_c_cache_starts_over_when_full_and_stays_correct(tok, tok_py):
    text = "".join(f" {i} x{i}y" for i in range(150_000))  # > 131072 distinct pre-tokens: the C cache cycles
    assert tok.encode(text) == tok_py.encode(text)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_c_pre_token_counts_equal_the_regex_counts(pattern):
    """The C pre-tokenizer, compared piece by piece (ids could hide a wrong split that the merges undo)."""
    from collections import Counter

    import regex

    from tinyformer.tokenizer.pretokenize import count_pretokens_in_text, fast_pattern_kind, resolve_pattern

    pattern = resolve_pattern(pattern)
    if not fast_pattern_kind(pattern):
        pytest.skip("C extension not built")
    rng = random.Random(11)
    compiled = regex.compile(pattern)
    texts = [_random_ascii_heavy(rng) for _ in range(2000)] + HARD_STRINGS
    texts.append("".join(texts))
    for text in texts:
        assert count_pretokens_in_text(text, compiled, None) == Counter(compiled.findall(text)), repr(text)


# Letters, marks and numbers of many kinds, where the patterns' classes differ: titlecase and modifier letters,
# combining marks (in both of o200k's letter sets), non-ASCII digits and spaces, U+017F (matched by (?i)s).
UNICODE_FRAGMENTS = ["A\u0301", "\u0301", "\u0301abc", "ÀB\u0301c", "\u01c5", "\u02b0", "Aʰb", "ǅ'S", "x\u0301'ſ",
                     "'\u017f", "'ſ", "١٢٣٤", "²", "Ⅻ", "\u00a0", "\u3000", "\u2028", "\u200b", "日本語", "Привет",
                     "ΣΑΣ", "🏳️‍🌈", "\ud800", "'s", "'LL", " ", "\n", "\r\n", "!\n/", "a", "Z", "1"]


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k"])
def test_c_pre_tokenizer_of_any_script_gives_the_regex_ids(pattern):
    """Non-ASCII text split in C (the classes of every character, from the regex module) as the regex splits it."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    if not tokenizer_module._bpe:
        pytest.skip("C extension not built")
    rng = random.Random(7)
    corpus = ["".join(rng.choice(UNICODE_FRAGMENTS) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    tok = train_bpe(corpus, 1200, pattern=pattern, num_workers=1)
    for text in corpus[:500] + ["".join(corpus)]:
        assert tok.encode_ordinary(text) == tok._encode_ordinary_regex(text), repr(text)
    assert tok._unicode and tok._native is not None

    text_strategy = st.lists(st.one_of(st.sampled_from(UNICODE_FRAGMENTS), st.text(max_size=3)), max_size=15)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(parts=text_strategy)
    def check(parts):
        text = "".join(parts)
        assert tok.encode_ordinary(text) == tok._encode_ordinary_regex(text)

    check()
