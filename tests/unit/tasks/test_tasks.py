"""The synthetic tasks yield exactly the published format and supervision, by construction and by property."""

from __future__ import annotations

import numpy as np
import pytest

from tinyformer.errors import TinyformerError
from tinyformer.tasks import (
    SPECIAL_TOKENS,
    TaskStream,
    get_task,
    make_eval_bins,
    make_eval_set,
    max_input_length,
    task_names,
)

COPY = {"UF": (150, True, False), "UB": (150, True, True), "NF": (5, False, False), "NB": (5, False, True)}
RETRIEVAL = ["UL", "UR", "NLFirst", "NRFirst", "NLLast", "NRLast"]


def sample(name: str, lo: int, hi: int, count: int = 400, seed: int = 0):
    task = get_task(name)
    rng = np.random.default_rng(seed)
    return task, task.generate(rng, task.sample_lengths(rng, lo, hi, count))


def rows(task, ex):
    """Each example unpadded: (tokens, supervised) as python lists, checking the padding on the way."""
    for tokens, sup, n in zip(ex.tokens, ex.supervised, ex.seq_lens):
        assert (tokens[n:] == task.pad).all() and not sup[n:].any(), "padding must be <pad> and unsupervised"
        yield tokens[:n].tolist(), sup[:n].tolist()


def test_every_task_has_its_symbol_vocabulary_then_the_specials():
    lengen_tasks = set(COPY) | set(RETRIEVAL) | {"sort", "parity", "majority"}
    assert lengen_tasks <= set(task_names())  # the arithmetic lab adds tasks with vocabularies of their own
    for name in sorted(lengen_tasks):
        task = get_task(name)
        n = task.n_symbols
        assert task.vocab == [str(i) for i in range(n)] + ["<bos>", "<sep>", "<eos>", "<pad>"]
        assert (task.bos, task.sep, task.eos, task.pad) == (n, n + 1, n + 2, n + 3)
        assert task.vocab_size == n + len(SPECIAL_TOKENS) == len(task.vocab)
    assert get_task("UF").n_symbols == 150 and get_task("NF").n_symbols == 5 and get_task("UL").n_symbols == 5


@pytest.mark.parametrize("name", list(COPY))
def test_copy_format_supervision_and_symbols(name):
    n, unique, backward = COPY[name]
    task, ex = sample(name, 1, 60)
    for (tokens, sup), length in zip(rows(task, ex), ex.lengths):
        L = int(length)
        assert 1 <= L <= 60
        assert tokens[0] == task.bos and tokens[L + 1] == task.sep and tokens[-1] == task.eos
        assert len(tokens) == 2 * L + 3 == task.sequence_length(L)
        source, target = tokens[1 : L + 1], tokens[L + 2 : 2 * L + 2]
        assert all(0 <= s < n for s in source)
        assert target == (source[::-1] if backward else source)
        if unique:
            assert len(set(source)) == L
        # supervised: every target token and <eos>, nothing else
        assert sup == [False] * (L + 2) + [True] * (L + 1)
    if not unique:  # drawn with replacement: repeats must actually occur
        assert any(len(set(t[1 : int(L) + 1])) < L for (t, _), L in zip(rows(task, ex), ex.lengths))


def test_unique_copy_reaches_every_symbol_and_rejects_lengths_beyond_n():
    task, ex = sample("UF", 140, 150, count=50)
    assert set(np.unique(ex.tokens)) >= set(range(150))
    with pytest.raises(TinyformerError, match="without replacement"):
        task.sample_lengths(np.random.default_rng(0), 100, 151, 4)


def parse_retrieval(task, tokens):
    sep = tokens.index(task.sep)
    assert tokens[0] == task.bos and len(tokens) == sep + 4 and tokens[-1] == task.eos
    return tokens[1:sep], tokens[sep + 1], tokens[sep + 2]


