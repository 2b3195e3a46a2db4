"""`tinyformer data`: resumable checksummed downloads (from a local file:// source), `data prepare`, and
`data sequences` with the pipeline it starts."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml

from tinyformer.data.corpora import EOT


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
    proc = cli("data", "download", "tinystories", "--url-base", f"file://{source}", "--out", out,
                        "--checksums", tmp_path / "SUMS", check=True)
    assert "resumed at 1,000 bytes" in proc.stdout and "checksum verified" in proc.stdout
    assert (out / name).read_bytes() == whole
    assert not list(out.glob("*.part"))
    assert (out / "SHA256SUMS").read_text() == (tmp_path / "SUMS").read_text()

    # a second run finds the files and checks them against the recorded sums
    proc = cli("data", "download", "tinystories", "--url-base", f"file://{source}", "--out", out, check=True)
    assert proc.stdout.count("checksum ok") == 2


def test_download_rejects_a_corrupt_partial_file(cli, tmp_path, source, one_line_error):
    out = tmp_path / "dl"
    out.mkdir()
    name = "TinyStoriesV2-GPT4-train.txt"
    (out / f"{name}.part").write_bytes(b"X" * 500)  # wrong bytes: the resumed file cannot match
    proc = cli("data", "download", "tinystories", "--url-base", f"file://{source}", "--out", out,
                     "--checksums", tmp_path / "SUMS")
    one_line_error(proc, "checksum mismatch")
    assert not (out / name).exists() and not (out / f"{name}.part").exists()
    cli("data", "download", "tinystories", "--url-base", f"file://{source}", "--out", out,
        "--checksums", tmp_path / "SUMS", check=True)  # and a re-run succeeds
    assert (out / name).read_bytes() == (source / name).read_bytes()


def test_download_missing_source_is_one_line(cli, tmp_path, one_line_error):
    proc = cli("data", "download", "tinystories", "--url-base", f"file://{tmp_path}/nowhere", "--out", tmp_path / "o")
    one_line_error(proc, "does not exist")


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


def test_prepare_tinystories_file_gives_the_ids_of_its_stories_joined(cli, tmp_path, one_line_error):
    # the split text is each story as written between markers, followed by the marker; blank pieces dropped
    # (what the file is streamed through since `data prepare text`, byte for byte as before)
    from tinyformer.data.tokenfile import read_token_file
    from tinyformer.tokenizer import Tokenizer, train_bpe

    texts = [f"  story {i} café\n" if i % 2 else f"\nstory {i}\n" for i in range(20)]
    src = tmp_path / "stories.txt"
    src.write_text(f"\n{EOT}" + EOT.join(texts) + f"{EOT}\n \n", encoding="utf-8")
    cli("data", "prepare", "tinystories", "--source", src, "--out", tmp_path / "prep", "--vocab-size", "300",
        check=True)
    reference = tmp_path / "train-ref.txt"
    reference.write_text(EOT.join(texts[:18]) + EOT, encoding="utf-8")
    tok = Tokenizer.load(tmp_path / "prep" / "tokenizer")
    assert tok.fingerprint == train_bpe([reference], 300, special_tokens=[EOT]).fingerprint
    for name, part in (("train", texts[:18]), ("val", texts[18:])):
        ids, _ = read_token_file(tmp_path / "prep" / f"{name}.bin")
        assert ids.tolist() == tok.encode(EOT.join(part) + EOT, allowed_special="all")
    (tmp_path / "latin1.txt").write_bytes(b"a story\xff" + EOT.encode() + b"another")
    one_line_error(cli("data", "prepare", "tinystories", "--source", tmp_path / "latin1.txt", "--out",
                       tmp_path / "bad"), "UTF-8")
    assert not (tmp_path / "bad").exists()


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


def test_prepare_refuses_existing_output_a_missing_source_and_text_not_utf8(cli, tmp_path, one_line_error):
    proc = cli("data", "prepare", "shakespeare", "--source", tmp_path / "none.txt", "--out", tmp_path / "o")
    one_line_error(proc, "does not exist")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep").write_text("x")
    (tmp_path / "in.txt").write_text("hello world " * 50)
    proc = cli("data", "prepare", "shakespeare", "--source", tmp_path / "in.txt", "--out", tmp_path / "o")
    one_line_error(proc, "--force")
    assert (tmp_path / "o" / "keep").exists()
    (tmp_path / "latin1.txt").write_bytes(b"To be or not\xff\xfe to be")
    one_line_error(cli("data", "prepare", "shakespeare", "--source", tmp_path / "latin1.txt", "--out", tmp_path / "sp"),
                   "UTF-8")
    assert not (tmp_path / "sp").exists()


def test_prepare_real_tinystories_head(cli, tmp_path, shared_data):
    from tinyformer.data.tokenfile import read_token_file

    out = tmp_path / "ts"
    src = shared_data / "tinystories" / "TinyStories-train-head-2MiB.txt"
    cli("data", "prepare", "tinystories", "--source", src, "--out", out, "--vocab-size", "512", check=True)
    val, meta = read_token_file(out / "val.bin")
    assert meta["vocab_size"] == 512 and 2.0 < meta["bytes_per_token"] < 5.0
    assert "2085 train, 232 validation" in (out / "prepare.json").read_text()


def test_a_failed_download_leaves_no_directory_behind(cli, tmp_path, one_line_error):
    import http.server
    import threading

    out = tmp_path / "data" / "tinystories"  # neither directory exists yet, as in a fresh clone
    proc = cli("data", "download", "tinystories", "--url-base", f"file://{tmp_path}/nowhere", "--out", out)
    one_line_error(proc, "does not exist")
    assert not (tmp_path / "data").exists()

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
        proc = cli("data", "download", "tinystories", "--url-base", f"http://127.0.0.1:{server.server_port}",
                         "--out", out)
    finally:
        server.shutdown()
    one_line_error(proc, "stopped at 0 of 1000 bytes")
    assert not (tmp_path / "data").exists()  # no empty .part, no empty directory


# ---------------------------------------------------------------- data sequences


def test_sequences_writes_the_file_and_refuses_to_overwrite(cli, tmp_path, one_line_error):
    config = tmp_path / "seq.yaml"
    out = tmp_path / "seq.txt"
    config.write_text(yaml.safe_dump({"output": str(out), "count": 20, "max_value": 99, "column_delimiter": ","}))
    proc = cli("data", "sequences", "--config", config, "count=30")
    assert proc.returncode == 0, proc.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 30 and all(int(a) + int(b) == int(c) for a, b, c in (r.split(",") for r in rows))
    one_line_error(cli("data", "sequences", "--config", config), "--force")
    assert len(out.read_text().splitlines()) == 30
    config.write_text(yaml.safe_dump({"output": str(tmp_path / "x.txt"), "base": 1}))
    one_line_error(cli("data", "sequences", "--config", config), "between 2 and 16")
    assert not (tmp_path / "x.txt").exists()


@pytest.mark.slow
def test_generate_tokenizer_train_sample_and_attention_end_to_end(cli, tmp_path):
    """The number-sequence guide's pipeline, generate -> tokenizer train -> encode -> train -> sample; each
    verb also has its own test in the default run."""
    config = tmp_path / "seq.yaml"
    config.write_text(yaml.safe_dump({"output": str(tmp_path / "seq.txt"), "count": 3000, "max_value": 65535,
                                      "base": 16, "reverse": True, "column_delimiter": "+", "row_prefix": "+",
                                      "row_suffix": "+"}))
    cli("data", "sequences", "--config", config, check=True)
    cli("tokenizer", "train", tmp_path / "seq.txt", "--vocab-size", "300", "--special-tokens", "<|endoftext|>",
        "--out", tmp_path / "tok", "--no-progress", check=True)
    cli("tokenizer", "encode", tmp_path / "seq.txt", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "seq.bin",
        check=True)
    vocab_size = json.loads((tmp_path / "seq.json").read_text())["vocab_size"]
    run = tmp_path / "run"
    cli("train", f"run_dir={run}", "model.preset=gpt2", f"model.vocab_size={vocab_size}", "model.n_layers=2",
        "model.n_heads=2", "model.d_model=32", "model.max_seq_len=32", f"data.train={tmp_path / 'seq.bin'}",
        f"data.tokenizer={tmp_path / 'tok'}", "train.max_steps=20", "train.batch_size=8", "train.eval_every=0",
        "train.progress=false", "train.sample_tokens=0", "train.device=cpu", check=True)
    proc = cli("sample", "--ckpt", run, "--which", "latest", "--prompt", "+2431+b34+", "--max-new-tokens", "8",
               "--temperature", "0", "--device", "cpu", check=True)
    assert proc.stdout.startswith("+2431+b34+")
    proc = cli("attention", "--ckpt", run, "--text", "+101+:2001+:3011+", "--out", tmp_path / "maps", check=True)
    assert (tmp_path / "maps" / "layer_01.png").is_file()
