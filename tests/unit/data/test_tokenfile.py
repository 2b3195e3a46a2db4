"""Token files: `tinyformer tokenizer encode` writes exactly the ids of `Tokenizer.encode` of each whole file,
whatever the workers and block size; the sidecar describes the data; bad input leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from tinyformer.data import encode as encode_module
from tinyformer.data.encode import encode_files
from tinyformer.data.tokenfile import read_token_file, write_token_file
from tinyformer.errors import TinyformerError
from tinyformer.tokenizer import GPT2_PATTERN, GPT4_PATTERN, Tokenizer, train_bpe

PIECES = [
    "Once upon a time", " there was", " a dog", ".", "\n", "\n", "\r\n", "\n\n", "\t", "   ", " don't", " I'LL",
    " 123", "4567", " café", " cafe\u0301", " 日本語", " 👍🏽", "\u200b", "<|endoftext|>", "\n<|endoftext|>\n",
    "x\ny", "!\n?", " \n ", "a \n", "\n b",
]


def make_text(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(PIECES) for _ in range(n))


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def tok(request) -> Tokenizer:
    pattern = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}[request.param]
    return train_bpe([make_text(0, 4000)], 256 + 150 + 2, special_tokens=["<|endoftext|>", "<|pad|>"], pattern=pattern)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    tok = train_bpe([make_text(0, 4000)], 256 + 150 + 1, special_tokens=["<|endoftext|>"])
    return tok.save(tmp_path_factory.mktemp("tok") / "tok")


def test_cli_ids_equal_whole_file_encode_and_sidecar_is_right(tok_dir: Path, tmp_path: Path, cli):
    tok = Tokenizer.load(tok_dir)
    texts = [make_text(1, 3000), "Second document, no final newline: naïve 👍"]
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"doc{i}.txt")
        paths[-1].write_bytes(text.encode("utf-8"))
    out = tmp_path / "data" / "train.bin"
    proc = cli("tokenizer", "encode", "--tokenizer", tok_dir, *paths, "--out", out, "--append-eot",
               "--allowed-special", "all")
    assert proc.returncode == 0, proc.stderr
    assert "bytes/token" in proc.stdout

    ids, meta = read_token_file(out)
    expected = []
    for text in texts:
        expected += tok.encode(text, allowed_special="all") + [tok.eot_id]
    assert ids.dtype == np.dtype("<u2") and ids.tolist() == expected
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert meta["format"] == "tinyformer-tokens" and meta["version"] == 1 and meta["dtype"] == "uint16"
    assert meta["n_tokens"] == len(expected) and meta["vocab_size"] == tok.vocab_size
    assert meta["tokenizer_fingerprint"] == tok.fingerprint and meta["eot_id"] == tok.eot_id
    assert meta["n_bytes"] == n_bytes and meta["bytes_per_token"] == pytest.approx(n_bytes / len(expected), rel=1e-5)
    assert [s["sha256"] for s in meta["sources"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert [s["n_bytes"] for s in meta["sources"]] == [p.stat().st_size for p in paths]
    assert sorted(p.name for p in out.parent.iterdir()) == ["train.bin", "train.json"]  # no temporary files


@pytest.mark.parametrize("allowed", ["none", "all"])
def test_workers_and_block_size_do_not_change_the_ids(tok: Tokenizer, tmp_path: Path, allowed: str):
    text = make_text(2, 20_000)  # about 100 KB: ~50 blocks of 2 KiB, cut at the safe places only
    path = tmp_path / "in.txt"
    path.write_text(text, encoding="utf-8", newline="")
    whole = tok.encode(text, allowed_special=allowed if allowed == "all" else ())
    for workers in (1, 3):
        out = tmp_path / f"w{workers}.bin"
        encode_files(tok, [path], out, allowed_special=allowed, workers=workers, block_bytes=2048)
        assert read_token_file(out)[0].tolist() == whole, f"workers={workers}"


def test_ranges_in_flight_are_bounded(tok: Tokenizer, tmp_path: Path):
    """The reader never runs more than workers * IN_FLIGHT_PER_WORKER ranges ahead of the writer."""
    path = tmp_path / "in.txt"
    path.write_text("x y\n" * 10)
    pulled = []

    def items():
        for i in range(40):
            pulled.append(i)
            yield 1, (str(path), 0, 40, "strict", 1024)

    ahead = []
    for n, (_, _) in enumerate(encode_module._ordered_map(encode_module._encode_range, items(), 2,
                                                          (tok, frozenset(), "uint16"))):
        ahead.append(len(pulled) - n)
    assert len(ahead) == 40 and max(ahead) <= 2 * encode_module.IN_FLIGHT_PER_WORKER + 1


def test_ranges_cover_each_file_and_their_edges_do_not_change_the_ids(tok: Tokenizer, tmp_path: Path):
    """Workers read their own byte ranges: the ranges tile each file, are cut only at safe places (a stretch
    with no safe cut joins the next range), and ids, checksums and EOTs match whole-file encoding."""
    no_cut = "word " * 3000  # 15 KB of one line: no safe cut anywhere in it
    texts = [make_text(3, 6000) + no_cut + make_text(4, 3000), "", "<|endoftext|>" * 500 + make_text(5, 2000)]
    paths = []
    for i, text in enumerate(texts):
        paths.append(tmp_path / f"doc{i}.txt")
        paths[-1].write_text(text, encoding="utf-8", newline="")
    for allowed in ("none", "all"):
        specials = sorted(tok.special_tokens) if allowed == "all" else []
        sources: list = []
        jobs = list(encode_module._jobs(paths, specials, "strict", 1024, 4096, sources))
        for path in paths:
            bounds = [b for _, job in jobs if job is not None and job[0] == str(path) for b in job[1:3]]
            size = path.stat().st_size
            assert bounds[:1] + bounds[-1:] == ([0, size] if size else [])
            assert bounds[1:-1:2] == bounds[2:-1:2]  # each range starts where the one before ends
        assert len(jobs) > 8 + len(paths)
        assert [s["sha256"] for s in sources] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
        expected = []
        for text in texts:
            expected += tok.encode(text, allowed_special=allowed if allowed == "all" else ()) + [tok.eot_id]
        for workers in (1, 2):
            out = tmp_path / f"{allowed}{workers}.bin"
            encode_files(tok, paths, out, allowed_special=allowed, append_eot=True, workers=workers, block_bytes=1024)
            assert read_token_file(out)[0].tolist() == expected, (allowed, workers)


def test_special_text_not_allowed_is_ordinary_text_with_a_note(tok: Tokenizer, tmp_path: Path):
    path = tmp_path / "stories.txt"
    path.write_text("One story.\n<|endoftext|>\nAnother story.\n", encoding="utf-8")
    notes: list[str] = []
    encode_files(tok, [path], tmp_path / "a.bin", log=notes.append)
    assert tok.eot_id not in read_token_file(tmp_path / "a.bin")[0].tolist()
    assert "--allowed-special all" in notes[0]
    encode_files(tok, [path], tmp_path / "b.bin", allowed_special="all")
    assert read_token_file(tmp_path / "b.bin")[0].tolist().count(tok.eot_id) == 1


def test_non_utf8_input_names_file_and_offset_and_leaves_nothing(tok: Tokenizer, tmp_path: Path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("fine text\n" * 50)
    bad.write_bytes(b"hello\nworld\n" * 1000 + b"caf\xe9\n" + b"more\n" * 10)  # \xe9 at byte 12003
    out = tmp_path / "out" / "x.bin"
    for workers in (1, 2):
        with pytest.raises(TinyformerError, match=r"bad\.txt is not valid UTF-8 at byte offset 12003"):
            encode_files(tok, [good, bad], out, workers=workers, block_bytes=1024)
        assert list(out.parent.iterdir()) == []  # no partial output, no temporary file
    encode_files(tok, [bad], out, errors="replace", block_bytes=1024)
    assert read_token_file(out)[0].tolist() == tok.encode(bad.read_bytes().decode("utf-8", errors="replace"))


def test_cli_bad_input_is_one_line_error_and_leaves_nothing(tok_dir: Path, tmp_path: Path, cli):
    src = tmp_path / "in.txt"
    src.write_bytes(b"ok\n\xff\xfe")
    out = tmp_path / "x.bin"
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in [
        (["--out", out, tmp_path / "missing.txt"], "missing.txt does not exist"),
        (["--out", out, src], r"in.txt is not valid UTF-8 at byte offset 3; .*--errors replace"),
        (["--out", tmp_path / "x.txt", src], "must end in .bin"),
    ]:
        proc = cli("tokenizer", "encode", "--tokenizer", tok_dir, *args)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and re.search(message, proc.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == before

    out.write_bytes(b"precious")
    proc = cli("tokenizer", "encode", "--tokenizer", tok_dir, src, "--out", out, "--errors", "replace")
    assert proc.returncode == 2 and "already exists; pass --force" in proc.stderr
    assert out.read_bytes() == b"precious"


def test_append_eot_needs_an_eot_token(tmp_path: Path):
    tok = train_bpe(["plain text with no specials"], 256 + 5)
    src = tmp_path / "in.txt"
    src.write_text("text")
    with pytest.raises(TinyformerError, match="--append-eot needs a tokenizer with the special token <|endoftext|>"):
        encode_files(tok, [src], tmp_path / "x.bin", append_eot=True)
    with pytest.raises(TinyformerError, match="not special tokens of this tokenizer"):
        encode_files(tok, [src], tmp_path / "x.bin", allowed_special="<|endoftext|>")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(TinyformerError, match="contain no text"):
        encode_files(tok, [empty], tmp_path / "x.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "in.txt"]


def test_uint32_when_the_vocab_needs_it(tmp_path: Path):
    ids = [0, 1, 65535, 65536, 69999]
    meta = write_token_file(tmp_path / "big.bin", ids, vocab_size=70_000)
    data, read_meta = read_token_file(tmp_path / "big.bin")
    assert meta == read_meta and meta["dtype"] == "uint32" and data.dtype == np.dtype("<u4")
    assert data.tolist() == ids and (tmp_path / "big.bin").stat().st_size == 4 * len(ids)
    with pytest.raises(ValueError, match="out of range"):
        write_token_file(tmp_path / "bad.bin", [70_000], vocab_size=70_000)
    assert not (tmp_path / "bad.bin").exists()
    assert write_token_file(tmp_path / "small.bin", [65535], vocab_size=65536)["dtype"] == "uint16"


def corrupt(path: Path, **changes) -> None:
    meta = json.loads(path.with_suffix(".json").read_text())
    meta.update(changes)
    path.with_suffix(".json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.unlink(), r"x\.bin does not exist"),
        (lambda p: p.with_suffix(".json").unlink(), r"has no sidecar .*x\.json"),
        (lambda p: p.write_bytes(p.read_bytes()[:-2]), "has 4 bytes but its sidecar says 3 uint16 tokens"),
        (lambda p: corrupt(p, dtype="int8"), "dtype 'int8'"),
        (lambda p: corrupt(p, format="numpy"), "format 'numpy'"),
        (lambda p: corrupt(p, version=2), "version 2, this tinyformer reads version 1"),
        (lambda p: corrupt(p, n_tokens="3"), "n_tokens='3'"),
        (lambda p: p.with_suffix(".json").write_text("{not json"), "not valid JSON"),
    ],
)
def test_read_token_file_errors_are_one_line(tmp_path: Path, damage, message: str):
    path = tmp_path / "x.bin"
    write_token_file(path, [1, 2, 3], vocab_size=300)
    damage(path)
    with pytest.raises(TinyformerError, match=message) as info:
        read_token_file(path)
    assert "\n" not in str(info.value)


def test_token_file_made_with_another_tokenizer_is_refused(tmp_path: Path):
    from tinyformer.data.tokenfile import check_token_file

    write_token_file(tmp_path / "x.bin", [1, 2, 450], vocab_size=500, tokenizer_fingerprint="ab" * 32)
    meta = check_token_file(tmp_path / "x.bin", vocab_size=500, fingerprint="ab" * 32)
    assert meta["n_tokens"] == 3
    with pytest.raises(TinyformerError, match="encoded with tokenizer abababababab..., but the run's tokenizer is cdcd"):
        check_token_file(tmp_path / "x.bin", 500, fingerprint="cd" * 32)
    with pytest.raises(TinyformerError, match="holds token id 450, but the model's vocab_size is 400"):
        check_token_file(tmp_path / "x.bin", vocab_size=400)
    with pytest.raises(TinyformerError, match="data.val is not set"):
        check_token_file(None, 500, what="val")