@pytest.mark.parametrize("name", RETRIEVAL)
@pytest.mark.parametrize("lo,hi", [(1, 50), (51, 100)])
def test_retrieval_query_occurrences_and_answer_neighbours(name, lo, hi):
    task, ex = sample(name, lo, hi)
    side = -1 if name[1] == "L" else 1
    seen_lengths = set()
    for (tokens, sup), length in zip(rows(task, ex), ex.lengths):
        context, query, answer = parse_retrieval(task, tokens)
        C = len(context)
        assert length == C and max(4, lo) <= C <= hi - 1
        seen_lengths.add(C)
        assert all(0 <= c < 5 for c in context) and 0 <= query < 5
        hits = [i for i, c in enumerate(context) if c == query]
        if name.startswith("U"):
            assert len(hits) == 1, "the query occurs exactly once"
            anchor = hits[0]
        else:
            assert len(hits) >= 2, "the query occurs at least twice"
            anchor = hits[-1] if name.endswith("Last") else hits[0]
        assert 0 <= anchor + side < C, "the answer's neighbour exists"
        assert answer == context[anchor + side]
        assert sup == [False] * (C + 3) + [True, False], "only the answer is supervised"
    assert min(seen_lengths) == max(4, lo) and max(seen_lengths) == hi - 1


@pytest.mark.parametrize("name", ["NLFirst", "NRLast", "majority"])
def test_rejection_keeps_lengths_uniform(name):
    # redrawn samples keep their length: each length's share stays 1/K within sampling noise
    task, ex = sample(name, 1, 12, count=20000, seed=3)
    counts = np.bincount(ex.lengths)
    present = counts[counts > 0]
    expected = len(ex.lengths) / len(present)
    assert np.abs(present - expected).max() < 5 * np.sqrt(expected)


def test_unique_retrieval_places_the_query_everywhere_it_may():
    for name, banned in (("UL", 0), ("UR", 7)):
        task, ex = sample(name, 8, 9, count=3000)  # C = 8
        where = [parse_retrieval(task, t)[0].index(parse_retrieval(task, t)[1]) for t, _ in rows(task, ex)]
        assert set(where) == set(range(8)) - {banned}


def test_sort_parity_majority_answers():
    task, ex = sample("sort", 1, 40)
    for (tokens, sup), length in zip(rows(task, ex), ex.lengths):
        L = int(length)
        assert tokens[L + 2 : 2 * L + 2] == sorted(tokens[1 : L + 1]) and len(set(tokens[1 : L + 1])) == L
        assert sup == [False] * (L + 2) + [True] * (L + 1)
    for name in ("parity", "majority"):
        task, ex = sample(name, 1, 40)
        for (tokens, sup), length in zip(rows(task, ex), ex.lengths):
            L = int(length)
            bits, answer = tokens[1 : L + 1], tokens[L + 2]
            assert tokens[L + 1] == task.sep and tokens[L + 3] == task.eos and len(tokens) == L + 4
            if name == "parity":
                assert answer == sum(bits) % 2
            else:
                counts = sorted((bits.count(s), s) for s in range(3))
                assert counts[-1][0] > counts[-2][0] and answer == counts[-1][1]
            assert sup == [False] * (L + 2) + [True, False]


def test_eval_bins_stay_inside_their_bin_and_are_fixed_by_seed():
    for name in ("UF", "UR", "NRLast", "sort"):
        task = get_task(name)
        bins = make_eval_bins(task, ((1, 50), (51, 100), (101, 150)), count=300, seed=0)
        for es in bins:
            lo, hi = task.length_range(es.lo, es.hi)
            assert es.examples.lengths.min() >= lo and es.examples.lengths.max() <= hi
            assert es.examples.lengths.min() >= es.lo and es.examples.lengths.max() <= es.hi
            for tokens, n, L in zip(es.examples.tokens, es.examples.seq_lens, es.examples.lengths):
                assert n == task.sequence_length(int(L)) and tokens[n - 1] == task.eos
                assert (tokens[n:] == task.pad).all()
        again = make_eval_set(task, 51, 100, count=300, seed=0)
        assert np.array_equal(again.examples.tokens, bins[1].examples.tokens)
        other = make_eval_set(task, 51, 100, count=300, seed=1)
        assert not np.array_equal(other.examples.tokens, bins[1].examples.tokens)


