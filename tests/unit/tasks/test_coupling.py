"""Position coupling (`model.position=coupled`): hand-written ids for each task family, the random offset
keeps coupled tokens together, ids of an answer do not depend on what follows, and the one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest

from tinyformer.errors import TinyformerError
from tinyformer.tasks import TaskStream, get_task
from tinyformer.tasks.stream import to_model_arrays


def ids_of(task, text_or_ids):
    """The model input of one example: its tokens without the last one (the last is only a target)."""
    ids = task.encode(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
    return np.array([ids[:-1]])


def test_forward_copy_couples_each_output_token_with_the_source_token_it_copies():
    task = get_task("UF")
    # <bos> 7 3 9 <sep> 7 3 9 <eos>: source i and its copy share id i + 1; <sep> holds the place before the
    # first (1), so each token's query finds the source token it predicts at its own id + 1
    ids = ids_of(task, [task.bos, 7, 3, 9, task.sep, 7, 3, 9, task.eos])
    assert task.coupled_positions(ids).tolist() == [[0, 2, 3, 4, 1, 2, 3, 4]]


def test_backward_copy_couples_output_token_i_with_source_token_n_minus_i():
    task = get_task("NB")
    # <bos> 4 0 2 <sep> 2 0 4 <eos>: sources have ids 2 3 4; copy k is source 4 - k and shares its id; <sep>
    # holds the place after the last source (5), so each query finds the source it predicts at its id - 1
    ids = ids_of(task, [task.bos, 4, 0, 2, task.sep, 2, 0, 4, task.eos])
    assert task.coupled_positions(ids).tolist() == [[0, 2, 3, 4, 5, 4, 3, 2]]


def test_addition_with_a_carry_out_of_the_top_place_and_operands_of_unequal_length():
    task = get_task("add")
    # 99 + 4 = 103, reversed: +99+4+301+. Every digit has the id place + 2 (units 2, tens 3, the hundreds'
    # carry out of the top operand place 4); the answer's opening + holds the place below the units (1)
    assert task.coupled_positions(ids_of(task, "+99+4+301+")).tolist() == [[0, 2, 3, 0, 2, 1, 2, 3, 4]]


def test_hexadecimal_addition():
    task = get_task("add-hex")
    # 0xff + 0x1 = 0x100, reversed: +ff+1+001+
    assert task.coupled_positions(ids_of(task, "+ff+1+001+")).tolist() == [[0, 2, 3, 0, 2, 1, 2, 3, 4]]


def test_plain_digits_couple_when_padded():
    task = get_task("add:reverse=false,pad=true")
    # 99 + 4 = 103, most significant digit first, operands padded to 2 digits, the answer to 3
    assert task.decode(task.prompt_ids("99+4")) == "+99+04+"
    # tens 3, units 2, the answer's hundreds 4; the opening + holds the place above the answer's top (5)
    assert task.coupled_positions(ids_of(task, "+99+04+103+")).tolist() == [[0, 3, 2, 0, 3, 2, 5, 4, 3, 2]]


def test_index_hints_share_their_digits_id():
    task = get_task("add:hints=true")
    # 2 + 9 = 11 reversed with hints: +g2+g9+g1h1+
    assert task.coupled_positions(ids_of(task, "+g2+g9+g1h1+")).tolist() == [[0, 2, 2, 0, 2, 2, 1, 2, 2, 3, 3]]


@pytest.mark.parametrize("name", ["UF", "UB", "NF", "NB", "add", "add-hex", "add:pad=true",
                                  "add:reverse=false,pad=true", "add:hints=true"])
def test_answer_ids_depend_only_on_the_tokens_before_them(name):
    # greedy decoding computes each new token's id from the sequence so far: every prefix that holds the
    # whole prompt must give the ids the whole example gives (prompt ids may depend on the whole prompt)
    task = get_task(name)
    ex = task.sample(np.random.default_rng(1), 1, 12, 32)
    ids, targets, n_real = to_model_arrays(ex)
    full = task.coupled_positions(ids)
    for row in range(len(ids)):
        prompt = int(np.flatnonzero(targets[row] != -100)[0]) + 1  # up to the token predicting the answer
        for t in range(prompt, int(n_real[row]) + 1):
            assert task.coupled_positions(ids[row : row + 1, :t]).tolist() == [full[row, :t].tolist()]


def test_the_random_offset_keeps_coupled_tokens_ids_equal():
    task = get_task("add")
    stream = TaskStream(task, (1, 10), batch_size=64, seed=3, random_offset_to=40, positions="coupled")
    batch = stream.next_arrays()
    coupled = task.coupled_positions(batch["ids"])
    shifted = batch["position_ids"]
    real = batch["targets"] != -100  # rows differ in length; compare where the answer is
    offsets = set()
    for row in range(len(coupled)):
        members = (coupled[row] > 0) & (np.arange(coupled.shape[1]) <= np.flatnonzero(real[row]).max())
        assert (shifted[row][coupled[row] == 0] == 0).all()
        offset = np.unique(shifted[row][members] - coupled[row][members])
        assert len(offset) == 1 and offset[0] >= 0 and shifted[row][members].max() < 40
        offsets.add(int(offset[0]))
    assert len(offsets) > 5, "offsets are drawn per example"


def test_a_task_without_a_rule_and_plain_unpadded_addition_refuse_in_one_line(cli, one_line_error, tmp_path):
    line = one_line_error(cli("lengen", "train", "--task", "UR", "--pe", "coupled", "--out", tmp_path / "r"),
                          "task UR has no position coupling rule", "UF", "NB", "add")
    assert "add-hex" in line and "model.position=coupled cannot" in line
    one_line_error(cli("lengen", "train", "--task", "sort", "--pe", "coupled-relative", "--out", tmp_path / "s"),
                   "task sort has no position coupling rule, so model.position=coupled-relative cannot")
    one_line_error(cli("lengen", "train", "--task", "add:reverse=false", "--pe", "coupled", "--out", tmp_path / "p"),
                   "pad=true")
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists() and not (tmp_path / "s").exists()
    with pytest.raises(TinyformerError, match="no position coupling rule"):
        get_task("majority").coupled_positions(np.zeros((1, 3), dtype=np.int64))
