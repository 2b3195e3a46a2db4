"""Number-sequence datasets (tinyformer.tasks.sequences) read back with Python integers, and bad configs; the
`tinyformer data sequences` verb is in cli/test_data_cli.py."""

from __future__ import annotations

import pytest

from tinyformer.config import from_dict
from tinyformer.errors import TinyformerError
from tinyformer.tasks.sequences import SequencesConfig, generate_sequences


def read_rows(text: str, cfg: SequencesConfig) -> list[list[int]]:
    """Parse the dataset back: split rows and columns, strip the frame, undo the digit order."""
    assert text.endswith(cfg.row_delimiter)
    rows = []
    for line in text.split(cfg.row_delimiter)[:-1]:
        assert line.startswith(cfg.row_prefix) and line.endswith(cfg.row_suffix), line
        body = line[len(cfg.row_prefix) : len(line) - len(cfg.row_suffix)]
        numbers = body.split(cfg.column_delimiter)
        rows.append([int(n[::-1] if cfg.reverse else n, cfg.base) for n in numbers])
    return rows


@pytest.mark.parametrize("base,reverse", [(10, False), (16, True), (2, False), (7, True)])
def test_sum_rows_are_correct_sums_in_range_in_the_configured_format(base, reverse):
    cfg = SequencesConfig(kind="sum", count=2000, min_value=0, max_value=99999, base=base, reverse=reverse,
                          column_delimiter="|", row_delimiter="\n", seed=base)
    rows = read_rows(generate_sequences(cfg), cfg)
    assert len(rows) == 2000
    for a, b, c in rows:
        assert 0 <= a <= 99999 and 0 <= b <= 99999 and a + b == c
    # numbers are drawn across the range, not clustered
    assert min(r[0] for r in rows) < 5000 and max(r[0] for r in rows) > 95000


def test_addition_framing_matches_the_addition_task_format():
    from tinyformer.tasks import get_task

    cfg = SequencesConfig(kind="sum", count=50, max_value=65535, base=16, reverse=True, column_delimiter="+",
                          row_prefix="+", row_suffix="+")
    text = generate_sequences(cfg)
    task = get_task("add-hex")
    for line in text.splitlines():
        assert task.decode(task.encode(line)) == line  # every symbol is in the task's vocabulary
        a, b, c = (int(x[::-1], 16) for x in line[1:-1].split("+"))
        assert a + b == c


def test_series_follow_their_recurrence_and_big_numbers_stay_exact():
    cfg = SequencesConfig(kind="series", count=300, min_value=1, max_value=500, mask=[1, 0, 1], terms=40,
                          column_delimiter=" ", seed=3)
    for row in read_rows(generate_sequences(cfg), cfg):
        assert len(row) == 40 and all(1 <= x <= 500 for x in row[:3])
        assert all(row[i] == row[i - 3] + row[i - 1] for i in range(3, 40))
    big = SequencesConfig(kind="sum", count=100, min_value=2**70, max_value=2**80, base=16)
    for a, b, c in read_rows(generate_sequences(big), big):
        assert 2**70 <= a <= 2**80 and a + b == c


def test_same_seed_same_text_and_another_seed_another():
    cfg = SequencesConfig(count=200, seed=1)
    assert generate_sequences(cfg) == generate_sequences(SequencesConfig(count=200, seed=1))
    assert generate_sequences(cfg) != generate_sequences(SequencesConfig(count=200, seed=2))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"base": 17}, "between 2 and 16"),
        ({"min_value": 10, "max_value": 5}, "empty"),
        ({"kind": "fib"}, "not one of"),
        ({"column_delimiter": "1"}, "must not contain digits"),
        ({"column_delimiter": ""}, "must not be empty"),
        ({"kind": "series", "mask": [0, 0]}, "at least one 1"),
        ({"cuont": 3}, "count"),
    ],
)
def test_bad_configs_are_one_line_errors(changes, message):
    with pytest.raises(TinyformerError, match=message):
        from_dict(SequencesConfig, changes)


def test_the_shipped_hex_config_writes_the_addition_task_format():
    from pathlib import Path

    from tinyformer.config import load_config

    path = Path(__file__).resolve().parents[3] / "configs" / "sequences-hex.yaml"
    cfg = load_config(SequencesConfig, path, ["count=200"])
    for a, b, c in read_rows(generate_sequences(cfg), cfg):
        assert max(a, b) <= 0xFFFF and a + b == c
