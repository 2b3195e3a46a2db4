"""`tinyformer sample` on task runs: natural inputs in (1342+879, 3 1 4, 0 3 1 4 ? 3), natural answers out,
and a batch mode that reports exact match."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tinyformer.errors import TinyformerError
from tinyformer.tasks import get_task


@pytest.mark.parametrize("name, text, internal", [
    ("add", "1342+879", "+2431+978+"),
    ("add", " 1342 + 879 = ", "+2431+978+"),
    ("add:reverse=false", "1342+879", "+1342+879+"),
    ("add-hex", "1A+f", "+a1+f+"),
    ("add:hints=true", "42+1", "+g2h4+g1+"),
    ("add:reverse=false,hints=true", "42+1", "+h4g2+g1+"),
])
def test_addition_prompts_become_the_tasks_own_form_and_back(name, text, internal):
    task = get_task(name)
    ids = task.prompt_ids(text)
    assert task.decode(ids) == internal
    assert task.prompt_ids(internal) == ids  # the task's own form is taken as it is
    operands = text.replace("=", "").replace(" ", "").lower()
    assert task.prompt_text(ids) == operands


@pytest.mark.parametrize("name", ["add", "add:reverse=false", "add-hex", "add:hints=true", "add:base=3"])
def test_the_answer_of_every_generated_problem_reads_as_the_sum(name):
    task = get_task(name)
    ex = task.sample(np.random.default_rng(0), 1, 6, 50)
    for tokens, supervised, n in zip(ex.tokens, ex.supervised, ex.seq_lens):
        tokens, supervised = tokens[: int(n)], supervised[: int(n)]
        start = int(np.argmax(supervised))
        a, b = (int(x, task.base) for x in task.prompt_text(tokens[:start]).split("+"))
        answer = task.answer_text(tokens[start:])
        assert int(answer, task.base) == a + b and task.same_answer(answer, np.base_repr(a + b, task.base))
        assert task.prompt_ids(task.prompt_text(tokens[:start])) == tokens[:start].tolist()
        assert len(tokens) - start <= task.answer_length(tokens[:start])  # what sample generates at most


@pytest.mark.parametrize("name, text, internal, answer_ids, answer", [
    ("UF", "3 1 4", "<bos> 3 1 4 <sep>", [3, 1, 4], "3 1 4"),
    ("sort", "3, 1, 4", "<bos> 3 1 4 <sep>", [1, 3, 4], "1 3 4"),
    ("parity", "1011", "<bos> 1 0 1 1 <sep>", [1], "1"),
    ("UR", "0 3 1 4 ? 3", "<bos> 0 3 1 4 <sep> 3", [1], "1"),
])
def test_symbol_task_prompts_and_answers(name, text, internal, answer_ids, answer):
    task = get_task(name)
    ids = task.prompt_ids(text)
    assert task.decode(ids) == internal and task.prompt_ids(internal) == ids
    assert task.prompt_text(ids) == text.replace(",", "").replace("1011", "1 0 1 1")
    assert task.answer_length(ids) == len(answer_ids) + (0 if task.single_answer else 1)  # <eos> if supervised
    assert task.answer_text([*answer_ids, task.eos, 0, 0]) == answer
    assert task.same_answer(answer.replace(" ", ""), answer) or task.n_symbols > 10


@pytest.mark.parametrize("name, text, message", [
    ("add", "1342", "write an addition as A+B"),
    ("add", "13a+1", "is not a number in base 10"),
    ("add-hex", "1g+1", "is not a number in base 16"),
    ("UR", "0 3 1 4", "takes a query after ?"),
    ("UR", "0 3 1 4 ? 3 4", "exactly one query symbol"),
    ("sort", "3 1 ? 4", "takes no ?"),
    ("parity", "1 2", "2 is not a symbol of task parity"),
])
def test_bad_prompts_are_one_line_errors(name, text, message):
    with pytest.raises(TinyformerError, match=re.escape(message)):
        get_task(name).prompt_ids(text)


LAB = ["model.n_layers=2", "model.d_model=64", "model.n_heads=4", "train.batch_size=64", "train.threads=1",
       "train.precision=fp32", "train.progress=false", "eval.examples=500"]


@pytest.mark.slow  # ~1 min of training; test_a_hex_run_answers_in_hex checks the same path on 30 steps
def test_an_addition_run_answers_1342_plus_879_after_training(cli, tmp_path):
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
    from tinyformer.lab.setup import TaskSetup
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
