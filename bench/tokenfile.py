"""Token-file benchmark: `encode_files` (what `tinyformer tokenizer encode` runs) vs tiktoken, in one run.

    .venv/bin/python bench/tokenfile.py [--vocab-size 10000] [FILE]

Speed: MB/s of ours in one process and on all cores vs tiktoken single-thread (built from our own ranks,
on the whole text in memory); ids of the token file asserted identical to tiktoken's over the whole corpus.
Memory: peak RSS of the encode (main process, largest worker) on FILE and on FILE three times over; a ratio
near 1 means memory does not grow with the input. Each measurement runs in a fresh child process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEFAULT_FILE = DATA / "bench" / "techtext-20MB.txt"
TRAIN_FILE = DATA / "tinystories" / "TinyStories-train-head-2MiB.txt"

CHILD_ENCODE = """
import json, resource, sys, time
from tinyformer.data.encode import encode_files
from tinyformer.tokenizer import Tokenizer
def peak_mb():  # VmHWM: this process's own peak
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024
tok_dir, path, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = Tokenizer.load(tok_dir)
start = time.perf_counter()
meta = encode_files(tok, [path], out, allowed_special="all", workers=workers, force=True, progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "n_tokens": meta["n_tokens"], "rss_main_mb": peak_mb(),
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

CHILD_TIKTOKEN = """
import json, sys, time
from tinyformer.tokenizer import Tokenizer
tok = Tokenizer.load(sys.argv[1])
enc = tok.to_tiktoken()
text = open(sys.argv[2], encoding="utf-8").read()
start = time.perf_counter()
ids = enc.encode(text, allowed_special="all")
seconds = time.perf_counter() - start
open(sys.argv[3], "wb").write(b"".join(i.to_bytes(4, "little") for i in ids))
print(json.dumps({"seconds": seconds, "n_tokens": len(ids)}))
"""


def run_child(code: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--vocab-size", type=int, default=10_000)
    args = parser.parse_args()
    if not args.file.is_file():
        raise SystemExit(f"benchmark input {args.file} is absent")
    import numpy as np

    from tinyformer.data.tokenfile import read_token_file
    from tinyformer.tokenizer import train_bpe

    workers = os.cpu_count() or 1
    mb = args.file.stat().st_size / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        tok = train_bpe([TRAIN_FILE if TRAIN_FILE.is_file() else args.file], args.vocab_size, ["<|endoftext|>"],
                        progress=False)
        tok.save(tmp / "tok")
        print(f"tokenizer: {tok.vocab_size} ids trained in {time.perf_counter() - start:.1f} s")

        tik = run_child(CHILD_TIKTOKEN, tmp / "tok", args.file, tmp / "tik.u32")
        one = run_child(CHILD_ENCODE, tmp / "tok", args.file, tmp / "one.bin", 1)
        many = run_child(CHILD_ENCODE, tmp / "tok", args.file, tmp / "many.bin", workers)
        tik_ids = np.fromfile(tmp / "tik.u32", dtype="<u4")
        for name in ("one.bin", "many.bin"):
            ids, meta = read_token_file(tmp / name)
            assert np.array_equal(ids.astype("<u4"), tik_ids), f"{name}: our ids differ from tiktoken's"
        bytes_per_token = meta["bytes_per_token"]

        triple = tmp / "triple.txt"
        with open(triple, "wb") as f:
            for _ in range(3):
                f.write(args.file.read_bytes())
        big = run_child(CHILD_ENCODE, tmp / "tok", triple, tmp / "big.bin", workers)

    tik_mbs, one_mbs, many_mbs = mb / tik["seconds"], mb / one["seconds"], mb / many["seconds"]
    print(f"input  {args.file.name}: {mb:.1f} MB, {tik['n_tokens']:,} tokens, {bytes_per_token:.3f} bytes/token")
    print(f"ids    token files (1 and {workers} workers) identical to tiktoken over all {tik['n_tokens']:,} tokens")
    print(f"speed  tiktoken 1 thread {tik_mbs:.2f} MB/s; encode_files 1 process {one_mbs:.2f} MB/s "
          f"({one_mbs / tik_mbs:.2f}x); {workers} workers {many_mbs:.2f} MB/s ({many_mbs / tik_mbs:.2f}x)")
    for name, run in (("1x input", many), ("3x input", big)):
        print(f"memory {name}: main {run['rss_main_mb']:.0f} MiB, largest worker {run['rss_worker_mb']:.0f} MiB")
    peak_ratio = max(big["rss_main_mb"], big["rss_worker_mb"]) / max(many["rss_main_mb"], many["rss_worker_mb"])
    print(f"memory peak 3x input / 1x input = {peak_ratio:.2f} (streaming: ~1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
