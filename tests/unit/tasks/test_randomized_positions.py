"""Randomized positions (`task.random_positions`, Ruoss et al., 2023): each training example's ids are a
sorted random subset of [0, L_max), for every scheme; evaluation counts 0, 1, ...; seeded and resumed
exactly; one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinyformer.errors import TinyformerError
from tinyformer.lab.setup import TaskSetup
from tinyformer.tasks import TaskStream, get_task


def real_ids(batch):
    """Each row's position ids over its real tokens (up to its last target)."""
    last = [int(np.flatnonzero(t != -100).max()) for t in batch["targets"]]
    return [row[: n + 1] for row, n in zip(batch["position_ids"], last)]


def test_ids_are_sorted_distinct_inside_the_range_and_fixed_by_the_seed():
    stream = lambda seed: TaskStream(get_task("UF"), (1, 10), batch_size=64, seed=seed, random_positions_to=60)  # noqa: E731
    batch = stream(4).next_arrays()
    spans = []
    for ids in real_ids(batch):
        assert (np.diff(ids) > 0).all() and ids.min() >= 0 and ids.max() < 60
        spans.append(int(ids[-1] - ids[0]) - (len(ids) - 1))  # how far the ids spread beyond consecutive
    assert max(spans) > 20, "the subset is drawn from the whole range, not near consecutive"
    again, other = stream(4).next_arrays(), stream(5).next_arrays()
    assert np.array_equal(again["position_ids"], batch["position_ids"])
    assert not np.array_equal(other["position_ids"], batch["position_ids"])


def test_a_restored_stream_continues_with_the_same_ids():
    make = lambda: TaskStream(get_task("NF"), (1, 10), batch_size=16, seed=1, random_positions_to=40)  # noqa: E731
    straight = make()
    expected = [straight.next_arrays()["position_ids"] for _ in range(3)]
    first = make()
    first.next_arrays()
    restored = make()
    restored.load_state_dict(first.state_dict())
    assert all(np.array_equal(restored.next_arrays()["position_ids"], e) for e in expected[1:])


def test_coupled_ids_stay_coupled_and_zero_stays_zero():
    task = get_task("add")
    batch = TaskStream(task, (1, 10), batch_size=32, seed=0, random_positions_to=50, positions="coupled").next_arrays()
    coupled = task.coupled_positions(batch["ids"])
    for row in range(len(coupled)):
        n = int(np.flatnonzero(batch["targets"][row] != -100).max()) + 1
        got, want = batch["position_ids"][row, :n], coupled[row, :n]
        assert (got[want == 0] == 0).all() and (got[want > 0] < 50).all()
        pairs = sorted(set(zip(want[want > 0].tolist(), got[want > 0].tolist())))
        # one new id per coupled id, in the same order: equal ids stay equal, order is kept
        assert len({w for w, _ in pairs}) == len(pairs) and all(a[1] < b[1] for a, b in zip(pairs, pairs[1:]))


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "alibi", "fire", "coupled"])
def test_every_scheme_trains_on_randomized_ids_and_evaluates_on_counted_ones(tiny_task_run, position):
    cfg = tiny_task_run.config(**{"task.name": "UF", "model.position": position, "task.random_positions": True})
    setup = TaskSetup(cfg)
    assert not setup.random_offset and setup.random_positions_to == setup.positions_needed
    batch = setup.stream(16).next_arrays()
    counted = setup.eval_positions(batch["ids"])
    assert not np.array_equal(batch["position_ids"], counted)
    assert batch["position_ids"].max() < setup.random_positions_to
    assert np.array_equal(setup.eval_positions(batch["ids"][:1, :4]), counted[:1, :4])  # no randomness in eval
    if setup.scheme.has_table:
        assert setup.model_config().n_positions >= setup.random_positions_to


def test_a_run_on_randomized_positions_stopped_and_resumed_equals_a_straight_one(tiny_task_run, tmp_path: Path,
                                                                               records):
    over = {"train.max_steps": 6, "train.eval_every": 3, "train.log_every": 1, "eval.stop_accuracy": 2.0,
            "task.random_positions": True, "task.random_positions_to": 48, "model.dropout": 0.1}
    straight = tiny_task_run(tmp_path / "straight", **over)
    tiny_task_run(tmp_path / "resumed", **over, **{"train.stop_at_step": 4})
    resumed = tiny_task_run(tmp_path / "resumed", **over)
    assert resumed["accuracy"] == straight["accuracy"]
    assert records(tmp_path / "resumed", timing=False) == records(tmp_path / "straight", timing=False)


@pytest.mark.parametrize("settings, phrase", [
    # UR at lengths 1-8 draws contexts of up to 7 symbols: 12 tokens, 11 of them model inputs (ids 0..10)
    ({"task.random_positions_to": 10}, "below the 11 positions"),
    ({"task.random_offset": True}, "exclude each other"),
    ({"model.position": "learned", "model.n_positions": 20, "task.random_positions_to": 30}, "raise model.n_positions"),
])
def test_impossible_settings_are_refused_in_one_line(tiny_task_run, settings, phrase):
    with pytest.raises(TinyformerError, match=phrase) as err:
        TaskSetup(tiny_task_run.config(**{"task.random_positions": True, **settings}))
    assert "\n" not in str(err.value)


def test_the_range_without_the_switch_is_refused(tiny_task_run, cli, one_line_error, tmp_path):
    one_line_error(cli(*tiny_task_run.args(tmp_path / "r", "task.random_positions_to=40")),
                   "task.random_positions_to is set but task.random_positions is off")
    assert not (tmp_path / "r").exists()
