"""`tinyformer plot`: every run its own colour, line style and marker; steps or tokens; the lr panel; errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyformer.train.plot import draw_runs, run_style


def fake_run(path: Path, shift: float = 0.0) -> Path:
    """A run directory with a metrics.jsonl of train and eval records (what the trainer writes)."""
    path.mkdir(parents=True)
    records = [{"kind": "train", "step": s, "tokens": 64 * s, "lr": 1e-3 * min(1, s / 4), "train_loss": 3 - 0.1 * s + shift}
               for s in range(1, 11)]
    records += [{"kind": "eval", "step": s, "tokens": 64 * s, "val_loss": 3 - 0.1 * s, "val_ppl": 20 - s}
                for s in (5, 10)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_every_run_differs_in_colour_line_style_and_marker(tmp_path):
    # identical curves (the RoPE-under-ALiBi case): each must still be told apart
    runs = [fake_run(tmp_path / name) for name in ("ape", "rope", "alibi", "nope")]
    fig = draw_runs(runs)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["ape", "rope", "alibi", "nope"]
    for key in ("get_color", "get_linestyle", "get_marker"):
        values = [getattr(line, key)() for line in lines]
        assert len(set(values)) == len(values), (key, values)
    # the one drawn first is wider, so one drawn on top of it leaves it visible
    assert lines[0].get_linewidth() > lines[1].get_linewidth()
    assert len({tuple(sorted(run_style(i).items())) for i in range(40)}) == 40


def test_x_axis_in_tokens_and_the_learning_rate_panel(tmp_path):
    runs = [fake_run(tmp_path / "a"), fake_run(tmp_path / "b", shift=0.5)]
    fig = draw_runs(runs, x="tokens", lr=True)
    titles = {a.get_title(): a for a in fig.axes if a.get_visible()}
    assert set(titles) == {"training loss (nats/token)", "validation loss (nats/token)", "validation perplexity",
                           "learning rate"}
    assert titles["training loss (nats/token)"].get_xlabel() == "tokens seen"
    assert titles["training loss (nats/token)"].get_lines()[0].get_xdata().tolist() == [64 * s for s in range(1, 11)]
    assert titles["learning rate"].get_lines()[1].get_ydata().tolist()[:4] == [2.5e-4, 5e-4, 7.5e-4, 1e-3]


def test_cli_plot_writes_a_png_and_refuses_nothing_to_draw(main_cli, tmp_path):
    run = fake_run(tmp_path / "a")
    proc = main_cli("plot", run, "--x", "tokens", "--lr", "--out", tmp_path / "c.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "empty").mkdir()
    proc = main_cli("plot", run, tmp_path / "empty", "--out", tmp_path / "none.png")
    assert proc.returncode == 2 and "nothing to plot" in proc.stderr and not (tmp_path / "none.png").exists()
    proc = main_cli("plot", run, "--x", "time")
    assert proc.returncode == 2 and "--x" in proc.stderr


@pytest.mark.parametrize("x", ["steps", "tokens"])
def test_two_runs_of_the_same_name_are_labelled_by_their_parent(tmp_path, x):
    runs = [fake_run(tmp_path / "rope" / "seed-0"), fake_run(tmp_path / "alibi" / "seed-0")]
    labels = [line.get_label() for line in draw_runs(runs, x=x).axes[0].get_lines()]
    assert labels == ["rope/seed-0", "alibi/seed-0"]
