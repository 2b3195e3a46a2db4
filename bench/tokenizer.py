"""Tokenizer benchmark: our BPE training and encoding against HF `tokenizers` and tiktoken, in one run.

    .venv/bin/python bench/tokenizer.py [--vocab-size 10000] [--repeats 3] [FILE ...]

Training: wall time of our `train_bpe` vs HF `BpeTrainer` (same file, same vocab size, same special token),
each in a fresh child process; peak RSS of the training (the main process and the largest worker).
Encoding: MB/s of ours in one thread and on all cores (`encode_batch`, threads) vs tiktoken single-thread, with tiktoken built from
our own ranks; ids are asserted identical over the whole corpus. Targets (issue 2): train time <= 2x HF,
peak memory <= 1 GiB, encode 1 process >= 0.5x tiktoken, all cores >= 1x tiktoken.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DEFAULT_FILES = [DATA / "bench" / "techtext-20MB.txt", DATA / "tinystories" / "TinyStories-train-head-2MiB.txt"]
EOT = "<|endoftext|>"

# Run in a child process so each training starts cold and its peak memory is its own.
CHILD_OURS = """
import json, resource, sys, time
from tinyformer.tokenizer import train_bpe
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would include the parent's pages at fork)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024
path, vocab_size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
tok = train_bpe([path], vocab_size, ["<|endoftext|>"], progress=False)
seconds = time.perf_counter() - start
tok.save(out, force=True)
print(json.dumps({"seconds": seconds, "vocab_size": tok.vocab_size,
                  "rss_main_mb": peak_mb(),
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

CHILD_HF = """
import json, resource, sys, time
def peak_mb():
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
path, vocab_size = sys.argv[1], int(sys.argv[2])
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
start = time.perf_counter()
tok.train([path], trainer)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "vocab_size": tok.get_vocab_size(),
                  "rss_main_mb": peak_mb()}))
"""


def run_child(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_training(path: Path, vocab_size: int, repeats: int, tok_dir: Path) -> dict:
    ours = min((run_child(CHILD_OURS, path, vocab_size, tok_dir) for _ in range(repeats)), key=lambda r: r["seconds"])
    hf = min((run_child(CHILD_HF, path, vocab_size) for _ in range(repeats)), key=lambda r: r["seconds"])
    return {"ours": ours, "hf": hf, "ratio": ours["seconds"] / hf["seconds"]}


def split_at_line_ends(text: str, n_parts: int) -> list[str]:
    """Cut text into about n_parts pieces at line ends between visible characters (where pre-tokens split)."""
    parts, start = [], 0
    step = max(1, len(text) // n_parts)
    while start < len(text):
        cut = start + step
        while cut < len(text) - 1 and not (text[cut - 1] == "\n" and "!" <= text[cut - 2] <= "~" and "!" <= text[cut] <= "~"):
            cut += 1
        parts.append(text[start:cut])
        start = cut
    return parts


def best_time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_encoding(path: Path, tok_dir: Path, repeats: int) -> dict:
    import tiktoken

    from tinyformer.tokenizer import Tokenizer

    text = path.read_text(encoding="utf-8")
    mb = len(text.encode("utf-8")) / 1e6
    tok = Tokenizer.load(tok_dir)
    ranks = {tok.vocab[i]: i for i in range(256 + len(tok.merges))}
    assert len(ranks) == 256 + len(tok.merges), "duplicate token bytes: tiktoken needs one rank per byte string"
    enc = tiktoken.Encoding("tinyformer-bench", pat_str=tok.pattern, mergeable_ranks=ranks,
                            special_tokens=tok.special_tokens)
    t_tik, ids_tik = best_time(lambda: enc.encode(text, allowed_special="all"), repeats)
    # A fresh tokenizer per run: its pre-token cache starts empty, as for a user encoding a new file.
    t_one, ids_one = best_time(lambda: Tokenizer.load(tok_dir).encode(text, allowed_special="all"), repeats)
    workers = os.cpu_count() or 1
    parts = split_at_line_ends(text, 8 * workers)
    assert "".join(parts) == text

    t_all, batches = best_time(
        lambda: Tokenizer.load(tok_dir).encode_batch(parts, allowed_special="all", num_workers=workers), repeats)
    assert ids_one == ids_tik, "our ids differ from tiktoken's"
    assert [i for ids in batches for i in ids] == ids_tik, "our all-core ids differ from tiktoken's"
    # The same merges under the GPT-4 pattern: the other pre-tokenizer with a C fast path.
    from tinyformer.tokenizer import GPT4_PATTERN

    enc4 = tiktoken.Encoding("tinyformer-bench-gpt4", pat_str=GPT4_PATTERN, mergeable_ranks=ranks,
                             special_tokens=tok.special_tokens)
    t_tik4, ids_tik4 = best_time(lambda: enc4.encode(text, allowed_special="all"), repeats)
    t_one4, ids_one4 = best_time(
        lambda: Tokenizer(tok.merges, list(tok.special_tokens), GPT4_PATTERN).encode(text, allowed_special="all"),
        repeats)
    assert ids_one4 == ids_tik4, "our GPT-4-pattern ids differ from tiktoken's"
    return {"gpt4_tiktoken_mbs": mb / t_tik4, "gpt4_ours_one_mbs": mb / t_one4, "gpt4_ratio_one": t_tik4 / t_one4,"mb": mb, "tokens": len(ids_tik), "bytes_per_token": mb * 1e6 / len(ids_tik), "workers": workers,
            "tiktoken_mbs": mb / t_tik, "ours_one_mbs": mb / t_one, "ours_all_mbs": mb / t_all,
            "ratio_one": t_tik / t_one, "ratio_all": t_tik / t_all}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, default=DEFAULT_FILES)
    parser.add_argument("--vocab-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench-tokenizer")
    args = parser.parse_args()
    missing = [f for f in args.files if not f.is_file()]
    if missing:
        print(f"bench/tokenizer.py: missing input {missing[0]} (the shared data folder)", file=sys.stderr)
        return 2
    from tinyformer.tokenizer import train

    print(f"machine: {os.cpu_count()} cores; C extension: {'yes' if train._bpe is not None else 'NO'}; "
          f"vocab {args.vocab_size}; best of {args.repeats}")
    ok = True
    trainings = {path: bench_training(path, args.vocab_size, args.repeats, args.work / path.stem) for path in args.files}
    for path, t in trainings.items():
        e = bench_encoding(path, args.work / path.stem, args.repeats)
        peak = t["ours"]["rss_main_mb"] + t["ours"]["rss_worker_mb"] * (os.cpu_count() or 1)
        print(f"\n## {path.name} ({e['mb']:.1f} MB)")
        print(f"train  ours {t['ours']['seconds']:.2f} s  HF {t['hf']['seconds']:.2f} s  ratio {t['ratio']:.2f}x "
              f"(target <= 2.0)  vocab {t['ours']['vocab_size']} vs {t['hf']['vocab_size']}")
        print(f"memory ours main {t['ours']['rss_main_mb']:.0f} MB, largest worker {t['ours']['rss_worker_mb']:.0f} MB,"
              f" bound on total {peak:.0f} MB (target <= 1024); HF {t['hf']['rss_main_mb']:.0f} MB")
        print(f"encode tiktoken 1 thread {e['tiktoken_mbs']:.2f} MB/s; ours 1 thread {e['ours_one_mbs']:.2f} MB/s "
              f"({e['ratio_one']:.2f}x, target >= 0.5); ours {e['workers']} threads {e['ours_all_mbs']:.2f} MB/s "
              f"({e['ratio_all']:.2f}x, target >= 1.0)")
        print(f"gpt4   same merges, GPT-4 pattern: tiktoken {e['gpt4_tiktoken_mbs']:.2f} MB/s; ours 1 thread "
              f"{e['gpt4_ours_one_mbs']:.2f} MB/s ({e['gpt4_ratio_one']:.2f}x); ids identical")
        print(f"ids    identical to tiktoken over all {e['tokens']:,} tokens; {e['bytes_per_token']:.2f} bytes/token")
        ok &= t["ratio"] <= 2.0 and peak <= 1024 and e["ratio_one"] >= 0.5 and e["ratio_all"] >= 1.0
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
