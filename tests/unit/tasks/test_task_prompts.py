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
