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
from tinyformer.lab.setup import TaskSetup
from tinyformer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def ur_run(tiny_task_run, tmp_path_factory) -> Path:
    """A real lab run of UR (answer only: one supervised symbol) with RoPE, trained a few steps."""
    run = tmp_path_factory.mktemp("ur") / "run"
    tiny_task_run(run, **{"train.max_steps": 30, "train.eval_every": 30, "eval.examples": 40,
                               "task.train_lengths": "4-8", "eval.bins": ["5-8"], "train.batch_size": 32,
                               "train.lr": 3e-3})
    return run


ROWS = ["+12+34+46+", "+5+5+01+", "+9+1+01+", "+21+2+41+"]  # a+b=c, digits reversed (docs/number-sequences.md)


@pytest.fixture(scope="module")
def sums(tiny_corpus):
    """2,000 tokens of those rows, as the training and the validation file."""
    rng = np.random.default_rng(0)
    text = "".join(ROWS[i] + "\n" for i in rng.integers(0, len(ROWS), 400))[:2000]
    return tiny_corpus(text, val_text=text)


@pytest.fixture(scope="module")
def lm_run(sums, tiny_lm_run) -> Path:
    """A real language-model run (byte tokenizer, RoPE, packed windows) that has learned the four sum rows by
    heart; it evaluated on a 64-token subset of its validation file (data.eval_tokens)."""
    return tiny_lm_run("model.preset=llama", "model.d_model=32", "model.dropout=0.0", "data.eval_tokens=64",
                       "train.max_steps=150", "train.batch_size=16", "train.seq_len=16", "train.lr=1e-2",
                       "train.warmup=10", "train.sample_tokens=0", "train.eval_every=150",
                       corpus=sums)


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


# --- point 13: attention reads a prompt as sample does ---------------------------------------------


def test_attention_takes_the_prompt_syntax_of_sample(one_line_error, cli, ur_run, tmp_path):
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


def test_a_language_model_run_refuses_bin_and_a_missing_prompts_file(one_line_error, cli, lm_run, tmp_path):
    one_line_error(cli("sample", "--ckpt", lm_run, "--bin", "1-4"), "--bin", "language-model run")
    one_line_error(cli("sample", "--ckpt", lm_run, "--prompts-file", tmp_path / "nope.txt"),
                   "--prompts-file", "does not exist")


# --- point 11: the whole validation file on request -------------------------------------------------


def test_eval_max_tokens_0_or_all_is_the_whole_file_and_a_larger_subset_says_so(one_line_error, cli, lm_run, sums):
    default = cli("eval", "--ckpt", lm_run, check=True).stdout
    assert "seeded subset of" in default and "of its 1,999 tokens" in default  # data.eval_tokens=64, as trained
    outs = [json.loads(cli("eval", "--ckpt", lm_run, "--json", "--max-tokens", n, check=True).stdout)
            for n in ("0", "all", "100000000")]
    assert all(o["tokens"] == 1999 and o["subset"] == "" for o in outs)  # every token after the first
    assert outs[0]["loss"] == outs[1]["loss"] == outs[2]["loss"]
    text = cli("eval", "--ckpt", lm_run, "--max-tokens", "100000000", check=True).stdout
    assert text.rstrip().endswith("over 1,999 tokens of " + str(sums.val) + " (the whole file)")
    one_line_error(cli("eval", "--ckpt", lm_run, "--max-tokens", "-5"), "--max-tokens")


# --- point 19: requests that cannot fit are refused in one line, before anything is allocated --------


def test_requests_too_large_for_memory_are_refused_quickly(one_line_error, cli, ur_run, lm_run, tmp_path):
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


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--seq-len", "0"), ("--max-tokens", "-1")])
def test_eval_refuses_non_positive_sizes(cli, lm_run, one_line_error, flag, value):
    one_line_error(cli("eval", "--ckpt", lm_run, flag, value), flag)  # --max-tokens 0: all


# --- task runs answer in the task's own notation ------------------------------------------------

LAB = ["model.n_layers=2", "model.d_model=64", "model.n_heads=4", "train.batch_size=64", "train.threads=1",
       "train.precision=fp32", "train.progress=false", "eval.examples=500", "train.peak_flops=1e12"]


