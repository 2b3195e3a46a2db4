"""The lab: accuracy on hand-made logits, a tiny run end to end, sweep resume, best over seeds, the report, bad input."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyformer.errors import TinyformerError
from tinyformer.lab.config import LengenConfig
from tinyformer.lab.evaluate import exact_match, free_running, token_matches
from tinyformer.lab.report import Entry, load_published, render_csv, render_markdown, write_report
from tinyformer.lab.sweep import best, config_key, load_grid, read_rows, sweep

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


class ScriptedModel(torch.nn.Module):
    """A stand-in with the model's generation interface whose next token is a fixed function of the prefix:
    it predicts (last token + 1) mod 6, except that it says 0 after a 3. Used to check free-running decoding."""

    training = False

    def new_kv_cache(self, batch: int, max_len: int):
        return {"tokens": None}

    def forward(self, ids, targets=None, position_ids=None, kv_cache=None):
        seq = ids if kv_cache is None or kv_cache["tokens"] is None else torch.cat([kv_cache["tokens"], ids], 1)
        if kv_cache is not None:
            kv_cache["tokens"] = seq
        nxt = torch.where(seq == 3, torch.zeros_like(seq), (seq + 1) % 6)[:, -ids.shape[1]:]
        return torch.nn.functional.one_hot(nxt, 6).float(), None


def test_free_running_decodes_from_its_own_outputs():
    ids = np.array([[1, 1, 2, 3, 0], [1, 1, 2, 4, 5], [1, 1, 2, 3, 4]])
    targets = np.array([[-100, -100, 3, 0, 1], [-100, -100, 3, 4, 5], [-100, -100, 3, 4, 5]])
    # row 0: prompt 1 1 2 -> 3 0 1 (model's own chain) = targets; row 1: the model says 3 0 1, not 3 4 5
    # row 2: teacher forcing would pass position 3 (after 3 comes... 0, wrong) - both say wrong
    model = ScriptedModel()
    got = free_running(model, ids, targets, np.array([5, 5, 5]),
                       lambda x: np.broadcast_to(np.arange(x.shape[1]), x.shape), "cpu")
    assert got.tolist() == [True, False, False]


def tiny_config(**over) -> LengenConfig:
    base = dict(task="UR", pe="rope", layers=1, heads=2, d_model=16, steps=6, eval_every=3, eval_examples=24,
                train_lengths="1-8", eval_bins=["1-8", "9-16"], batch_size=8, warmup=2, log_every=2, device="cpu")
    return LengenConfig(**{**base, **over})


def test_a_run_writes_its_directory_and_is_deterministic(tmp_path: Path):
    from tinyformer.lab.train import train_run

    a = train_run(tiny_config(pe="ape"), tmp_path / "a", log=lambda s: None)
    b = train_run(tiny_config(pe="ape"), tmp_path / "b", log=lambda s: None)
    assert a["accuracy"] == b["accuracy"] and a["token_accuracy"] == b["token_accuracy"]
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "results.json"} <= files
    metrics = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "eval" in m] == [3, 6]
    assert [m["loss"] for m in metrics] == [m["loss"] for m in
                                            map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())]
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert set(saved["accuracy"]) == {"1-8", "9-16"} and saved["config"]["pe"] == "ape"
    # greedy decoding through the KV cache agrees with teacher-forced exact match (contiguous supervision)
    assert saved["accuracy_greedy"] == saved["accuracy"]


def test_abacus_runs_train_and_decode_with_symbol_run_positions():
    from tinyformer.lab.train import train_run

    result = train_run(tiny_config(task="NF", pe="abacus", train_lengths="1-6", eval_bins=["1-6", "7-12"]),
                       log=lambda s: None)
    assert result["accuracy_greedy"] == result["accuracy"]


def test_training_stops_once_the_training_bin_is_solved():
    from tinyformer.lab.train import train_run

    # stop_accuracy 0 is reached at the first evaluation
    result = train_run(tiny_config(steps=30, stop_accuracy=0.0, greedy=False), log=lambda s: None)
    assert result["steps"] == 3 and result["stopped_early"]


def fake_train(calls: list):
    """A stand-in for training: accuracy is a deterministic function of the config, runs are recorded."""

    def train(cfg: LengenConfig, run_dir: Path) -> dict:
        calls.append((cfg.layers, cfg.lr, cfg.seed))
        score = cfg.layers / 10 + (0.05 if cfg.lr == 1e-3 else 0.0) + cfg.seed / 100
        return {"steps": 10, "stopped_early": False, "train_seconds": 0.1,
                "accuracy": {"1-50": 1.0, "51-100": score, "101-150": score / 2}}

    return train


def test_sweep_resumes_where_it_stopped_and_best_reruns_seeds(tmp_path: Path):
    grid = {"layers": [2, 4], "lr": [1e-3, 1e-4]}
    calls: list = []
    base = {"task": "UR", "pe": "rope", "steps": 10}
    sweep(base, {"layers": [2], "lr": [1e-3, 1e-4]}, tmp_path, train=fake_train(calls), log=lambda s: None)
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
    assert json.loads((tmp_path / "UR" / "best-rope.json").read_text())["config"]["layers"] == 4


def test_config_key_ignores_logging_but_not_settings():
    assert config_key(tiny_config()) == config_key(tiny_config(device="cuda", log_every=50))
    assert config_key(tiny_config()) != config_key(tiny_config(lr=2e-3))


def test_grid_typos_are_caught_before_any_run(tmp_path: Path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("layers: [2, 4]\nd_modle: [64]\n")
    with pytest.raises(TinyformerError, match=r"grid\.yaml.*unknown config key 'd_modle'.*'d_model'"):
        load_grid(grid)
    grid.write_text("layers: [2, four]\n")
    with pytest.raises(TinyformerError, match="expected an integer"):
        load_grid(grid)
    grid.write_text("lr: [1e-3, 1e-4]\neval_bins: [1-8, 9-16]\n")  # a list-valued setting: one value
    parsed = load_grid(grid)
    assert parsed["eval_bins"] == [["1-8", "9-16"]] and len(parsed["lr"]) == 2
    default = load_grid(None)
    assert default["layers"] == [2, 4] and default["d_model"] == [64, 128, 256] and default["steps"] == [30000]


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
    sweep({"task": "UL", "pe": "ape"}, {"layers": [2, 4]}, tmp_path, train=fake_train(calls), log=lambda s: None)
    proc = cli("lengen", "report", "--results", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| UL | ape | 1 | 1.000 | 0.450 | 0.225 | 1.000 | 0.996 |" in proc.stdout
    assert (tmp_path / "report.csv").exists() and (tmp_path / "heatmap.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--task", "UX", "--pe", "rope"], "unknown task 'UX'; valid tasks: UF, UB, NF, NB, UL, UR, NLFirst"),
        (["train", "--task", "UR", "--pe", "rotary"], "unknown position scheme 'rotary'.*valid schemes: ape, learned"),
        (["train", "--task", "UF", "--pe", "ape", "--max-positions", "120"],
         "bin 101-150 of task UF needs 302 learned positions but max_positions=120"),
        (["train", "--task", "UL", "--pe", "rope", "--eval-bins", "1-3"], "task UL cannot build examples"),
        (["train", "--task", "UL", "--pe", "rope", "--layers", "two"], "layers: expected an integer"),
        (["sweep", "--task", "UR", "--pe", "rope", "--grid", "GRID"], "unknown config key 'hedas'.*'heads'"),
        (["sweep", "--task", "UR", "--pe", "rope", "--grid", "MISSING"], "does not exist"),
        (["best", "--task", "UR", "--pe", "rope", "--results", "RES"], "no sweep results"),
        (["report", "--results", "RES"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_error_and_leaves_nothing(tmp_path: Path, capsys, args, message):
    # in-process through the CLI's main() (the same path as the executable, without a subprocess per case)
    from tinyformer.cli import main

    grid = tmp_path / "grid.yaml"
    grid.write_text("hedas: [4, 8]\n")
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
        "NLFirst, NRFirst, NLLast, NRLast, sort, parity, majority"
    )
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_demo_prints_the_table_and_says_where_the_heatmap_went(cli, tmp_path: Path):
    from tinyformer.demo import DEMO_SCHEMES, DEMO_TASKS

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


def test_the_generic_trainer_trains_on_a_task_stream_and_resumes_exactly(tmp_path: Path):
    # the task stream is a batch source like any other: the project's Trainer consumes it, checkpoints its
    # state and, stopped halfway and resumed, continues with exactly the batches of an uninterrupted run
    from tinyformer.lab.train import LengenSetup
    from tinyformer.model import Transformer
    from tinyformer.train.config import TrainConfig
    from tinyformer.train.trainer import Trainer, setup_runtime

    setup = LengenSetup(tiny_config(pe="ape"))

    def run(run_dir: Path, stop_at: int | None = None) -> list[float]:
        cfg = TrainConfig(max_steps=6, stop_at_step=stop_at, batch_size=8, warmup=2, eval_every=0, log_every=1,
                          ckpt_every=3, device="cpu", progress=False, peak_flops=1e9, sample_tokens=0)
        run_dir.mkdir(exist_ok=True)
        torch.manual_seed(0)
        trainer = Trainer(Transformer(setup.model_config()), cfg, run_dir, setup.stream(), setup_runtime(cfg),
                          seq_len=setup.table_size)
        trainer.fit()
        records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        return [r["train_loss"] for r in records if r.get("kind") == "train"]

    straight = run(tmp_path / "straight")
    assert len(straight) == 6
    run(tmp_path / "resumed", stop_at=3)
    assert run(tmp_path / "resumed") == straight
