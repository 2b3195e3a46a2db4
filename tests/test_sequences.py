"""`tinyformer data sequences`: number-sequence datasets read back with Python integers, errors, and the
generate -> tokenizer train -> encode -> train -> sample pipeline (slow)."""

from __future__ import annotations

import json

import pytest
import yaml

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


def test_cli_writes_the_file_and_refuses_to_overwrite(cli, tmp_path):
    config = tmp_path / "seq.yaml"
    out = tmp_path / "seq.txt"
    config.write_text(yaml.safe_dump({"output": str(out), "count": 20, "max_value": 99, "column_delimiter": ","}))
    proc = cli("data", "sequences", "--config", config, "count=30")
    assert proc.returncode == 0, proc.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 30 and all(int(a) + int(b) == int(c) for a, b, c in (r.split(",") for r in rows))
    proc = cli("data", "sequences", "--config", config)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--force" in proc.stderr
    assert len(out.read_text().splitlines()) == 30
    config.write_text(yaml.safe_dump({"output": str(tmp_path / "x.txt"), "base": 1}))
    proc = cli("data", "sequences", "--config", config)
    assert proc.returncode == 2 and "between 2 and 16" in proc.stderr and not (tmp_path / "x.txt").exists()


@pytest.mark.slow
def test_generate_tokenizer_train_sample_and_attention_end_to_end(cli, tmp_path):
    config = tmp_path / "seq.yaml"
    config.write_text(yaml.safe_dump({"output": str(tmp_path / "seq.txt"), "count": 3000, "max_value": 65535,
                                      "base": 16, "reverse": True, "column_delimiter": "+", "row_prefix": "+",
                                      "row_suffix": "+"}))
    cli("data", "sequences", "--config", config, check=True)
    cli("tokenizer", "train", tmp_path / "seq.txt", "--vocab-size", "300", "--special-tokens", "<|endoftext|>",
        "--out", tmp_path / "tok", "--no-progress", check=True)
    cli("tokenizer", "encode", tmp_path / "seq.txt", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "seq.bin",
        check=True)
    vocab_size = json.loads((tmp_path / "seq.json").read_text())["vocab_size"]
    run = tmp_path / "run"
    cli("train", f"run_dir={run}", "model.preset=gpt2", f"model.vocab_size={vocab_size}", "model.n_layers=2",
        "model.n_heads=2", "model.d_model=32", "model.max_seq_len=32", f"data.train={tmp_path / 'seq.bin'}",
        f"data.tokenizer={tmp_path / 'tok'}", "train.max_steps=20", "train.batch_size=8", "train.eval_every=0",
        "train.progress=false", "train.sample_tokens=0", "train.device=cpu", check=True)
    proc = cli("sample", "--ckpt", run, "--which", "latest", "--prompt", "+2431+b34+", "--max-new-tokens", "8",
               "--temperature", "0", "--device", "cpu", check=True)
    assert proc.stdout.startswith("+2431+b34+")
    proc = cli("attention", "--ckpt", run, "--text", "+101+:2001+:3011+", "--out", tmp_path / "maps", check=True)
    assert (tmp_path / "maps" / "layer_01.png").is_file()


def test_the_shipped_hex_config_writes_the_addition_task_format():
    from pathlib import Path

    from tinyformer.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "sequences-hex.yaml"
    cfg = load_config(SequencesConfig, path, ["count=200"])
    for a, b, c in read_rows(generate_sequences(cfg), cfg):
        assert max(a, b) <= 0xFFFF and a + b == c
