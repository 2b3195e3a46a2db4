"""Our extra position columns end to end: `lengen reproduce --schemes fire,coupled-relative` beside the published
ones in a results directory of ape runs, and `lengen sweep|best|report` under --pe coupled-relative, --pe fire
and task.random_positions=true, on tiny runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from tinyformer.lab.sweep import read_rows
from tinyformer.train import config as train_config

# the tiny runs of tests/unit/lab/test_reproduce.py, as key=value overrides
TINY = ["model.n_layers=1", "model.d_model=16", "model.n_heads=2", "model.d_ff=64", "train.max_steps=6",
        "train.eval_every=3", "eval.examples=12", "train.threads=1", "train.peak_flops=1e12"]
# lab runs of a few seconds (as tiny_task_run's)
SMALL = ["model.n_layers=1", "model.n_heads=2", "model.d_model=16", "train.max_steps=6", "train.eval_every=3",
         "eval.examples=24", "task.train_lengths=1-8", "eval.bins=[1-8,9-16]", "train.batch_size=8",
         "train.warmup=2", "train.device=cpu", "train.progress=false", "train.threads=1", "train.peak_flops=1e12"]


def test_reproduce_adds_extra_columns_to_a_directory_of_published_runs(cli, tmp_path, one_line_error, monkeypatch):
    results = tmp_path / "res"
    base = ["lengen", "reproduce", "--results", results, "--workers", "0", "--seeds", "0"]
    cli(*base, "--rows", "UF", "--schemes", "ape", *TINY, check=True)
    assert "extra_preset_sha256" not in json.loads((results / "protocol.json").read_text())
    proc = cli(*base, "--rows", "UF,UL", "--schemes", "fire,coupled-relative", *TINY, check=True)
    assert "skipped: UL / coupled-relative (task UL has no position coupling rule)" in proc.stdout
    assert "extra_preset_sha256" in json.loads((results / "protocol.json").read_text())
    md = (results / "report.md").read_text()
    for text in (proc.stdout, md):
        for row, col in (("UF", "fire"), ("UF", "coupled-relative"), ("UL", "fire")):
            # ours only: no published figure for our columns
            assert re.search(rf"\| {row} \| {col} \| 11-20 \(~51-100\) \| [01]\.\d{{3}} \(n=1\) \| .* \| - \|", text)
        assert "| UL | coupled-relative | - | n/a | n/a | n/a | - |" in text
        assert text.count("coupled-relative: n/a (skipped, not run) on UL, whose task has no position coupling "
                          "rule.") == 1
        assert "Columns fire, coupled-relative are ours (presets/published_extra.yaml)" in text
    for col in ("fire", "coupled-relative"):
        summary = json.loads((results / "runs" / "UF" / col / "seed-0" / "summary.json").read_text())
        assert summary["step"] == 6
        saved = yaml.safe_load((results / "runs" / "UF" / col / "seed-0" / "config.yaml").read_text())
        assert saved["model"]["position"] == col
    assert not (results / "runs" / "UL" / "coupled-relative").exists()
    csv = (results / "report.csv").read_text()
    assert "UL,coupled-relative,,,n/a," in csv and "\nUF,fire,11-20,51-100," in csv
    # the extra preset edited afterwards: extra columns refused in one line, nothing run
    presets = tmp_path / "presets"
    shutil.copytree(train_config.PRESET_DIR, presets)
    extra = presets / "published_extra.yaml"
    extra.write_text(extra.read_text().replace("model.position: fire", "model.position: nope"))
    monkeypatch.setattr(train_config, "PRESET_DIR", presets)
    one_line_error(cli(*base, "--rows", "UR", "--schemes", "fire", *TINY),
                   "holds extra columns made with another presets/published_extra.yaml")
    assert not (results / "runs" / "UR").exists()


def test_sweep_best_and_report_under_coupled_relative_positions(cli, tmp_path):
    results = tmp_path / "res"
    grid = tmp_path / "grid.yaml"
    grid.write_text("train.lr: [1.0e-3, 1.0e-2]\n")
    cli("lengen", "sweep", "--task", "UF", "--pe", "coupled-relative", "--grid", grid, "--results", results,
        "--workers", "0", *SMALL, check=True)
    rows = read_rows(results / "UF" / "summary-coupled-relative.jsonl")
    assert len(rows) == 2 and {r["pe"] for r in rows} == {"coupled-relative"}
    proc = cli("lengen", "best", "--task", "UF", "--pe", "coupled-relative", "--seeds", "0,1", "--results", results,
               "--workers", "0", check=True)
    best = json.loads((results / "UF" / "best-coupled-relative.json").read_text())
    chosen = next(r for r in rows if r["lr"] == best["settings"]["train.lr"])
    assert chosen["accuracy"]["9-16"] == max(r["accuracy"]["9-16"] for r in rows)  # the best by the bin beyond
    assert best["by"] == "9-16" and best["seeds"] == [0, 1]
    assert best["per_seed"]["0"] == chosen["accuracy"]  # seed 0 is the sweep's own run, read back
    assert "best config by bin 9-16 over seeds 0, 1" in proc.stdout
    report = cli("lengen", "report", "--results", results, check=True)
    line = next(s for s in report.stdout.splitlines() if s.startswith("| UF |"))
    assert line.startswith("| UF | coupled-relative | 2 |")
    mean = sum(best["per_seed"][s]["9-16"] for s in ("0", "1")) / 2
    assert f"{mean:.3f} ± " in line


def test_sweep_best_and_report_under_fire_with_randomized_positions(cli, tmp_path):
    results = tmp_path / "res"
    grid = tmp_path / "grid.yaml"
    grid.write_text("train.lr: [1.0e-3, 1.0e-2]\n")
    for random in ("false", "true"):
        cli("lengen", "sweep", "--task", "UL", "--pe", "fire", "--grid", grid, "--results", results, "--workers", "0",
            *SMALL, f"task.random_positions={random}", check=True)
    rows = read_rows(results / "UL" / "summary-fire.jsonl")
    # four distinct runs: randomized positions are part of what a run is, so the second sweep is not read back
    assert len(rows) == 4 and len({r["run_dir"] for r in rows}) == 4
    assert [r["settings"].get("task.random_positions") for r in rows] == [False, False, True, True]
    saved = yaml.safe_load((Path(rows[3]["run_dir"]) / "config.yaml").read_text())
    assert saved["task"]["random_positions"] is True and saved["model"]["position"] == "fire"
    top = max(r["accuracy"]["9-16"] for r in rows)
    tops = [r for r in rows if r["accuracy"]["9-16"] == top]
    assert len(tops) < len(rows) and len({r["lr"] for r in tops}) == 1  # the lr decides the best run
    cli("lengen", "best", "--task", "UL", "--pe", "fire", "--seeds", "0", "--results", results, "--workers", "0",
        check=True)
    best = json.loads((results / "UL" / "best-fire.json").read_text())
    assert best["settings"]["train.lr"] == tops[0]["lr"]  # a run with the highest accuracy beyond training
    assert best["per_seed"]["0"] in [r["accuracy"] for r in tops]
    proc = cli("lengen", "report", "--results", results, check=True)
    line = next(s for s in proc.stdout.splitlines() if s.startswith("| UL |"))
    assert line.startswith("| UL | fire | 1 |") and f"| {top:.3f}" in line
