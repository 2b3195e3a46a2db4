"""BPE training pinned to a deliberately naive reference trainer (full recount every merge), on both merge paths."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import regex

from tinyformer.errors import TinyformerError
from tinyformer.tokenizer import GPT2_PATTERN, GPT4_PATTERN, pretokenize, train, train_bpe

HAS_C = train._bpe is not None
PATHS = [pytest.param(False, id="python"), pytest.param(True, id="C", marks=pytest.mark.skipif(
    not HAS_C, reason="C extension tinyformer.tokenizer._bpe not built"))]


def naive_train(texts: list[str], num_merges: int, specials: list[str], pattern: str) -> list[tuple[bytes, bytes]]:
    """Textbook BPE: split out specials, pre-tokenize, then each step recount every pair and merge the best.

    Best = highest count; ties go to the greater (left bytes, right bytes).
    """
    words: Counter = Counter()
    for text in texts:
        pieces = [text]
        if specials:
            alternation = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
            pieces = regex.split(alternation, text)
        for piece in pieces:
            words.update(m.encode("utf-8") for m in regex.findall(pattern, piece))
    seqs = {w: [bytes([b]) for b in w] for w in words}
    merges = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, count in words.items():
            s = seqs[w]
            for pair in zip(s, s[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p[0], p[1]))
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def random_text(seed: int, n_words: int = 1500) -> str:
    """Words over a tiny alphabet (many equal counts, so many ties), with multi-byte characters and digits."""
    rng = random.Random(seed)
    alphabet = ["a", "b", "c", "é", "中", "1", "2", "'", " ", "\n", "!"]
    weights = [9, 7, 5, 2, 2, 2, 2, 1, 1, 1, 1]
    words = []
    for _ in range(n_words):
        words.append("".join(rng.choices(alphabet, weights, k=rng.randint(1, 7))))
    return " ".join(words)


CORPORA = {
    "ties": ["ab ab cd cd ef ef gh gh", "abab cdcd"],
    "repeats": ["aaaa aaa aa a aaaaaaa bbbbbb ab ab ab", "aaaaa"],
    "specials": ["the cat<|endoftext|>the hat<|endoftext|><|pad|>that cat sat<|pad|>"],
    "mixed": ["It's 2024: naïve café — 東京 and 12345 apples!\r\n\tTabs  and   spaces.\n\nNew 'll 've 're."],
    "random": [random_text(0)],
}


@pytest.mark.parametrize("use_c", PATHS)
@pytest.mark.parametrize("name", list(CORPORA))
@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN], ids=["gpt2", "gpt4"])
def test_trainer_matches_naive_reference(name, pattern, use_c):
    texts = CORPORA[name]
    specials = ["<|endoftext|>", "<|pad|>"] if name == "specials" else []
    num_merges = 60
    expected = naive_train(texts, num_merges, specials, pattern)
    tok = train_bpe(texts, 256 + num_merges + len(specials), specials, pattern, use_c=use_c, num_workers=1)
    assert tok.merges == expected
    assert list(tok.special_tokens) == specials
    assert tok.vocab_size == 256 + len(expected) + len(specials)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_c_and_python_paths_give_identical_merges(seed):
    if not HAS_C:
        pytest.skip("C extension not built")
    text = random_text(seed, n_words=6000)
    merges_py = train_bpe([text], 900, use_c=False, num_workers=1).merges
    merges_c = train_bpe([text], 900, use_c=True, num_workers=1).merges
    assert merges_c == merges_py
    assert len(merges_c) > 300  # long enough to exercise stale heap entries and re-queued counts


def test_c_path_matches_naive_on_a_long_run():
    text = random_text(7, n_words=800)
    expected = naive_train([text], 250, [], GPT2_PATTERN)
    assert train_bpe([text], 256 + 250, num_workers=1).merges == expected


def test_tie_goes_to_the_greater_byte_pair():
    # Every pair occurs once: (' ', 'c'), ('a', 'b'), ('c', 'd'); the greatest is ('c', 'd').
    tok = train_bpe(["ab cd"], 257)
    assert tok.merges == [(b"c", b"d")]
    # Equal left bytes: decided by the right bytes.
    tok = train_bpe(["xa xb"], 257, pattern=r"\S+")
    assert tok.merges == [(b"x", b"b")]


def test_no_merge_crosses_a_special_token_or_a_pre_token():
    text = "x<|endoftext|>y" * 50 + " hello world" * 20
    tok = train_bpe([text], 300, ["<|endoftext|>"])
    made = [a + b for a, b in tok.merges]
    assert not any(b"<" in t or b">" in t or b"|" in t for t in made)  # specials are never training text
    assert not any(t.strip(b" ") and b" " in t.strip(b" ") for t in made)  # no token spans two pre-tokens
    # This text runs out of pairs before 300 ids: the special token still takes the last id.
    assert tok.vocab_size < 300 and tok.special_tokens == {"<|endoftext|>": tok.vocab_size - 1}


def test_file_input_same_on_one_and_two_workers(tmp_path, monkeypatch):
    text = random_text(11, n_words=20000).replace("!", "!\n") + "<|endoftext|>" + random_text(12, n_words=3000)
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(pretokenize, "BLOCK_BYTES", 4096)  # many blocks, so the pool really splits the work
    one = train_bpe([path], 700, ["<|endoftext|>"], num_workers=1)
    two = train_bpe([path], 700, ["<|endoftext|>"], num_workers=2)
    whole = train_bpe([text], 700, ["<|endoftext|>"], num_workers=1)
    assert one.merges == two.merges == whole.merges
    assert one.fingerprint == two.fingerprint


HARD = (
    "It's   a test:\n\n\n  indented\r\n\tline 12345 ok.\n  \nx\ny\n.\n'll\n'\nll 9\n99\n"
    "東京\n\u200b zero width\n👩‍💻 emoji\n  trailing  \n<|endoftext|>\nnext<|endoftext|>more\n"
)


def _whole_counts(text: str, pattern: str, specials: list[str]) -> Counter:
    alternation = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    return Counter(tok for part in regex.split(alternation, text) for tok in regex.findall(pattern, part))


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN], ids=["gpt2", "gpt4"])
@pytest.mark.parametrize("specials", [["<|endoftext|>"], ["<<", "t\nn", "<|endoftext|>"]], ids=["eot", "awkward"])
def test_cutting_files_into_blocks_and_ranges_does_not_change_pre_tokens(tmp_path, monkeypatch, pattern, specials):
    # "awkward" specials overlap themselves ("<<<") and contain a line end, so neither cut rule is safe for them.
    text = (HARD + "a<<<b<<t\nnext\n") * 40
    path = tmp_path / "hard.txt"
    path.write_text(text, encoding="utf-8")
    blocks = list(pretokenize.iter_blocks(path, specials, block_bytes=50))
    assert b"".join(b for _, b in blocks) == text.encode("utf-8")
    assert len(blocks) > 20 if specials == ["<|endoftext|>"] else len(blocks) == 1
    ranges = pretokenize.split_file(path, 7, specials)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(text.encode()) and all(
        a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    monkeypatch.setattr(pretokenize, "BLOCK_BYTES", 50)
    expected = _whole_counts(text, pattern, specials)
    assert pretokenize.count_pretokens([path], pattern, specials, num_workers=1) == expected
    assert pretokenize.count_pretokens([path], pattern, specials, num_workers=3) == expected


def test_vocab_size_counts_bytes_merges_and_specials():
    tok = train_bpe(["hello hello world, the quick brown fox jumps " * 20], 270, ["<|a|>", "<|b|>"])
    assert tok.vocab_size == 270
    assert tok.special_tokens == {"<|a|>": 268, "<|b|>": 269}
    assert len(tok.merges) == 12


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(TinyformerError, match="too small.*at least 258"):
        train_bpe(["abc"], 257, ["<|a|>", "<|b|>"])
    with pytest.raises(TinyformerError, match="empty special token"):
        train_bpe(["abc"], 300, [""])
    with pytest.raises(TinyformerError, match="does not compile"):
        train_bpe(["abc"], 300, pattern="(unclosed")


def test_files_and_texts_are_told_apart(tmp_path):
    text = "some text to train on, some text to train on"
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    from_text = train_bpe([text], 270)
    assert train_bpe([path], 270).merges == from_text.merges == train_bpe([str(path)], 270).merges
    with pytest.raises(TinyformerError, match="missing.txt does not exist"):
        train_bpe([str(tmp_path / "missing.txt")], 270)  # a mistyped path is not trained on as text
    with pytest.raises(TinyformerError, match="mix of file paths and texts"):
        train_bpe([path, "and some text"], 270)
