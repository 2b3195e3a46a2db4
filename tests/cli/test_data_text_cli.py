"""`tinyformer data prepare text SOURCE... --out DIR`: the ids equal `tinyformer tokenizer encode` of the same
documents; bad input is one line with nothing written; a corpus several times larger than the memory margin
it is given prepares within it."""

from __future__ import annotations

import json
import os
import random
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tinyformer.data.corpora import EOT
from tinyformer.data.tokenfile import read_token_file
from tinyformer.tokenizer import Tokenizer


def test_prepare_text_gives_the_ids_of_tokenizer_encode(cli, tmp_path):
    rng = random.Random(0)
    words = ["once", "upon", "a", "time", "there", "was", "a", "little", "fox", "who", "liked", "snow", "."]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 60))) + "\n" for _ in range(60)]
    folder = tmp_path / "stories"
    for i, doc in enumerate(docs):
        (folder / f"{i // 20}").mkdir(parents=True, exist_ok=True)
        (folder / f"{i // 20}" / f"story{i:02d}.txt").write_text(doc)
    proc = cli("data", "prepare", "text", folder, "--out", tmp_path / "out", "--vocab-size", "320",
               "--val-fraction", "0.2", "--seed", "7", check=True)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"prepared {tmp_path / 'out'}") and "by document, seeded: seed 7" in last
    tok = Tokenizer.load(tmp_path / "out" / "tokenizer")
    assert tok.eot_id is not None and 256 < tok.vocab_size <= 320  # as many merges as the text offers, up to 320
    record = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert record["split_kind"] == "seeded" and record["train_documents"] + record["val_documents"] == 60
    for part in ("train", "val"):
        ids, meta = read_token_file(tmp_path / "out" / f"{part}.bin")
        pieces = tok.decode(ids.tolist()).split(EOT)[:-1]
        assert len(pieces) == record[f"{part}_documents"] and all(p in docs for p in pieces)
        reference = tmp_path / f"{part}-docs.txt"  # the same documents, joined by end-of-text, encoded as a user would
        reference.write_text(EOT.join(pieces) + EOT)
        cli("tokenizer", "encode", reference, "--tokenizer", tmp_path / "out" / "tokenizer", "--out",
            tmp_path / f"{part}-ref.bin", "--allowed-special", EOT, check=True)
        assert ids.tolist() == read_token_file(tmp_path / f"{part}-ref.bin")[0].tolist()
        assert meta["sources"][0]["source"] == str(folder)
    assert sorted(p for part in ("train", "val") for p in
                  tok.decode(read_token_file(tmp_path / "out" / f"{part}.bin")[0].tolist()).split(EOT)[:-1]) == sorted(docs)


def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path, one_line_error):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "out"

    def refused(*args, phrases):
        one_line_error(cli("data", "prepare", "text", *args, "--out", out, "--vocab-size", "300"), *phrases)
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

    refused(tmp_path / "missing.txt", phrases=["missing.txt does not exist"])
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "x", "id": 1}) + "\n")
    refused(tmp_path / "a.jsonl", phrases=["no field 'text'", "body, id", "--text-field"])
    datasets.Dataset.from_dict({"story": ["a", "b"]}).save_to_disk(str(tmp_path / "hf"))
    refused(tmp_path / "hf", phrases=["no field 'text'", "story"])
    (tmp_path / "empty.jsonl").write_text("")
    refused(tmp_path / "empty.jsonl", phrases=["no documents found"])
    datasets.Dataset.from_dict({"text": ["", "  \n", None]}).save_to_disk(str(tmp_path / "hf-empty"))
    refused(tmp_path / "hf-empty", phrases=["no documents found"])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("markdown, not .txt")
    refused(tmp_path / "docs", phrases=["no files", "'**/*.txt'", "no documents found"])
    (tmp_path / "one.txt").write_text("a single document")
    refused(tmp_path / "one.txt", phrases=["found 1 document", "--separator"])
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "t.parquet")
    refused(tmp_path / "t.parquet", phrases=["Parquet", "no column 'text'", "content"])

    (tmp_path / "two.txt").write_text(f"one{EOT}two{EOT}three")
    out.mkdir()
    (out / "keep").write_text("x")
    one_line_error(cli("data", "prepare", "text", tmp_path / "two.txt", "--separator", EOT, "--out", out,
                       "--vocab-size", "300"), "already exists", "--force")
    assert [p.name for p in out.iterdir()] == ["keep"]
    cli("data", "prepare", "text", tmp_path / "two.txt", "--separator", EOT, "--out", out, "--vocab-size", "300",
        "--force", check=True)
    assert (out / "train.bin").is_file() and not (out / "keep").exists()


