"""`encode_batch` on threads: the same ids as encoding text by text, however the batch is shaped (one huge text,
many tiny ones, specials allowed or not, any pattern), with few hand-offs between threads (counted, not timed)."""

from __future__ import annotations

import random

import pytest

from tinyformer.tokenizer import Tokenizer, parallel, train_bpe

EOT = "<|endoftext|>"
WORDS = ["Max", " liked", " to", " play", ".\n", "\n", "/", " naïve", " 東京", " 👍", "  ", "\t", "'s", " 123", EOT,
         "<|pad|>", "x\ny", "!\n/"]


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe([random_text(random.Random(1), 20_000)], 600, [EOT, "<|pad|>"], pattern="o200k", num_workers=1)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", "o200k", r"\S+|\s+"])
@pytest.mark.parametrize("allowed", [(), "all", {EOT}])
def test_batches_of_any_shape_give_the_ids_of_each_text(tok, pattern, allowed, monkeypatch):
    monkeypatch.setattr(parallel, "PARALLEL_MIN_CHARS", 1000)
    tok = Tokenizer(tok.merges, list(tok.special_tokens), pattern)
    rng = random.Random(2)
    huge = random_text(rng, 30_000)  # cut into pieces for the threads
    batches = [[huge], [random_text(rng, rng.randint(0, 30)) for _ in range(3000)], [huge, "", "a", huge[:5000]]]
    for texts in batches:
        expected = [tok.encode(t, allowed_special=allowed) for t in texts]
        assert tok.encode_batch(texts, allowed_special=allowed, num_workers=3) == expected
        assert tok.encode_batch(texts, allowed_special=allowed, num_workers=1) == expected


@pytest.fixture
def hand_offs(monkeypatch) -> list[int]:
    """The size of every group of texts handed to a thread (parallel from 1,000 characters on)."""
    monkeypatch.setattr(parallel, "PARALLEL_MIN_CHARS", 1000)
    calls: list[int] = []
    encode_many = Tokenizer._encode_many
    monkeypatch.setattr(Tokenizer, "_encode_many", lambda self, texts, allowed: calls.append(len(texts)) or
                        encode_many(self, texts, allowed))
    return calls


def test_many_texts_go_to_the_threads_in_a_few_groups(tok, hand_offs):
    calls = hand_offs
    rng = random.Random(3)
    texts = [random_text(rng, 5) for _ in range(10_000)]
    tok.encode_batch(texts, num_workers=2)
    assert sum(calls) == len(texts) and len(calls) <= 2 * parallel.GROUPS_PER_WORKER + 1


def test_one_huge_text_is_shared_by_the_threads(tok, hand_offs):
    calls = hand_offs
    text = "Max liked to play.\n" * 20_000
    assert tok.encode_batch([text], num_workers=2) == [tok.encode(text)]
    assert len(calls) >= 2 * parallel.GROUPS_PER_WORKER - 1
    # a special token with a line end in it: lines are no safe cut, so the text stays whole
    nl = Tokenizer(tok.merges, ["<|a\nb|>"], tok.pattern)
    calls.clear()
    assert nl.encode_batch([text + "<|a\nb|>"], allowed_special="all", num_workers=2) == [
        nl.encode(text + "<|a\nb|>", allowed_special="all")]
    assert calls == [1]


def test_thread_copies_share_nothing_that_changes(tok):
    copy = tok.thread_copy()
    assert copy._native is not tok._native and copy._cache is not tok._cache
    text = random_text(random.Random(4), 2000)
    assert copy.encode(text) == tok.encode(text)


def test_empty_batches(tok, monkeypatch):
    monkeypatch.setattr(parallel, "PARALLEL_MIN_CHARS", 0)
    assert tok.encode_batch([], num_workers=2) == []
    assert tok.encode_batch(["", ""], allowed_special="all", num_workers=2) == [[], []]
