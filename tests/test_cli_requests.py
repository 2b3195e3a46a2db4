"""What `sample`, `eval` and `attention` make of a user's request: answers scored as `eval` scores them,
one prompt syntax, `INPUT = ANSWER` files on language-model runs, the whole validation file on request, and
requests too large to fit refused in one line before anything is allocated."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tinyformer.data.tokenfile import write_token_file
from tinyformer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def ur_run(tmp_path_factory) -> Path:
    """A real lab run of UR (answer only: one supervised symbol) with RoPE, trained a few steps."""
    from tinyformer.lab.run import train_task
    from tinyformer.lab.sweep import lab_config

    out = tmp_path_factory.mktemp("lab") / "ur"
    train_task(lab_config({"task.name": "UR", "model.position": "rope", "model.n_layers": 1, "model.n_heads": 2,
                           "model.d_model": 16, "train.max_steps": 30, "train.eval_every": 30,
                           "eval.examples": 40, "task.train_lengths": "4-8", "eval.bins": ["5-8"],
                           "train.batch_size": 32, "train.warmup": 2, "train.lr": 3e-3, "train.device": "cpu",
                           "train.progress": False, "train.precision": "fp32", "run_dir": str(out)}))
    return out


ROWS = ["+12+34+46+", "+5+5+01+", "+9+1+01+", "+21+2+41+"]  # a+b=c, digits reversed (docs/number-sequences.md)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """A real language-model run (byte tokenizer, RoPE, packed windows) that has learned four sum rows by
    heart; its validation file is 2,000 tokens and it evaluated on a 64-token subset (data.eval_tokens)."""
    from tinyformer.cli import main

    root = tmp_path_factory.mktemp("lm")
    tok = Tokenizer([], [])
    tok.save(root / "tok")
    rng = np.random.default_rng(0)
    text = "".join(ROWS[i] + "\n" for i in rng.integers(0, len(ROWS), 400))
    ids = np.array(tok.encode(text))[:2000]
    for name in ("train", "val"):
        write_token_file(root / f"{name}.bin", ids, 256, tokenizer_fingerprint=tok.fingerprint, n_bytes=len(ids))
    run = root / "run"
    rc = main(["train", f"run_dir={run}", "model.preset=llama", "model.n_layers=1", "model.d_model=32",
               "model.n_heads=2", "model.max_seq_len=16", f"data.train={root / 'train.bin'}",
               f"data.val={root / 'val.bin'}", f"data.tokenizer={root / 'tok'}", "data.eval_tokens=64",
               "train.max_steps=150", "train.batch_size=16", "train.seq_len=16", "train.lr=1e-2", "train.warmup=10",
               "train.precision=fp32", "train.threads=1", "train.progress=false", "train.sample_tokens=0",
               "train.eval_every=150"])
    assert rc == 0
    return run


def one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("tinyformer: error:") and proc.stderr.count("\n") == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


# --- point 3: an answer-only task's answers are one symbol, scored as eval scores them -------------


def test_sample_on_an_answer_only_task_agrees_with_eval_on_the_same_examples(cli, ur_run):
    drawn = cli("sample", "--ckpt", ur_run, "--num-samples", "40", "--bin", "5-8", check=True).stdout
    lines = drawn.splitlines()
    answers = [line.split(" -> ")[1].split()[0:2] for line in lines[:-1]]
    # UR's answer is one symbol: a second token (the unsupervised position after it) is no part of it
    assert all(len(a) == 1 or a[1] in ("correct", "wrong,") for a in answers), lines[:5]
    right = int(re.match(r"(\d+)/40 correct", lines[-1]).group(1))
    acc = cli("eval", "--ckpt", ur_run, "--bins", "5-8", "--examples", "40", "--json", check=True).stdout
    expected = json.loads(acc)["accuracy"]["5-8"] * 40
    assert right == round(expected) and right > 0  # chance alone answers a fifth of UR


def test_a_prompts_file_on_an_answer_only_task_marks_the_models_own_answer_right(cli, ur_run, tmp_path):
    line = cli("sample", "--ckpt", ur_run, "--prompt", "0 3 1 4 ? 3", check=True).stdout.strip()
    got = line.split(" -> ")[1]
    assert len(got.split()) == 1  # one symbol, as UR answers
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"0 3 1 4 ? 3 = {got}\n")
    out = cli("sample", "--ckpt", ur_run, "--prompts-file", prompts, check=True).stdout.splitlines()
    assert out == [f"0 3 1 4 ? 3 -> {got}   correct", "exact match: 1/1 (100.0%)"]


def test_a_task_name_in_the_wrong_case_suggests_the_right_one(cli, tmp_path):
    proc = cli("lengen", "train", "--task", "ur", "--pe", "rope", "--out", tmp_path / "r")
    one_line_error(proc, "unknown task 'ur'; did you mean 'UR'?")


# --- point 13: attention reads a prompt as sample does ---------------------------------------------


def test_attention_takes_the_prompt_syntax_of_sample(cli, ur_run, tmp_path):
    from tinyformer.lab.setup import TaskSetup
    from tinyformer.train.rundir import Run

    cli("attention", "--ckpt", ur_run, "--text", "0 3 1 4 ? 3", "--out", tmp_path / "maps", check=True)
    saved = np.load(tmp_path / "maps" / "attention.npz")
    task = TaskSetup(Run(ur_run).config).task
    assert saved["ids"].tolist() == task.prompt_ids("0 3 1 4 ? 3")  # what sample --prompt feeds the model
    assert saved["tokens"].tolist() == ["<bos>", "0", "3", "1", "4", "<sep>", "3"]
    proc = cli("attention", "--ckpt", ur_run, "--text", "0 3 9 ? 3", "--out", tmp_path / "bad")
    one_line_error(proc, "9 is not a symbol of task UR")
    assert not (tmp_path / "bad").exists()


# --- point 7: INPUT = ANSWER files on a language-model run ------------------------------------------


def naive_greedy_line(run: Path, prompt: str) -> str:
    """The reference: argmax of the full forward, token by token, up to the first newline (no cache)."""
    import torch

    from tinyformer.train.rundir import Run

    r = Run(run)
    model, tok = r.load_model(), r.tokenizer()
    ids = tok.encode(prompt)
    out = []
    with torch.no_grad():
        while len(out) < 12:
            logits, _ = model(torch.tensor([ids + out]))
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == 10:
                break
    return tok.decode(out).split("\n")[0]


def test_a_prompts_file_on_a_language_model_run_scores_each_line(cli, lm_run, tmp_path):
    prompts = tmp_path / "sums.txt"
    prompts.write_text("# a + b, digits reversed\n+12+34+ = 46+\n+5+5+ = 01+\n+9+1+ = 99+\n+21+2+\n")
    out = cli("sample", "--ckpt", lm_run, "--prompts-file", prompts, check=True).stdout.splitlines()
    got = {p: naive_greedy_line(lm_run, p) for p in ("+12+34+", "+5+5+", "+9+1+", "+21+2+")}
    assert got["+12+34+"] == "46+" and got["+5+5+"] == "01+"  # the rows it learned by heart
    assert out == ["+12+34+ -> 46+   correct", "+5+5+ -> 01+   correct",
                   f"+9+1+ -> {got['+9+1+']}   wrong, expected 99+", f"+21+2+ -> {got['+21+2+']}",
                   "exact match: 2/3 (66.7%)"]


def test_a_language_model_run_refuses_bin_and_a_missing_prompts_file(cli, lm_run, tmp_path):
    one_line_error(cli("sample", "--ckpt", lm_run, "--bin", "1-4"), "--bin", "language-model run")
    one_line_error(cli("sample", "--ckpt", lm_run, "--prompts-file", tmp_path / "nope.txt"),
                   "--prompts-file", "does not exist")


# --- point 11: the whole validation file on request -------------------------------------------------


def test_eval_max_tokens_0_or_all_is_the_whole_file_and_a_larger_subset_says_so(cli, lm_run):
    default = cli("eval", "--ckpt", lm_run, check=True).stdout
    assert "seeded subset of" in default and "of its 1,999 tokens" in default  # data.eval_tokens=64, as trained
    outs = [json.loads(cli("eval", "--ckpt", lm_run, "--json", "--max-tokens", n, check=True).stdout)
            for n in ("0", "all", "100000000")]
    assert all(o["tokens"] == 1999 and o["subset"] == "" for o in outs)  # every token after the first
    assert outs[0]["loss"] == outs[1]["loss"] == outs[2]["loss"]
    text = cli("eval", "--ckpt", lm_run, "--max-tokens", "100000000", check=True).stdout
    assert text.rstrip().endswith("over 1,999 tokens of " + str(lm_run.parent / "val.bin") + " (the whole file)")
    one_line_error(cli("eval", "--ckpt", lm_run, "--max-tokens", "-5"), "--max-tokens")


# --- point 19: requests that cannot fit are refused in one line, before anything is allocated --------


def test_requests_too_large_for_memory_are_refused_quickly(cli, ur_run, lm_run, tmp_path):
    import time

    big = tmp_path / "big.bin"  # long enough for one window of a million tokens
    ids = np.tile(np.frombuffer(b"+12+34+46+\n", dtype=np.uint8), 100_001)
    write_token_file(big, ids, 256, tokenizer_fingerprint=Tokenizer([], []).fingerprint, n_bytes=len(ids))
    for args, needle in [(["eval", "--ckpt", ur_run, "--bins", "1-99999"], "bin 1-99999"),
                         (["sample", "--ckpt", lm_run, "--prompt", "+1", "--max-new-tokens", "10000000000"],
                          "KV cache"),
                         (["eval", "--ckpt", lm_run, "--seq-len", "1000000", "--data", big], "1,000,000 tokens")]:
        start = time.perf_counter()
        proc = cli(*args)
        assert time.perf_counter() - start < 5, args
        one_line_error(proc, needle, "GiB free")