@pytest.mark.slow
def test_an_addition_run_answers_1342_plus_879_after_training(cli, tmp_path):
    """Trained until solved (~1,750 steps, a minute or two): the default run keeps the same requests, scored
    against the model's own answers, in test_an_addition_runs_prompts_are_scored_against_its_own_answers."""
    run = tmp_path / "add"
    cli("lengen", "train", "--task", "add", "--pe", "abacus", "task.train_lengths=1-4", "eval.bins=[1-4]",
             *LAB, "--steps", "3000", "--lr", "3e-3", "train.warmup=100", "train.eval_every=250",
             "eval.stop_accuracy=1.0", "--out", run, check=True)  # solved (500/500) after 1,750 steps, ~1 min
    assert cli("sample", "--ckpt", run, "--prompt", "1342+879", check=True).stdout == "1342+879 -> 2221\n"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# sums\n1342+879=2221\n99+1 = 100\n7+8=16\n5+5\n")
    out = cli("sample", "--ckpt", run, "--prompts-file", prompts, check=True).stdout.splitlines()
    assert out == ["1342+879 -> 2221   correct", "99+1 -> 100   correct", "7+8 -> 15   wrong, expected 16",
                   "5+5 -> 10", "exact match: 2/3 (66.7%)"]
    drawn = cli("sample", "--ckpt", run, "--num-samples", "2", check=True).stdout.splitlines()
    assert all("+" in line and "->" in line and "<bos>" not in line for line in drawn[:2])
    proc = cli("sample", "--ckpt", run, "--prompt", "12*3")
    assert proc.returncode == 2 and "write an addition as A+B" in proc.stderr


def test_a_hex_run_answers_in_hex(cli, tmp_path):
    from tinyformer.lab.evaluate import greedy_continuation
    from tinyformer.train.rundir import Run

    run = tmp_path / "hex"
    cli("lengen", "train", "--task", "add-hex", "--pe", "abacus", "task.train_lengths=1-2", "eval.bins=[1-2]",
             *LAB, "--steps", "30", "eval.stop_accuracy=1.01", "--out", run, check=True)
    line = cli("sample", "--ckpt", run, "--prompt", "1a+f", check=True).stdout.strip()
    prompt, answer = line.split(" -> ")
    assert prompt == "1a+f" and answer and set(answer) <= set("0123456789abcdef")
    # the answer is the model's own greedy continuation of +a1+f+, read back most significant digit first
    setup = TaskSetup(Run(run).config)
    raw = greedy_continuation(Run(run).load_model(), np.asarray([setup.task.encode("+a1+f+")]), 6,
                              setup.eval_positions, "cpu")[0].tolist()
    digits = "".join(setup.task.vocab[i] for i in raw[: raw.index(setup.task.plus)] if i < 16) if setup.task.plus in raw \
        else "".join(setup.task.vocab[i] for i in raw if i < 16)
    assert answer == (digits[::-1].lstrip("0") or "0")


@pytest.fixture(scope="module")
def addition_run(tiny_task_run, tmp_path_factory) -> Path:
    """An addition run (Abacus positions) trained 30 steps: it answers, not always right."""
    run = tmp_path_factory.mktemp("add") / "run"
    tiny_task_run(run, **{"task.name": "add", "model.position": "abacus", "model.d_model": 32,
                          "task.train_lengths": "1-4", "eval.bins": ["1-4"], "train.max_steps": 30,
                          "train.eval_every": 30, "train.lr": 3e-3, "eval.stop_accuracy": 1.01})
    return run


def test_an_addition_runs_prompts_are_scored_against_its_own_answers(cli, addition_run, tmp_path, one_line_error):
    def answer(prompt: str) -> str:
        line = cli("sample", "--ckpt", addition_run, "--prompt", prompt, check=True).stdout
        assert line.startswith(f"{prompt} -> ") and line.endswith("\n") and line.count("\n") == 1, line
        return line.split(" -> ")[1].strip()

    first, second = answer("1342+879"), answer("7+8")
    assert first.isdigit() and second.isdigit()
    other = str(int(second) + 1)  # an answer the model does not give
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# sums\n1342+879={first}\n7+8 = {other}\n5+5\n")
    out = cli("sample", "--ckpt", addition_run, "--prompts-file", prompts, check=True).stdout.splitlines()
    assert out == [f"1342+879 -> {first}   correct", f"7+8 -> {second}   wrong, expected {other}",
                   f"5+5 -> {answer('5+5')}", "exact match: 1/2 (50.0%)"]
    drawn = cli("sample", "--ckpt", addition_run, "--num-samples", "2", check=True).stdout.splitlines()
    assert all("+" in line and "->" in line and "<bos>" not in line for line in drawn[:2])
    one_line_error(cli("sample", "--ckpt", addition_run, "--prompt", "12*3"), "write an addition as A+B")
