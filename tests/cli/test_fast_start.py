"""Verbs that need no model start without importing torch (a second or more saved on every call): every
verb's --help, and the tokenizer verbs when they run. Each check runs in a fresh interpreter, as a user's would."""

from __future__ import annotations

import subprocess
import sys

from tinyformer.tokenizer import train_bpe

VERBS = ["tokenizer", "data", "lengen", "train", "eval", "sample", "plot", "compare", "export", "push",
         "attention", "demo"]

# Runs each command line (one per argument, words separated by spaces) through the real entry point in one
# interpreter, then says whether torch was imported on the way.
PROBE = """
import runpy, sys
codes = []
for line in sys.argv[1:]:
    sys.argv = ["tinyformer", *line.split(" ")]
    try:
        runpy.run_module("tinyformer", run_name="__main__")
    except SystemExit as exc:
        codes.append(exc.code or 0)
    else:
        codes.append(0)
print("TORCH", "torch" in sys.modules, "CODES", *codes)
"""


def imports_torch(*command_lines: str) -> bool:
    proc = subprocess.run([sys.executable, "-c", PROBE, *command_lines], capture_output=True, text=True,
                          timeout=300)
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "TORCH" and last[3:] == ["0"] * len(command_lines), proc.stdout + proc.stderr
    return last[1] == "True"


def test_no_verb_imports_torch_for_its_help():
    assert not imports_torch("--help", *(f"{verb} --help" for verb in VERBS))


def test_the_tokenizer_verbs_run_without_torch(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\n" * 50 + "a dog ran far away\n" * 50, encoding="utf-8")
    tok = tmp_path / "tok"
    train_bpe([corpus], 280, progress=False).save(tok)
    assert not imports_torch(
        f"tokenizer train {corpus} --vocab-size 270 --out {tmp_path / 't2'} --no-progress",
        f"tokenizer info --tokenizer {tok}",
        f"tokenizer export --tokenizer {tok} --format gpt2 --out {tmp_path / 'x'}",
        f"tokenizer encode {corpus} --tokenizer {tok} --out {tmp_path / 'c.bin'} --workers 1 --no-progress")
