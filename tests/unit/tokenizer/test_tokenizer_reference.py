"""Our encoder pinned to independent implementations: for tokenizers we train, `encode` must give the ids of
tiktoken built from our ranks (in memory and from the exported rank file) and of HF `tokenizers` and
`transformers` loaded from our HF export, on hard cases and random text; and decode(encode(s)) == s."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyformer.tokenizer import GPT2_PATTERN, GPT4_PATTERN, Tokenizer, train_bpe
from tinyformer.tokenizer.export import load_tiktoken_export, to_hf, write_tiktoken

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is the reference encoder (pip install '.[dev]')")
hf_tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers is a reference (pip install '.[dev]')")
transformers = pytest.importorskip("transformers", reason="transformers is a reference (pip install '.[dev]')")

SPECIALS = ["<|endoftext|>", "<|pad|>"]

# Pieces of the hard cases; the training corpus is made of them so that merges cover them too.
FRAGMENTS = [
    "don't", "I'LL", "we've", "They're", "it's", "SHE'D", "'s", "''", "rock'n'roll",
    "7", "12345", "1234567890", "3.14159", "2024-01-01", "१२३", "٣٤٥",
    "\r\n", "\r", "\n", "\n\n\n", "\t", "\t\t", "  ", "     ", " \n ", "\u00a0", "\u3000",
    "café", "cafe\u0301", "naïve", "Ünïcödé", "ÅNGSTRÖM", "e\u0301\u0301",
    "日本語のテキスト", "中文字符", "한국어", "ไทย",
    "👍", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🇫🇷",
    "\u200b", "\u200c", "\u200d", "\ufeff", "\u2060",
    "hello", " world", "The", " quick", " brown", " fox", "x=1;", "(a+b)*c", "!!!", "...", "—", "“quoted”",
    "<|endoftext|>", "<|pad|>", "<|endoftext", "|>",
]

HARD_CASES = {
    "empty": "",
    "contractions": "don't I'LL we've They're it's SHE'D Don'T you'Re rock'n'roll 's",
    "digits": "1 12 123 1234 12345 1234567890 3.14159 -42 1e10 2024-01-01 ١٢٣ १२३",
    "crlf": "line one\r\nline two\r\n\r\nlast\r",
    "tabs_and_spaces": "a\tb\t\tc  d     e \n  f\t \n\n   \n",
    "trailing_space": "end   ",
    "accents": "café cafe\u0301 naïve Ünïcödé ÅNGSTRÖM e\u0301\u0301 Å",
    "cjk": "日本語のテキスト、中文字符。한국어 テスト123",
    "emoji": "👍 👍🏽 👨\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 🇫🇷 a👍b",
    "zero_width": "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060wj",
    "specials_in_text": "Hello<|endoftext|>world <|pad|><|pad|> <|endoftext<|endoftext|>|>",
    "special_only": "<|endoftext|>",
    "mixed": "x=1;\r\n\t(a+b)*c!!! “quoted” — 👍🏽 café<|endoftext|>",
    "unusual_spaces": "a\u00a0b\u3000c\u2028d\u0085e\x0bf\x0cg",
    "whitespace_at_end": "end \n ",  # GPT-4 (cl100k): trailing whitespace stays one piece
}


def make_corpus(seed: int, n_fragments: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(FRAGMENTS) + rng.choice(["", " ", " ", "\n", ". "]) for _ in range(n_fragments))


@dataclasses.dataclass
class References:
    tok: Tokenizer
    tiktoken: Any  # tiktoken.Encoding from Tokenizer.to_tiktoken()
    tiktoken_file: Any  # tiktoken.Encoding from the exported .tiktoken rank file
    hf: Any  # tokenizers.Tokenizer from our tokenizer.json (special tokens split out)
    hf_ordinary: Any  # the same, with special-token text encoded as ordinary text
    fast: Any  # transformers PreTrainedTokenizerFast (via AutoTokenizer) from our export
    published: Any  # tiktoken.Encoding with our ranks but OpenAI's own pattern string (r50k / cl100k)


def published_pattern(name: str) -> str:
    """The pattern string tiktoken ships for GPT-2 (r50k) or GPT-4 (cl100k_base)."""
    import tiktoken_ext.openai_public as openai_public

    if name == "gpt2":
        return openai_public.r50k_pat_str
    with pytest.MonkeyPatch.context() as mp:  # only to read pat_str: the rank file would be downloaded
        mp.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
        return openai_public.cl100k_base()["pat_str"]


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def refs(request, tmp_path_factory) -> References:
    pattern = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}[request.param]
    tok = train_bpe([make_corpus(0, 5000)], 256 + 400 + len(SPECIALS), special_tokens=SPECIALS, pattern=pattern)
    assert len(tok.merges) == 400
    out = tmp_path_factory.mktemp(f"export-{request.param}")
    to_hf(tok, out)
    write_tiktoken(tok, out)
    hf_ordinary = hf_tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    hf_ordinary.encode_special_tokens = True
    return References(
        tok=tok,
        tiktoken=tok.to_tiktoken(),
        tiktoken_file=load_tiktoken_export(out),
        hf=hf_tokenizers.Tokenizer.from_file(str(out / "tokenizer.json")),
        hf_ordinary=hf_ordinary,
        fast=transformers.AutoTokenizer.from_pretrained(str(out)),
        published=tiktoken.Encoding(
            name=f"published-{request.param}",
            pat_str=published_pattern(request.param),
            mergeable_ranks={tok.vocab[i]: i for i in range(256 + len(tok.merges))},
            special_tokens=tok.special_tokens,
        ),
    )


def assert_matches_references(refs: References, text: str) -> None:
    tok = refs.tok
    # special-token text not allowed: encoded as ordinary text, as tiktoken's encode_ordinary does
    ordinary = tok.encode(text)
    assert ordinary == tok.encode_ordinary(text)
    assert ordinary == refs.tiktoken.encode_ordinary(text)
    assert ordinary == refs.tiktoken.encode(text, disallowed_special=())
    assert ordinary == refs.tiktoken_file.encode_ordinary(text)
    assert ordinary == refs.hf_ordinary.encode(text, add_special_tokens=False).ids
    assert ordinary == refs.published.encode_ordinary(text)  # our pattern splits as OpenAI's does
    # all special tokens allowed
    special = tok.encode(text, allowed_special="all")
    assert special == refs.tiktoken.encode(text, allowed_special="all")
    assert special == refs.hf.encode(text, add_special_tokens=False).ids
    assert special == refs.fast.encode(text, add_special_tokens=False)
    assert special == refs.published.encode(text, allowed_special="all")
    # one special allowed, the other one text
    only_pad = tok.encode(text, allowed_special={"<|pad|>"})
    assert only_pad == refs.tiktoken.encode(text, allowed_special={"<|pad|>"}, disallowed_special=())
    for ids in (ordinary, special, only_pad):
        assert tok.decode(ids) == text
        assert refs.tiktoken.decode(ids) == text
        assert refs.hf.decode(ids, skip_special_tokens=False) == text
    assert refs.fast.decode(special) == text


@pytest.mark.parametrize("case", HARD_CASES)
def test_hard_cases_match_tiktoken_and_hf(refs: References, case: str):
    assert_matches_references(refs, HARD_CASES[case])


def test_specials_in_text_become_special_ids_only_when_allowed(refs: References):
    text = HARD_CASES["specials_in_text"]
    eot, pad = refs.tok.special_tokens["<|endoftext|>"], refs.tok.special_tokens["<|pad|>"]
    assert refs.tok.encode(text, allowed_special="all").count(eot) == 2
    assert refs.tok.encode(text, allowed_special="all").count(pad) == 2
    assert not {eot, pad} & set(refs.tok.encode(text))
    assert refs.tok.encode(text, allowed_special={"<|pad|>"}).count(pad) == 2
    assert eot not in refs.tok.encode(text, allowed_special={"<|pad|>"})


def test_whole_training_corpus_matches_tiktoken(refs: References):
    text = make_corpus(1, 3000)  # unseen text from the same pieces: long runs, every fragment
    ids = refs.tok.encode(text, allowed_special="all")
    assert ids == refs.tiktoken.encode(text, allowed_special="all")
    assert ids == refs.hf.encode(text, add_special_tokens=False).ids
    assert len(ids) < len(text.encode("utf-8")) / 1.5  # the merges do compress it


def test_transformers_config_sets_eos_and_keeps_spaces(refs: References):
    assert refs.fast.eos_token == "<|endoftext|>"
    assert refs.fast.eos_token_id == refs.tok.eot_id
    assert refs.fast.bos_token_id == refs.tok.eot_id
    assert len(refs.fast) == refs.tok.vocab_size
    text = "a , b . c ! don 't"  # decode must not "clean up" the spaces
    assert refs.fast.decode(refs.fast.encode(text, add_special_tokens=False)) == text


def test_overlapping_specials_longest_match_wins_like_hf(refs: References, tmp_path: Path):
    tok = Tokenizer(refs.tok.merges, special_tokens=["<|end|>", "<|endoftext|>", "<|e"], pattern=refs.tok.pattern)
    to_hf(tok, tmp_path)
    hf = hf_tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "a<|endoftext|>b<|end|>c<|e<|end|><|endoftext|><|endo"
    ids = tok.encode(text, allowed_special="all")
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert ids.count(tok.special_tokens["<|endoftext|>"]) == 2
    assert tok.decode(ids) == text


# Random text. Characters unassigned in this Python's Unicode tables (category Cn) are left out: the three
# regex engines (regex, fancy-regex, Oniguruma) ship different Unicode versions and may class them differently.
random_chars = st.characters(exclude_categories=("Cs", "Cn"))
random_text = st.one_of(
    st.text(random_chars, max_size=40),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(random_chars, max_size=4)), max_size=12).map("".join),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=random_text)
def test_random_text_matches_references(refs: References, text: str):
    assert_matches_references(refs, text)
