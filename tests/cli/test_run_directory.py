"""One run-directory format: every verb (eval, sample, export, attention, plot) takes a task run of the lab
and a language-model run alike, and both commands take the one config schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def task_run(tiny_task_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "task"
    tiny_task_run(run, **{"model.position": "learned", "eval.examples": 20, "task.train_lengths": "1-6",
                          "eval.bins": ["1-6", "7-12"]})
    return run


@pytest.fixture(scope="module")
def lm_run(tiny_lm_run) -> Path:
    return tiny_lm_run("train.max_steps=6", "train.eval_every=3", "train.sample_tokens=0")


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_both_kinds_share_one_layout(task_run, lm_run):
    for run in (task_run, lm_run):
        assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= {p.name for p in run.iterdir()}
        index = json.loads((run / "checkpoints" / "index.json").read_text())
        assert index["latest"] == "step-00000006" and index["best"].startswith("step-")
    assert (lm_run / "tokenizer").is_dir() and not (task_run / "tokenizer").exists()


def test_eval_scores_either_kind_as_training_did(cli, task_run, lm_run, one_line_error):
    proc = cli("eval", "--ckpt", task_run, "--which", "latest", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accuracy"] == summary(task_run)["accuracy"]  # the same bins, same model
    proc = cli("eval", "--ckpt", lm_run, "--which", "latest", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["loss"] == pytest.approx(summary(lm_run)["val_loss"], rel=1e-6)
    proc = cli("eval", "--ckpt", task_run, "--bins", "4-6,10-12", "--examples", "10")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"bin +4-6: [01]\.\d{3}", proc.stdout) and re.search(r"bin +10-12: [01]\.\d{3}", proc.stdout)
    one_line_error(cli("eval", "--ckpt", task_run, "--bins", "13-14"),  # beyond the learned position table
                   "needs 17 learned positions but model.n_positions=15")


def test_sample_answers_task_inputs_and_continues_text(cli, task_run, lm_run):
    proc = cli("sample", "--ckpt", task_run, "--num-samples", "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4 and re.fullmatch(r"\d/3 correct \(task UR, lengths 1-6, checkpoint step-\d{8}\)", lines[-1])
    assert all("->" in line and ("correct" in line or "expected" in line) for line in lines[:3])
    proc = cli("sample", "--ckpt", task_run, "--prompt", "<bos> 0 1 2 <sep> 1", "--max-new-tokens", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("<bos> 0 1 2 <sep> 1 -> ")  # the task's own form, taken as it is
    proc = cli("sample", "--ckpt", task_run, "--prompt", "0 1 2 ? 1")  # the natural form: context ? query
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"0 1 2 \? 1 -> [0-4]( [0-4])?\n", proc.stdout)  # one symbol, or a second if no <eos>
    proc = cli("sample", "--ckpt", lm_run, "--prompt", "the cat", "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("the cat")


def test_export_attention_and_plot_take_either_kind(cli, task_run, lm_run, tmp_path):
    for name, run in (("task", task_run), ("lm", lm_run)):
        proc = cli("export", "--ckpt", run, "--out", tmp_path / f"hf-{name}")
        assert proc.returncode == 0, proc.stderr
        config = json.loads((tmp_path / f"hf-{name}" / "config.json").read_text())
        assert config["architectures"] == ["GPT2LMHeadModel"]
        text = "<bos> 0 1 <sep> 0 <sep>" if name == "task" else "the cat"
        proc = cli("attention", "--ckpt", run, "--text", text, "--out", tmp_path / f"att-{name}")
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / f"att-{name}" / "layer_00.png").is_file()
        proc = cli("plot", run, "--out", tmp_path / f"{name}.png")
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "task UR's symbols" in cli("export", "--ckpt", task_run, "--out", tmp_path / "x").stdout
    (tmp_path / "empty").mkdir()
    proc = cli("plot", tmp_path / "empty", "--out", tmp_path / "none.png")
    assert proc.returncode == 2 and "nothing to plot" in proc.stderr and not (tmp_path / "none.png").exists()


def test_plot_of_a_task_run_draws_accuracy_per_bin(task_run, tmp_path):
    from tinyformer.train import plot

    fig = plot.draw_runs([task_run])
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["training loss (nats/token)", "exact-match accuracy, length bin 1-6",
                                             "exact-match accuracy, length bin 7-12"]
    assert [line.get_label() for line in axes[1].get_lines()] == ["task"]
    assert axes[1].get_lines()[0].get_xdata().tolist() == [3, 6]


@pytest.mark.parametrize("command", ["train", "lengen"])
@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_layer=2", "unknown config key 'model.n_layer'; did you mean 'n_layers'"),
        ("train.max_step=2", "unknown config key 'train.max_step'; did you mean 'max_steps'"),
        ("eval.exampels=2", "unknown config key 'eval.exampels'; did you mean 'examples'"),
        ("task.train_length=1-5", "unknown config key 'task.train_length'; did you mean 'train_lengths'"),
        ("data.tokeniser=x", "unknown config key 'data.tokeniser'; did you mean 'tokenizer'"),
        ("modle.n_layers=2", "unknown config key 'modle'; did you mean 'model'"),
    ],
)
def test_a_typo_in_any_section_names_the_closest_key(cli, tmp_path, one_line_error, command, override, message):
    args = ["train"] if command == "train" else ["lengen", "train", "--out", str(tmp_path / "run")]
    if command == "train":
        args.append(f"run_dir={tmp_path / 'run'}")
    if command == "lengen" and override.startswith("data."):
        message = "both a data section"  # a task run has no data section
    one_line_error(cli(*args, override), message)
    assert not (tmp_path / "run").exists()
