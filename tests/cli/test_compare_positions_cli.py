"""`tinyformer compare` under the newer position schemes: FIRE trains as a variant and gets a row with its
perplexity at every context length; coupled with a table, which on text would be abacus under another name,
is refused in one line before anything trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIG = """\
model: {{n_layers: 1, d_model: 32, n_heads: 2, max_seq_len: 64}}
data: {{train: {train}, val: {val}, tokenizer: {tok}, eval_tokens: 1500}}
train: {{max_steps: 4, batch_size: 4, lr: 3.0e-3, warmup: 2, eval_every: 4, log_every: 2, precision: fp32,
        threads: 1, progress: false, sample_tokens: 0, peak_flops: 1.0e+12}}
"""


@pytest.fixture(scope="module")
def config(tiny_corpus, tmp_path_factory) -> Path:
    corpus = tiny_corpus()
    path = tmp_path_factory.mktemp("compare") / "config.yaml"
    path.write_text(CONFIG.format(train=corpus.train, val=corpus.val, tok=corpus.tok))
    return path


def test_compare_takes_fire_as_a_variant(cli, config, tmp_path):
    out = tmp_path / "cmp"
    cli("compare", "--config", config, "--vary", "model.position=rope,fire", "--factors", "1,2", "--out", out,
        check=True)
    assert "| fire | 1 |" in (out / "results.md").read_text()
    runs = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    fire = runs["fire"]["by_seq_len"]
    assert [r["seq_len"] for r in fire] == [64, 128]
    assert all(r["perplexity"] is not None and r["perplexity"] > 1 for r in fire)  # relative: no table to end
    assert fire[0]["loss"] != runs["rope"]["by_seq_len"][0]["loss"]  # another model, not rope under a new name


def test_compare_refuses_a_coupled_table_in_one_line_before_anything_trains(cli, config, tmp_path, one_line_error):
    out = tmp_path / "cmp"
    one_line_error(cli("compare", "--config", config, "--vary", "model.position=rope,coupled", "--out", out),
                   "variant coupled: model.position=coupled on text", "use abacus")
    assert not out.exists()  # refused before the rope variant trained