def test_eval_batches_shift_for_next_token_prediction():
    task = get_task("NB")
    es = make_eval_set(task, 5, 20, count=64)
    for ids, targets, n_real in es.batches(16):
        assert ids.shape == targets.shape and ids.shape[1] == n_real.max()
        sup = targets != -100
        assert (sup.sum(1) == (n_real - 1) // 2 + 1).all()  # L target tokens + <eos>, with n_real = 2L + 2
        # a supervised target is the next input token, or the final <eos>
        nxt = np.concatenate([ids[:, 1:], np.full((len(ids), 1), task.eos)], axis=1)
        nxt[np.arange(len(ids)), n_real - 1] = task.eos
        assert (targets[sup] == nxt[sup]).all()


def test_stream_is_deterministic_and_resumes_exactly():
    a = TaskStream(get_task("UR"), (1, 50), batch_size=8, seed=5)
    b = TaskStream(get_task("UR"), (1, 50), batch_size=8, seed=5)
    c = TaskStream(get_task("UR"), (1, 50), batch_size=8, seed=6)
    first = [a.next_arrays() for _ in range(3)]
    assert all(np.array_equal(x["ids"], b.next_arrays()["ids"]) for x in first)
    assert not np.array_equal(first[0]["ids"], c.next_arrays()["ids"])
    state = a.state_dict()
    cont = [a.next_arrays() for _ in range(2)]
    fresh = TaskStream(get_task("UR"), (1, 50), batch_size=8, seed=0)
    fresh.load_state_dict(state)
    assert all(np.array_equal(x["ids"], fresh.next_arrays()["ids"]) for x in cont)
    batch = fresh.next_batch()
    assert {"ids", "targets", "position_ids"} <= set(batch) and batch["ids"].dtype.is_floating_point is False


def test_random_position_offsets_cover_the_table_and_stay_inside_it():
    task = get_task("NF")
    table = max_input_length(task, [(1, 150)])  # the longest evaluated input: 2*150 + 2 positions
    stream = TaskStream(task, (1, 50), batch_size=64, seed=0, random_offset_to=table, attention_mask=True)
    lo, hi = table, 0
    for _ in range(30):
        b = stream.next_arrays()
        n_real = b["attention_mask"].sum(1)
        for pos, n in zip(b["position_ids"], n_real):
            assert (np.diff(pos[:n]) == 1).all() and pos[n - 1] < table
        real = b["position_ids"][b["attention_mask"]]
        lo, hi = min(lo, real.min()), max(hi, real.max())
    assert lo == 0 and hi == table - 1
    with pytest.raises(TinyformerError, match="position table"):
        TaskStream(task, (1, 50), random_offset_to=50)


def test_bad_task_names_and_ranges_are_one_line_errors():
    with pytest.raises(TinyformerError, match="unknown task 'UX'.*valid tasks: UF, UB, NF, NB, UL, UR"):
        get_task("UX")
    with pytest.raises(TinyformerError, match="did you mean 'NRLast'"):
        get_task("NRlast")
    with pytest.raises(TinyformerError, match="at least 4"):
        get_task("UL").sample_lengths(np.random.default_rng(0), 1, 4, 2)


def test_the_documented_way_to_add_a_task_works():
    # the example in docs/lengen.md, run as written: it registers `repeat` and yields its format
    import re
    from pathlib import Path

    from tinyformer.tasks.registry import TASKS

    doc = (Path(__file__).resolve().parents[3] / "docs" / "lengen.md").read_text(encoding="utf-8")
    code = next(block for block in re.findall(r"```python\n(.*?)```", doc, re.S) if "class Repeat" in block)
    try:
        exec(compile(code, "docs/lengen.md", "exec"), {})
        task, ex = sample("repeat", 1, 9)
        for (tokens, sup), length in zip(rows(task, ex), ex.lengths):
            L = int(length)
            source = tokens[1 : L + 1]
            assert tokens[L + 1 :] == [task.sep, *source, *source, task.eos]
            assert sup == [False] * (L + 2) + [True] * (2 * L + 1)
        stream = TaskStream(task, (1, 9), batch_size=4)
        assert stream.next_batch()["ids"].shape[0] == 4
    finally:
        TASKS.pop("repeat", None)


def test_symbol_run_positions_index_each_symbol_inside_its_run():
    # Abacus-style ids for the lab's `--pe abacus`: source and target symbol i share id i
    from tinyformer.tasks.stream import symbol_run_positions

    task, ex = sample("NB", 1, 20, count=64)
    ours = symbol_run_positions(ex.tokens, task.n_symbols)
    for row, length in zip(ours, ex.lengths):
        L = int(length)
        assert row[1 : L + 1].tolist() == list(range(1, L + 1)) == row[L + 2 : 2 * L + 2].tolist()
        assert row[0] == row[L + 1] == row[2 * L + 2] == 0