def test_a_dataset_without_the_datasets_package_names_the_extra(cli_process, tmp_path, one_line_error):
    blocker = tmp_path / "block" / "datasets"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('datasets is not installed (the test hides it)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), os.environ.get("PYTHONPATH", "")])}
    proc = cli_process("data", "prepare", "text", "hf:roneneldan/TinyStories", "--out", tmp_path / "out", env=env)
    one_line_error(proc, "`datasets`", "pip install 'tinyformer[data]'")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- bounded memory

PEAK = """import sys
from tinyformer.cli import main
rc = main(sys.argv[1:])
print(next(l for l in open('/proc/self/status') if l.startswith('VmPeak')), file=sys.stderr)
sys.exit(rc)
"""


def write_corpus(path: Path, n_bytes: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "see", "big", "red", "sun", "Tom",
             "Lily", "had", "ball", "tree", "cake", "boat", "happy", "was"]
    with open(path, "w") as f:
        size = 0
        while size < n_bytes:
            doc = " ".join(rng.choices(words, k=rng.randint(20, 300))) + f". {rng.randint(0, 999)}\n{EOT}\n"
            f.write(doc)
            size += len(doc)


def prepare_in_a_process(source: Path, out: Path, workers: list[str], limit: int | None = None,
                         env: dict | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """`data prepare text` in a subprocess (under an address-space limit when given); (result, its peak bytes)."""
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([sys.executable, "-c", PEAK, "data", "prepare", "text", str(source), "--separator", EOT,
                           "--out", str(out), "--vocab-size", "300", *workers], capture_output=True, text=True, timeout=600,
                          preexec_fn=set_limit if limit else None, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, int(re.search(r"VmPeak:\s+(\d+) kB", proc.stderr).group(1)) * 1024


def assert_prepares_within_a_quarter_of_its_size(tmp_path: Path, small: int, big: int, workers: list[str],
                                                 env: dict | None = None) -> None:
    """The peak address space of preparing a small corpus (interpreter, numpy, worker pools: all that does not
    grow with the corpus) plus a margin under a quarter of a big corpus is enough to prepare the big one.
    Each worker process runs under the same limit (it is inherited)."""
    write_corpus(tmp_path / "small.txt", small)
    write_corpus(tmp_path / "big.txt", big, seed=1)
    _, baseline = prepare_in_a_process(tmp_path / "small.txt", tmp_path / "small-out", workers, env=env)
    margin = big // 4 - (1 << 20)
    proc, peak = prepare_in_a_process(tmp_path / "big.txt", tmp_path / "big-out", workers, limit=baseline + margin,
                                       env=env)
    assert peak <= baseline + margin
    train, _ = read_token_file(tmp_path / "big-out" / "train.bin")
    val, _ = read_token_file(tmp_path / "big-out" / "val.bin")
    assert len(train) + len(val) > big // 8  # the whole corpus went through (about 2.5 bytes per token)
    assert "prepared" in proc.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and RLIMIT_AS (Linux)")
def test_a_corpus_four_times_the_memory_margin_prepares_within_it(tmp_path):
    # One worker: the encoder then holds one block, so a small corpus shows the bound. A fixed mmap threshold:
    # glibc's moving one keeps freed 1 MiB blocks in the heap, a few MiB of address space (that stop growing by
    # a 32 MiB corpus) which would blur a 3 MiB margin; the slow test below runs with glibc's defaults.
    # The BPE trains on the first 1 MiB of each (its own bound; training on all 16 MiB would take most of a
    # minute), so what grows with the corpus is the reading, the split and the encoding.
    assert_prepares_within_a_quarter_of_its_size(tmp_path, small=3 << 20, big=16 << 20,
                                                 workers=["--workers", "1", "--tokenizer-sample-bytes", str(1 << 20)],
                                                 env={"MALLOC_MMAP_THRESHOLD_": "131072"})


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and RLIMIT_AS (Linux)")
def test_a_128_mib_corpus_prepares_on_all_cores_within_a_32_mib_margin(tmp_path):
    # every core: the encoder holds up to 2 ranges of at most 8 MiB per worker, a bound that a corpus must pass
    # well before its size shows
    assert_prepares_within_a_quarter_of_its_size(tmp_path, small=3 << 20, big=128 << 20, workers=[])
