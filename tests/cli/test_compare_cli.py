"""`tinyformer compare`: variants x seeds through the one engine, resumable, with numbers equal to separate
`train` + `eval` runs; perplexity against context length (`eval --seq-len`); eval's default subset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

CONFIG = """\
model: {{n_layers: 1, d_model: 32, n_heads: 2, max_seq_len: 64}}
data: {{train: {train}, val: {val}, tokenizer: {tok}, eval_tokens: 1500}}
train: {{max_steps: 8, batch_size: 4, lr: 3.0e-3, warmup: 2, eval_every: 4, log_every: 2, precision: fp32,
        threads: 1, progress: false, sample_tokens: 0, peak_flops: 1.0e+12}}
"""


@pytest.fixture(scope="module")
def config(tiny_corpus, tmp_path_factory) -> Path:
    corpus = tiny_corpus()
    path = tmp_path_factory.mktemp("compare") / "config.yaml"
    path.write_text(CONFIG.format(train=corpus.train, val=corpus.val, tok=corpus.tok))
    return path


def test_compare_trains_resumes_and_equals_separate_train_and_eval(cli, config, tmp_path, monkeypatch):
    from tinyformer.lm import compare as lm  # the module whose train_lm compare calls

    out = tmp_path / "cmp"
    args = ["compare", "--config", config, "--vary", "model.position=learned,rope,alibi", "--seeds", "2", "--out", out]
    real, calls = lm.train_lm, []

    def interrupted_third(cfg):  # Ctrl-C during the third run, after its step-4 checkpoint
        calls.append(cfg.run_dir)
        if len(calls) < 3:
            return real(cfg)
        real(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, stop_at_step=4), model_keys=cfg.model_keys))
        raise KeyboardInterrupt

    monkeypatch.setattr(lm, "train_lm", interrupted_third)
    assert cli(*args).returncode == 130
    assert not (out / "results.md").exists()
    monkeypatch.setattr(lm, "train_lm", real)
    done = [out / "runs" / "learned" / f"seed-{s}" / "metrics.jsonl" for s in (1337, 1338)]
    before = [p.stat().st_mtime_ns for p in done]
    proc = cli(*args, check=True)
    assert proc.stdout.count("finished earlier, read back") == 2
    assert [p.stat().st_mtime_ns for p in done] == before  # finished runs were not trained again
    for name in ("training-loss.png", "validation.png", "context-length.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    table = (out / "results.md").read_text()
    assert "| rope | 2 |" in table and "learned positions end at 64" in table
    results = json.loads((out / "results.json").read_text())
    by_run = {(r["variant"], r["seed"]): r for r in results["runs"]}
    assert len(by_run) == 6 and results["trained_seq_len"] == 64
    learned = by_run["learned", 1337]["by_seq_len"]
    assert [r["seq_len"] for r in learned] == [64, 128, 256, 512]
    assert learned[0]["perplexity"] > 1 and all(r["loss"] is None for r in learned[1:])
    assert learned[1]["stopped"] == "learned positions end at 64"
    rope = by_run["rope", 1337]["by_seq_len"]
    assert all(r["perplexity"] is not None for r in rope)  # values at 128, 256 (and 512)

    # the interrupted run, resumed inside compare, equals one trained alone; its numbers equal `eval`'s
    alone = tmp_path / "alone"
    cli("train", "--config", config, "model.position=rope", f"run_dir={alone}", check=True)
    resumed = out / "runs" / "rope" / "seed-1337"
    last = [{k: v for k, v in json.loads(p.read_text().splitlines()[-1]).items() if k != "elapsed_s"}
            for p in (resumed / "metrics.jsonl", alone / "metrics.jsonl")]
    assert last[0] == last[1]  # the training time differs between processes, nothing else
    ev = json.loads(cli("eval", "--ckpt", alone, "--seq-len", "64,128,256,512", "--json", check=True).stdout)
    assert [(r["seq_len"], r["loss"]) for r in ev["by_seq_len"]] == [(r["seq_len"], r["loss"]) for r in rope]
    val_log = [json.loads(line) for line in (alone / "metrics.jsonl").read_text().splitlines()]
    assert rope[0]["loss"] == [r for r in val_log if r["kind"] == "eval"][-1]["val_loss"]
    assert by_run["rope", 1337]["final_val_loss"] == rope[0]["loss"]


def test_eval_seed_and_subset_default_to_what_training_used(one_line_error, cli, config, tmp_path):
    run = tmp_path / "run"
    cli("train", "--config", config, f"run_dir={run}", "train.seed=7", check=True)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if r["kind"] == "eval"][-1]
    same = json.loads(cli("eval", "--ckpt", run, "--json", check=True).stdout)
    assert same["loss"] == logged["val_loss"] and same["tokens"] == logged["val_tokens"]
    assert "seed 7" in same["subset"]
    other = json.loads(cli("eval", "--ckpt", run, "--json", "--seed", "8", check=True).stdout)
    assert other["loss"] != logged["val_loss"]  # another subset
    explicit = json.loads(cli("eval", "--ckpt", run, "--json", "--seed", "7", "--max-tokens", "1500",
                                   check=True).stdout)
    assert explicit["loss"] == logged["val_loss"]
    one_line_error(cli("eval", "--ckpt", run, "--seq-len", "64,x"), "comma-separated")


def test_learned_positions_beyond_their_table_are_a_one_line_error_for_one_length(one_line_error, cli, config, tmp_path):
    run = tmp_path / "run"
    cli("train", "--config", config, f"run_dir={run}", "model.position=learned", "train.max_steps=2", check=True)
    one_line_error(cli("eval", "--ckpt", run, "--seq-len", "128"), "learned positions end at 64")
    text = cli("eval", "--ckpt", run, "--seq-len", "64,128", check=True).stdout
    assert "not evaluated: learned positions end at 64" in text


@pytest.mark.parametrize("vary, message", [
    ([], "give at least one --vary"),
    (["model.position"], "is not KEY=V1,V2"),
    (["train.seed=1,2"], "compare sets it itself"),
    (["model.position=rope,rope"], "names a value twice"),
    (["model.positon=rope,alibi"], "did you mean 'position'"),
])
def test_bad_vary_is_a_one_line_error_before_anything_trains(one_line_error, cli, config, tmp_path, vary, message):
    args = [x for v in vary for x in ("--vary", v)]
    one_line_error(cli("compare", "--config", config, *args, "--out", tmp_path / "cmp"), message)
    assert not (tmp_path / "cmp").exists()


# the newer position schemes: FIRE trains as a variant with a row at every context length; a coupled table,
# which on text would be abacus under another name, is refused in one line before anything trains
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


def test_compare_passes_budget_and_target_through_and_tables_their_times(cli, config, tmp_path):
    from tinyformer.lm import compare

    out = tmp_path / "cmp"
    planned = compare.plan(str(config), ["train.budget=30s"], ["train.target_loss=9,0.01"], 1, out)
    assert [(m.cfg.train.budget_s, m.cfg.train.target_loss) for m in planned] == [(30.0, 9.0), (30.0, 0.01)]
    cli("compare", "--config", config, "--vary", "train.target_loss=9,0.01", "--factors", "1", "--out", out,
        "train.budget=30s", check=True)
    runs = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    reached, missed = runs["9"], runs["0.01"]
    summary = json.loads((Path(reached["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "target_reached" and summary["target_reached_at_step"] == 4  # its first evaluation
    assert reached["time_to_target_s"] == summary["time_to_target_s"] and missed["time_to_target_s"] is None
    table = (out / "results.md").read_text()
    assert "training s (budget)" in table and "training s to target loss" in table
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| 0.01")
            or line.startswith("| 9 ")}
    assert rows["9"].endswith(f"| {summary['elapsed_s']:.2f} of 30 | {summary['time_to_target_s']:.2f} |")
    assert rows["0.01"].endswith("| not reached |")
