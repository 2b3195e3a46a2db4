"""The lab: accuracy on hand-made logits, a tiny run end to end, sweep resume, best over seeds, the report, bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyformer.errors import Interrupted, TinyformerError
from tinyformer.lab.evaluate import exact_match, free_running, token_matches
from tinyformer.lab.report import Entry, load_published, render_csv, render_markdown, write_report
from tinyformer.lab.sweep import best, config_key, lab_config, load_grid, read_rows, sweep

ROOT = Path(__file__).resolve().parents[1]


def one_hot_logits(pred: list[list[int]], vocab: int = 6) -> torch.Tensor:
    """Logits whose argmax is `pred`, with a runner-up close behind so only the argmax decides."""
    logits = torch.zeros(len(pred), len(pred[0]), vocab)
    for b, row in enumerate(pred):
        for t, tok in enumerate(row):
            logits[b, t, tok] = 2.0
            logits[b, t, (tok + 1) % vocab] = 1.9
    return logits


def test_exact_match_needs_every_supervised_token_and_ignores_the_rest():
    targets = torch.tensor([[-100, -100, 3, 4, 5], [-100, -100, 3, 4, 5], [-100, -100, 3, 4, 5], [-100, 2, -100, -100, 1]])
    pred = [
        [0, 0, 3, 4, 5],  # all supervised right, unsupervised wrong: correct
        [0, 0, 3, 4, 0],  # last supervised token wrong: wrong
        [3, 4, 2, 4, 5],  # first supervised token wrong: wrong
        [5, 2, 5, 5, 1],  # non-contiguous supervision, both right: correct
    ]
    logits = one_hot_logits(pred)
    assert exact_match(logits, targets).tolist() == [True, False, False, True]
    assert token_matches(logits, targets) == (3 + 2 + 2 + 2, 11)


def naive_greedy(model, prompt: np.ndarray, n_new: int) -> np.ndarray:
    """The reference decoder: recompute the whole sequence for every new token, no cache."""
    seq = torch.from_numpy(prompt)
    for _ in range(n_new):
        logits, _ = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, prompt.shape[1]:].numpy()


def test_free_running_decodes_from_its_own_outputs():
    # a random tiny model: free_running (KV cache, grouped by prompt length) must agree row by row with the
    # naive decoder, and count a row correct exactly when its own continuation matches every target
    from tinyformer.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=6, n_layers=1, n_heads=2, d_model=16, position="rope")).eval()
    ids = np.array([[1, 1, 2, 3, 0], [1, 1, 2, 4, 5], [1, 2, 3, 4, 5], [2, 2, 2, 2, 2]])
    prompts = {0: ids[:2, :3], 1: ids[2:, :2]}
    own = np.concatenate([naive_greedy(model, prompts[0], 3), naive_greedy(model, prompts[1], 3)])
    # rows 0 and 2 ask for the model's own continuation, rows 1 and 3 for a changed first or last token
    targets = np.full_like(ids, -100)
    targets[:2, 2:] = own[:2]
    targets[2:, 1:4] = own[2:]
    targets[1, 2] = (own[1, 0] + 1) % 6
    targets[3, 3] = (own[3, 2] + 1) % 6
    got = free_running(model, ids, targets, np.array([5, 5, 5, 5]),
                       lambda x: np.broadcast_to(np.arange(x.shape[1]), x.shape), "cpu")
    assert got.tolist() == [True, False, True, False]


def tiny_config(**over):
    base = {"task.name": "UR", "model.position": "rope", "model.n_layers": 1, "model.n_heads": 2,
            "model.d_model": 16, "train.max_steps": 6, "train.eval_every": 3, "eval.examples": 24,
            "task.train_lengths": "1-8", "eval.bins": ["1-8", "9-16"], "train.batch_size": 8, "train.warmup": 2,
            "train.log_every": 2, "train.device": "cpu", "train.progress": False, "train.precision": "fp32"}
    return lab_config({**base, **over})


def train_tiny(run_dir: Path, **over) -> dict:
    from tinyformer.lab.run import train_task

    return train_task(tiny_config(run_dir=str(run_dir), **over))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_its_directory_and_is_deterministic(tmp_path: Path):
    a = train_tiny(tmp_path / "a", **{"model.position": "learned"})
    b = train_tiny(tmp_path / "b", **{"model.position": "learned"})
    assert a["accuracy"] == b["accuracy"] and a["token_accuracy"] == b["token_accuracy"]
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints"} <= files
    metrics = records(tmp_path / "a")
    assert [m["step"] for m in metrics if m["kind"] == "eval"] == [3, 6]
    assert [m.get("train_loss") for m in metrics] == [m.get("train_loss") for m in records(tmp_path / "b")]
    saved = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert set(saved["accuracy"]) == {"1-8", "9-16"} and saved["scheme"] == "ape" and saved["task"] == "UR"
    # greedy decoding through the KV cache agrees with teacher-forced exact match (contiguous supervision);
    # the model is half-trained (some answers right, some wrong), so a decoder that got every row wrong, or
    # every row right, would disagree
    assert 0 < saved["accuracy"]["1-8"] < 1
    assert saved["accuracy_greedy"] == saved["accuracy"]


def test_abacus_runs_train_and_decode_with_symbol_run_positions(tmp_path: Path):
    # 40 steps leave the model right on some answers of several tokens and wrong on others: greedy decoding
    # (abacus positions computed from the tokens decoded so far) must score exactly those answers right
    result = train_tiny(tmp_path / "r", **{"task.name": "NF", "model.position": "abacus",
                                           "task.train_lengths": "1-6", "eval.bins": ["1-6", "7-12"],
                                           "train.max_steps": 40, "train.lr": 3e-3, "model.d_model": 32})
    assert 0 < result["accuracy"]["1-6"] < 1
    assert result["accuracy_greedy"] == result["accuracy"]


def test_training_stops_once_the_training_bin_is_solved(tmp_path: Path):
    # stop_accuracy 0 is reached at the first evaluation
    result = train_tiny(tmp_path / "r", **{"train.max_steps": 30, "eval.stop_accuracy": 0.0, "eval.greedy": False})
    assert result["step"] == 3 and result["status"] == "solved"
    # running it again reads the finished run back instead of training on
    again = train_tiny(tmp_path / "r", **{"train.max_steps": 30, "eval.stop_accuracy": 0.0, "eval.greedy": False})
    assert again == result


def fake_train(calls: list):
    """A stand-in for training: accuracy is a deterministic function of the config, runs are recorded."""

    def train(cfg, run_dir: Path) -> dict:
        layers, lr, seed = cfg.model.n_layers, cfg.train.lr, cfg.train.seed
        calls.append((layers, lr, seed))
        score = layers / 10 + (0.05 if lr == 1e-3 else 0.0) + seed / 100
        return {"steps": 10, "stopped_early": False, "train_seconds": 0.1,
                "accuracy": {"1-50": 1.0, "51-100": score, "101-150": score / 2}}

    return train


def test_sweep_resumes_where_it_stopped_and_best_reruns_seeds(tmp_path: Path):
    grid = {"model.n_layers": [2, 4], "train.lr": [1e-3, 1e-4]}
    calls: list = []
    base = {"task.name": "UR", "model.position": "rope", "train.max_steps": 10}
    sweep(base, {"model.n_layers": [2], "train.lr": [1e-3, 1e-4]}, tmp_path, train=fake_train(calls),
          log=lambda s: None)
    assert len(calls) == 2
    # an interrupted write leaves a torn last line: ignored, and the run it belonged to is redone
    summary = tmp_path / "UR" / "summary-rope.jsonl"
    summary.write_text(summary.read_text() + '{"key": "torn", "acc')
    calls.clear()
    sweep(base, grid, tmp_path, train=fake_train(calls), log=lambda s: None)
    assert sorted(calls) == [(4, 1e-4, 0), (4, 1e-3, 0)], "only the combinations not yet in the summary run"
    rows = read_rows(summary)
    assert len(rows) == 4 and len({r["key"] for r in rows}) == 4
    calls.clear()
    sweep(base, grid, tmp_path, train=fake_train(calls), log=lambda s: None)
    assert calls == []
    # best: layers 4, lr 1e-3 wins on 51-100; seed 0 is reused from the sweep, seeds 1 and 2 are trained
    result = best("UR", "rope", tmp_path, train=fake_train(calls), log=lambda s: None)
    assert calls == [(4, 1e-3, 1), (4, 1e-3, 2)]
    acc = result["accuracy"]["51-100"]
    assert acc["mean"] == pytest.approx(0.46) and acc["std"] == pytest.approx(0.01)
    assert (acc["min"], acc["max"]) == (pytest.approx(0.45), pytest.approx(0.47))
    saved = json.loads((tmp_path / "UR" / "best-rope.json").read_text())
    assert saved["settings"]["model.n_layers"] == 4 and saved["by"] == "51-100"


def test_best_json_keeps_the_types_of_settings_given_as_command_line_text(tmp_path: Path):
    # `lengen sweep --steps 600 --lr 1e-3` hands its aliases over as text
    base = {"task.name": "UR", "model.position": "rope", "train.max_steps": "10", "train.lr": "1e-3"}
    sweep(base, {"model.n_layers": [2]}, tmp_path, train=fake_train([]), log=lambda s: None)
    best("UR", "rope", tmp_path, seeds=(0,), train=fake_train([]), log=lambda s: None)
    saved = json.loads((tmp_path / "UR" / "best-rope.json").read_text())["settings"]
    assert saved["train.max_steps"] == 10 and saved["train.lr"] == 1e-3 and saved["model.n_layers"] == 2


def test_config_key_ignores_logging_but_not_settings():
    same = {"train.device": "cuda", "train.log_every": 50, "train.threads": 1, "run_dir": "elsewhere"}
    assert config_key(tiny_config()) == config_key(tiny_config(**same))
    assert config_key(tiny_config()) != config_key(tiny_config(**{"train.lr": 2e-3}))
    assert config_key(tiny_config()) != config_key(tiny_config(**{"train.precision": "bf16"}))


def test_grid_typos_are_caught_before_any_run(tmp_path: Path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("model.n_layers: [2, 4]\nmodel.d_modle: [64]\n")
    with pytest.raises(TinyformerError, match=r"grid\.yaml.*unknown config key 'model.d_modle'.*'d_model'"):
        load_grid(grid)
    grid.write_text("model:\n  n_layers: [2, four]\n")  # nested sections work too
    with pytest.raises(TinyformerError, match="model.n_layers: expected an integer"):
        load_grid(grid)
    grid.write_text("train.lr: [1e-3, 1e-4]\neval.bins: [1-8, 9-16]\n")  # a list-valued setting: one value
    parsed = load_grid(grid)
    assert parsed["eval.bins"] == [["1-8", "9-16"]] and len(parsed["train.lr"]) == 2
    default = load_grid(None)
    assert default["model.n_layers"] == [2, 4] and default["model.d_model"] == [64, 128, 256]


def test_report_puts_published_numbers_beside_ours(tmp_path: Path):
    published = load_published(ROOT / "docs" / "published-results.yaml")
    assert published["UR"]["ape"]["51-100"] == pytest.approx(0.988)
    entries = [
        Entry("UR", "ape", {"1-50": 1.0, "51-100": 0.9, "101-150": 0.5}, {"1-50": 0.0, "51-100": 0.05, "101-150": 0.1}, 3),
        Entry("UR", "alibi", {"1-50": 1.0, "51-100": 0.7, "101-150": 0.25}),
    ]
    md = render_markdown(entries, published)
    lines = md.splitlines()
    assert lines[0] == "| task | scheme | runs | 1-50 | 51-100 | 101-150 | published 51-100 | published 101-150 |"
    assert lines[2] == "| UR | ape | 3 | 1.000 ± 0.000 | 0.900 ± 0.050 | 0.500 ± 0.100 | 0.988 | 0.926 |"
    assert lines[3] == "| UR | alibi | 1 | 1.000 | 0.700 | 0.250 | - | - |"
    rows = list(csv.DictReader(io.StringIO(render_csv(entries, published))))
    assert len(rows) == 6
    ape_mid = next(r for r in rows if r["scheme"] == "ape" and r["bin"] == "51-100")
    assert (ape_mid["accuracy"], ape_mid["published"], ape_mid["runs"]) == ("0.9000", "0.9880", "3")
    paths = write_report(entries, tmp_path, published)
    assert paths["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "0.988" in paths["markdown"].read_text()


def test_cli_report_from_a_results_tree(tmp_path: Path, cli):
    calls: list = []
    sweep({"task.name": "UL", "model.position": "learned"}, {"model.n_layers": [2, 4]}, tmp_path,
          train=fake_train(calls), log=lambda s: None)
    proc = cli("lengen", "report", "--results", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| UL | ape | 1 | 1.000 | 0.450 | 0.225 | 1.000 | 0.996 |" in proc.stdout
    assert (tmp_path / "report.csv").exists() and (tmp_path / "heatmap.png").exists()


def test_report_says_which_bins_the_published_table_covers_when_it_shows_none(tmp_path: Path, cli):
    def short_bins(cfg, run_dir: Path) -> dict:  # a CPU-sized sweep: bins the published table does not have
        return {"steps": 10, "stopped_early": False, "train_seconds": 0.1,
                "accuracy": {"1-10": 1.0, "11-20": 0.5}}

    sweep({"task.name": "UR", "model.position": "alibi"}, {"model.n_layers": [2]}, tmp_path, train=short_bins,
          log=lambda s: None)
    sweep({"task.name": "UR", "model.position": "rope"}, {"model.n_layers": [2]}, tmp_path, train=short_bins,
          log=lambda s: None)
    proc = cli("lengen", "report", "--results", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "published" not in proc.stdout.splitlines()[0]  # no published column: and the reason is given
    for text in (proc.stdout, (tmp_path / "report.md").read_text()):
        assert "cover only the bins 51-100, 101-150" in text
        assert "none of this report's bins (1-10, 11-20) is among them" in text
        assert "none for UR/alibi: the reference study published no such row" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--task", "UX", "--pe", "rope"], "unknown task 'UX'; valid tasks: UF, UB, NF, NB, UL, UR, NLFirst"),
        (["train", "--task", "UR", "--pe", "rotary"], "unknown position scheme 'rotary'.*valid schemes: ape, learned"),
        (["train", "--task", "UF", "--pe", "ape", "model.n_positions=120"],
         "bin 101-150 of task UF needs 302 learned positions but model.n_positions=120"),
        (["train", "--task", "UL", "--pe", "rope", "eval.bins=[1-3]"], "task UL cannot build examples"),
        (["train", "--task", "UL", "--pe", "rope", "model.n_layers=two"], "model.n_layers: expected an integer"),
        (["train", "--task", "UL", "model.d_modle=64"], "unknown config key 'model.d_modle'; did you mean 'd_model'"),
        (["train", "--task", "UL", "train.lrr=1"], "unknown config key 'train.lrr'; did you mean 'lr'"),
        (["train", "--task", "UL", "task.nmae=UR"], "unknown config key 'task.name'|unknown config key 'task.nmae'"),
        (["train", "--task", "UL", "eval.bin=[1-3]"], "unknown config key 'eval.bin'; did you mean 'bins'"),
        (["train", "--task", "UL", "trian.lr=1"], "unknown config key 'trian'; did you mean 'train'"),
        (["sweep", "--task", "UR", "--pe", "rope", "--grid", "GRID"], "unknown config key 'model.hedas'.*'n_heads'"),
        (["sweep", "--task", "UR", "--pe", "rope", "--grid", "MISSING"], "does not exist"),
        (["best", "--task", "UR", "--pe", "rope", "--results", "RES"], "no sweep results"),
        (["report", "--results", "RES"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_error_and_leaves_nothing(tmp_path: Path, capsys, args, message):
    # in-process through the CLI's main() (the same path as the executable, without a subprocess per case)
    from tinyformer.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text("model.hedas: [4, 8]\n")
    args = [str({"GRID": grid, "MISSING": tmp_path / "nope.yaml", "RES": tmp_path / "res"}.get(a, a)) for a in args]
    extra = ["--out", str(tmp_path / "out")] if args[0] == "train" else []
    assert main(["lengen", *args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tinyformer: error:"), err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "res").exists()


def test_cli_errors_from_the_executable(cli, tmp_path: Path):
    proc = cli("lengen", "train", "--task", "NRlast", "--pe", "ape", "--out", tmp_path / "run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith(
        "tinyformer: error: unknown task 'NRlast'; did you mean 'NRLast'? valid tasks: UF, UB, NF, NB, UL, UR, "
        "NLFirst, NRFirst, NLLast, NRLast, NLFirst-ref, NRFirst-ref, NLLast-ref, NRLast-ref, sort, parity, majority"
    )
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # 8 runs twice, ~1.5 min; the table and heatmap code: test_cli_report_from_a_results_tree
def test_demo_prints_the_table_and_says_where_the_heatmap_went(cli, tmp_path: Path):
    from tinyformer.verbs.demo import DEMO_SCHEMES, DEMO_TASKS

    proc = cli("demo", "--out", tmp_path / "demo", "--steps-scale", "0.005", "--eval-examples", "16", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert len(DEMO_TASKS) >= 2 and len(DEMO_SCHEMES) >= 3
    table = out[out.index("exact-match accuracy per length bin"):]
    for task in DEMO_TASKS:
        for pe in DEMO_SCHEMES:
            assert re.search(rf"^{task}\s+{pe}\s+[01]\.\d{{3}}\s+[01]\.\d{{3}}\s+[01]\.\d{{3}}\s+\d+$", table, re.M), table
    heatmap = tmp_path / "demo" / "heatmap.png"
    assert f"heatmap: {heatmap}" in out and heatmap.read_bytes()[:4] == b"\x89PNG"
    csv_rows = list(csv.DictReader((tmp_path / "demo" / "report.csv").open()))
    assert {(r["task"], r["scheme"]) for r in csv_rows} == {(t, p) for t in DEMO_TASKS for p in DEMO_SCHEMES}
    # the same table on every run, whether the runs go one after another or to two worker processes
    again = cli("demo", "--out", tmp_path / "demo", "--steps-scale", "0.005", "--eval-examples", "16", "--workers", "2")
    assert again.returncode == 0, again.stderr
    table_again = again.stdout[again.stdout.index("exact-match accuracy per length bin"):]
    assert table_again.split("\nfinished in")[0] == table.split("\nfinished in")[0]


def test_a_stopped_and_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path: Path):
    # a lab run is the engine's run: stopped halfway (train.stop_at_step) and resumed with resume=auto, its
    # metrics and final weights are those of a run that never stopped
    from safetensors.torch import load_file

    over = {"train.max_steps": 8, "train.eval_every": 4, "train.log_every": 1, "eval.stop_accuracy": 2.0,
            "model.position": "learned"}
    straight = train_tiny(tmp_path / "straight", **over)
    paused = train_tiny(tmp_path / "resumed", **over, **{"train.stop_at_step": 5})
    assert paused["status"] == "paused" and paused["step"] == 5
    resumed = train_tiny(tmp_path / "resumed", **over)
    assert resumed["status"] == "finished" and resumed["accuracy"] == straight["accuracy"]

    def strip(rs):
        return [{k: v for k, v in r.items() if not k.endswith("_per_s") and k not in ("mfu", "elapsed_s")} for r in rs]

    assert strip(records(tmp_path / "resumed")) == strip(records(tmp_path / "straight"))
    final = "checkpoints/step-00000008/model.safetensors"
    a, b = load_file(tmp_path / "straight" / final), load_file(tmp_path / "resumed" / final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # bf16 is emulated on CPUs without AVX-512 (~1 min); test_autotune's
# test_an_explicit_precision_is_never_measured[bf16] checks that a bf16 lab run trains and records bf16
def test_bf16_autocast_solves_a_small_task_like_fp32(tmp_path: Path):
    # the engine's precision reaches lab runs: under bf16 autocast a small task is solved as in fp32
    over = {"task.name": "majority", "model.position": "rope", "model.d_model": 32, "model.n_layers": 2,
            "task.train_lengths": "1-16", "eval.bins": ["1-16"], "train.batch_size": 32, "train.lr": 3e-3,
            "train.max_steps": 400, "train.eval_every": 10, "eval.examples": 64, "train.warmup": 20,
            "train.log_every": 10}
    fp32 = train_tiny(tmp_path / "fp32", **over)
    bf16 = train_tiny(tmp_path / "bf16", **over, **{"train.precision": "bf16"})
    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert fp32["status"] == bf16["status"] == "solved"
    assert fp32["accuracy"]["1-16"] == bf16["accuracy"]["1-16"] == 1.0
    # the same batches, different arithmetic: bf16 really ran (its losses differ from fp32's)
    losses = [[r["train_loss"] for r in records(tmp_path / k) if r["kind"] == "train"] for k in ("fp32", "bf16")]
    assert losses[0] != losses[1] and losses[0][0] == pytest.approx(losses[1][0], rel=0.02)


def test_a_sweep_records_no_row_for_a_run_that_did_not_end(tmp_path: Path):
    calls: list = []
    base = {"task.name": "UR", "model.position": "rope", "train.max_steps": 10}

    def interrupted(cfg, run_dir):
        calls.append(cfg.model.n_layers)
        return {"status": "interrupted", "steps": 3, "stopped_early": False, "accuracy": {"1-50": 0.1}}

    with pytest.raises(Interrupted):  # a run stopped by a signal stops the sweep too
        sweep(base, {"model.n_layers": [2]}, tmp_path, train=interrupted, log=lambda s: None)
    assert not (tmp_path / "UR" / "summary-rope.jsonl").exists()
    sweep(base, {"model.n_layers": [2]}, tmp_path, train=fake_train(calls), log=lambda s: None)
    assert calls == [2, (2, 1e-3, 0)] and len(read_rows(tmp_path / "UR" / "summary-rope.jsonl")) == 1


def test_a_task_run_on_two_processes_matches_one(tmp_path: Path, cli):
    # the engine's DDP reaches lab runs: each process keeps its rows of one global batch, so 2 gloo
    # processes with batch 32 in all follow the 1-process curve (16 rows each: every process trains its
    # rows in two length groups, the first without gradient sync, `tinyformer.batch.split_by_length`)
    import os
    import subprocess
    import sys

    args = ["lengen", "train", "--task", "UR", "--pe", "rope", "model.n_layers=1", "model.d_model=16",
            "model.n_heads=2", "train.max_steps=4", "train.eval_every=2", "eval.examples=12", "train.log_every=1",
            "task.train_lengths=1-8", "eval.bins=[1-8]", "train.batch_size=32", "train.precision=fp32",
            "train.progress=false", "train.threads=1", "train.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli(*args, "--out", tmp_path / "one", check=True)  # one process: this one
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "tinyformer", *args, "train.parallel=ddp", "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    losses = [[r["train_loss"] for r in records(tmp_path / k) if r["kind"] == "train"] for k in ("one", "two")]
    assert len(losses[0]) == 4
    np.testing.assert_allclose(losses[1], losses[0], atol=1e-5, rtol=0)
    assert summary_of(tmp_path / "two")["world_size"] == 2


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# ---------------------------------------------------------------- a signal stops a multi-run command

SIGNAL_RUNS = ["--task", "UR", "--pe", "rope", "model.n_heads=2", "model.d_model=16", "train.max_steps=300",
               "train.eval_every=0", "eval.examples=24", "task.train_lengths=1-8", "eval.bins=[1-8,9-16]",
               "train.batch_size=8", "train.log_every=1", "train.precision=fp32", "train.device=cpu",
               "eval.greedy=false", "train.progress=true"]


def training_runs(results: Path) -> list[Path]:
    """Run directories under RESULTS/UR/runs/rope that have logged a training step."""
    return [p.parent for p in sorted(results.glob("UR/runs/rope/*/metrics.jsonl")) if '"kind": "train"' in p.read_text()]


def signal_when_training(results: Path, signum: int, skip: int = 0) -> threading.Thread:
    """Send `signum` to this process once more than `skip` runs are training (a real signal: the trainer's
    handler catches it in the main thread, as from a terminal)."""
    def wait_and_signal():
        deadline = time.time() + 60
        while time.time() < deadline and len(training_runs(results)) <= skip:
            time.sleep(0.02)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=wait_and_signal, daemon=True)
    thread.start()
    return thread


def test_ctrl_c_stops_a_sweep_once_its_run_saved_and_the_same_command_resumes(tmp_path: Path, cli):
    results, grid = tmp_path / "res", tmp_path / "grid.yaml"
    grid.write_text("model.n_layers: [1, 2]\n")
    args = ["lengen", "sweep", "--grid", str(grid), "--results", str(results), *SIGNAL_RUNS]
    # worker processes (the default executor): Ctrl-C reaches the whole process group of the terminal
    proc = subprocess.Popen([sys.executable, "-m", "tinyformer", *args, "--workers", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not training_runs(results):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    runs = list((results / "UR" / "runs" / "rope").iterdir())
    assert len(runs) == 1, "the next combination must not start after Ctrl-C"
    stopped = json.loads((runs[0] / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGINT" and 0 < stopped["step"] < 300
    assert f"stopped by SIGINT at step {stopped['step']}; checkpoint saved" in out
    assert not (results / "UR" / "summary-rope.jsonl").exists()
    # the same command again (here, in this process): the interrupted run resumes from its checkpoint
    again = cli(*args, "--workers", "0", check=True)
    assert f"resumed from {runs[0] / 'checkpoints'}" in again.stdout and f"at step {stopped['step']}" in again.stdout
    steps = [r["step"] for r in records(runs[0]) if r["kind"] == "train"]
    assert steps == list(range(1, 301))
    assert len(read_rows(results / "UR" / "summary-rope.jsonl")) == 2

    # `best` over two more seeds: SIGTERM during the first stops it (143), the second seed never starts
    signal_when_training(results, signal.SIGTERM, skip=2)
    proc = cli("lengen", "best", "--task", "UR", "--pe", "rope", "--seeds", "1,2", "--results", results,
                    "--workers", "0")
    assert proc.returncode == 143, proc.stderr
    assert len(list((results / "UR" / "runs" / "rope").iterdir())) == 3
    assert not (results / "UR" / "best-rope.json").exists()
