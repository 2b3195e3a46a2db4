"""Corpus pipelines: resumable checksummed downloads (from a local file:// source) and `data prepare`."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tinyformer.data.corpora import EOT


@pytest.fixture
def cli(capsys):
    from tinyformer.cli import main

    def run(*args, check: bool = False):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        if check and rc != 0:
            raise AssertionError(f"tinyformer {' '.join(map(str, args))} failed:\n{out}\n{err}")
        return rc, out, err

    return run


def stories(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    names = ["Tom", "Lily", "Ben", "Sue"]
    things = ["ball", "cat", "tree", "cake", "boat"]
    return [
        f"{rng.choice(names)} had a {rng.choice(things)}. It was {i} days old. {rng.choice(names)} was happy.\n"
        for i in range(n)
    ]


@pytest.fixture
def source(tmp_path):
    """A fake TinyStories v2 release in a local directory, as `--url-base file://...` serves it."""
    src = tmp_path / "src"
    src.mkdir()
    train = "".join(s + EOT + "\n" for s in stories(300))
    valid = "".join(s + EOT + "\n" for s in stories(30, seed=1))
    (src / "TinyStoriesV2-GPT4-train.txt").write_text(train)
    (src / "TinyStoriesV2-GPT4-valid.txt").write_text(valid)
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(src.iterdir()))
    (tmp_path / "SUMS").write_text(sums)
    return src


def test_download_verifies_checksums_and_resumes(cli, tmp_path, source):
    out = tmp_path / "dl"
    name = "TinyStoriesV2-GPT4-train.txt"
    whole = (source / name).read_bytes()
    out.mkdir()
    (out / f"{name}.part").write_bytes(whole[:1000])  # an interrupted earlier download
    rc, stdout, _ = cli("data", "download", "tinystories", "--url-base", f"file://{source}", "--out", out,
                        "--checksums", tmp_path / "SUMS", check=True)
    assert "resumed at 1,000 bytes" in stdout and "checksum verified" in stdout
    assert (out / name).read_bytes() == whole
    assert not list(out.glob("*.part"))
    assert (out / "SHA256SUMS").read_text() == (tmp_path / "SUMS").read_text()

    # a second run finds the files and checks them against the recorded sums
    rc, stdout, _ = cli("data", "download", "tinystories", "--url-base", f"file://{source}", "--out", out, check=True)
    assert stdout.count("checksum ok") == 2


def test_download_rejects_a_corrupt_partial_file(cli, tmp_path, source):
    out = tmp_path / "dl"
    out.mkdir()
    name = "TinyStoriesV2-GPT4-train.txt"
    (out / f"{name}.part").write_bytes(b"X" * 500)  # wrong bytes: the resumed file cannot match
    rc, _, err = cli("data", "download", "tinystories", "--url-base", f"file://{source}", "--out", out,
                     "--checksums", tmp_path / "SUMS")
    assert rc == 2 and "checksum mismatch" in err and len(err.strip().splitlines()) == 1
    assert not (out / name).exists() and not (out / f"{name}.part").exists()
    cli("data", "download", "tinystories", "--url-base", f"file://{source}", "--out", out,
        "--checksums", tmp_path / "SUMS", check=True)  # and a re-run succeeds
    assert (out / name).read_bytes() == (source / name).read_bytes()


def test_download_missing_source_is_one_line(cli, tmp_path):
    rc, _, err = cli("data", "download", "tinystories", "--url-base", f"file://{tmp_path}/nowhere", "--out", tmp_path / "o")
    assert rc == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_prepare_tinystories_splits_by_story(cli, tmp_path):
    from tinyformer.data.tokenfile import read_token_file
    from tinyformer.tokenizer import Tokenizer

    texts = stories(100)
    src = tmp_path / "stories.txt"
    src.write_text("".join(s + EOT + "\n" for s in texts))
    out = tmp_path / "prep"
    cli("data", "prepare", "tinystories", "--source", src, "--out", out, "--vocab-size", "300", check=True)
    tok = Tokenizer.load(out / "tokenizer")
    assert tok.vocab_size == 300 and tok.eot_id is not None
    train, train_meta = read_token_file(out / "train.bin")
    val, val_meta = read_token_file(out / "val.bin")
    assert train_meta["tokenizer_fingerprint"] == val_meta["tokenizer_fingerprint"] == tok.fingerprint
    val_stories = [s for s in tok.decode(val.tolist()).split(EOT) if s.strip()]
    train_stories = [s for s in tok.decode(train.tolist()).split(EOT) if s.strip()]
    assert len(val_stories) == 10 and len(train_stories) == 90  # whole stories, the last 10% for validation
    assert [s.strip() for s in val_stories] == [s.strip() for s in texts[90:]]
    assert int(np.sum(val == tok.eot_id)) == 10


def test_prepare_shakespeare_is_char_level_90_10(cli, tmp_path):
    from tinyformer.data.tokenfile import read_token_file

    text = "".join(f"LINE {i}: to be or not to be.\n" for i in range(300))
    src = tmp_path / "input.txt"
    src.write_text(text)
    out = tmp_path / "prep"
    cli("data", "prepare", "shakespeare", "--source", src, "--out", out, check=True)
    train, meta = read_token_file(out / "train.bin")
    val, _ = read_token_file(out / "val.bin")
    cut = int(len(text) * 0.9)
    assert bytes(train.tolist()).decode() == text[:cut] and bytes(val.tolist()).decode() == text[cut:]
    assert meta["vocab_size"] == 256 and meta["bytes_per_token"] == 1.0


def test_prepare_refuses_existing_output_and_missing_source(cli, tmp_path):
    rc, _, err = cli("data", "prepare", "shakespeare", "--source", tmp_path / "none.txt", "--out", tmp_path / "o")
    assert rc == 2 and "does not exist" in err
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep").write_text("x")
    (tmp_path / "in.txt").write_text("hello world " * 50)
    rc, _, err = cli("data", "prepare", "shakespeare", "--source", tmp_path / "in.txt", "--out", tmp_path / "o")
    assert rc == 2 and "--force" in err and (tmp_path / "o" / "keep").exists()


def test_prepare_real_tinystories_head(cli, tmp_path, shared_data):
    from tinyformer.data.tokenfile import read_token_file

    out = tmp_path / "ts"
    src = shared_data / "tinystories" / "TinyStories-train-head-2MiB.txt"
    cli("data", "prepare", "tinystories", "--source", src, "--out", out, "--vocab-size", "512", check=True)
    val, meta = read_token_file(out / "val.bin")
    assert meta["vocab_size"] == 512 and 2.0 < meta["bytes_per_token"] < 5.0
    assert "2085 train, 232 validation" in (out / "prepare.json").read_text()


def test_a_failed_download_leaves_no_directory_behind(cli, tmp_path):
    import http.server
    import threading

    out = tmp_path / "data" / "tinystories"  # neither directory exists yet, as in a fresh clone
    rc, _, err = cli("data", "download", "tinystories", "--url-base", f"file://{tmp_path}/nowhere", "--out", out)
    assert rc == 2 and "does not exist" in err and not (tmp_path / "data").exists()

    class PromisesBytesSendsNone(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 -- the name http.server calls
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()  # and the connection closes with no body

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), PromisesBytesSendsNone)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rc, _, err = cli("data", "download", "tinystories", "--url-base", f"http://127.0.0.1:{server.server_port}",
                         "--out", out)
    finally:
        server.shutdown()
    assert rc == 2 and "stopped at 0 of 1000 bytes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()  # no empty .part, no empty directory
