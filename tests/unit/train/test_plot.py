"""`tinyformer plot`: every run its own colour, line style and marker; steps or tokens; the lr panel; errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyformer.train.plot import draw_runs, run_style


def fake_run(path: Path, shift: float = 0.0, steps: int = 10, tokens_per_step: int = 64, evals: int = 2) -> Path:
    """A run directory with a metrics.jsonl of train and eval records (what the trainer writes)."""
    path.mkdir(parents=True)
    records = [{"kind": "train", "step": s, "tokens": tokens_per_step * s, "lr": 1e-3 * min(1, s / 4),
                "train_loss": 3 - 0.1 * s / (steps / 10) + shift} for s in range(1, steps + 1)]
    records += [{"kind": "eval", "step": s, "tokens": tokens_per_step * s, "val_loss": 3 - 0.1 * s / (steps / 10),
                 "val_ppl": 20 - s / (steps / 10)} for s in range(steps // evals, steps + 1, steps // evals)]
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


def test_cli_plot_writes_a_png_and_refuses_nothing_to_draw(cli, tmp_path):
    run = fake_run(tmp_path / "a")
    proc = cli("plot", run, "--x", "tokens", "--lr", "--out", tmp_path / "c.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "empty").mkdir()
    proc = cli("plot", run, tmp_path / "empty", "--out", tmp_path / "none.png")
    assert proc.returncode == 2 and "nothing to plot" in proc.stderr and not (tmp_path / "none.png").exists()
    proc = cli("plot", run, "--x", "wallclock")
    assert proc.returncode == 2 and "--x" in proc.stderr
    proc = cli("plot", run, "--x", "time", "--out", tmp_path / "t.png")  # written before runs had elapsed_s
    assert proc.returncode == 2 and "does not record its training time" in proc.stderr
    assert not (tmp_path / "t.png").exists()


@pytest.mark.parametrize("x", ["steps", "tokens"])
def test_two_runs_of_the_same_name_are_labelled_by_their_parent(tmp_path, x):
    runs = [fake_run(tmp_path / "rope" / "seed-0"), fake_run(tmp_path / "alibi" / "seed-0")]
    labels = [line.get_label() for line in draw_runs(runs, x=x).axes[0].get_lines()]
    assert labels == ["rope/seed-0", "alibi/seed-0"]


def _shown_x_tick_labels(fig) -> list:
    """(axes, text, bounding box on the canvas) of every x tick label drawn inside its axes' range."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    shown = []
    for a in fig.axes:
        lo, hi = sorted(a.get_xlim())
        for tick in a.xaxis.get_major_ticks():
            if lo <= tick.get_loc() <= hi and tick.label1.get_visible() and tick.label1.get_text():
                shown.append((a, tick.label1.get_text(), tick.label1.get_window_extent(renderer)))
    return shown


@pytest.mark.parametrize("steps, tokens_per_step", [(200, 2048), (3000, 128), (600, 1536)])
def test_token_axis_labels_do_not_run_into_each_other(tmp_path, steps, tokens_per_step):
    # 409,600 tokens drew "50000100000150000..." in the validation panels: six-digit labels, a tick per 50k
    runs = [fake_run(tmp_path / n, shift=i / 3, steps=steps, tokens_per_step=tokens_per_step, evals=10)
            for i, n in enumerate("ab")]
    fig = draw_runs(runs, x="tokens", lr=True)
    labels = _shown_x_tick_labels(fig)
    assert {a.get_title() for a, _, _ in labels} == {a.get_title() for a in fig.axes}  # every panel has labels
    for i, (a, text, box) in enumerate(labels):
        for b, other, other_box in labels[i + 1 :]:
            assert not box.overlaps(other_box), (a.get_title(), text, b.get_title(), other)
    assert all(len(text) <= 5 for _, text, _ in labels)  # 250k, 1.5M: short labels


@pytest.mark.parametrize("lr, n_panels, shape", [(False, 3, (1, 3)), (True, 4, (2, 2))])
def test_panels_fill_a_grid_of_their_own_size(tmp_path, lr, n_panels, shape):
    fig = draw_runs([fake_run(tmp_path / "a")], x="tokens", lr=lr)
    assert len(fig.axes) == n_panels and all(a.get_visible() and a.get_lines() for a in fig.axes)
    lefts = {round(a.get_position().x0, 3) for a in fig.axes}
    bottoms = {round(a.get_position().y0, 3) for a in fig.axes}
    assert (len(bottoms), len(lefts)) == shape


def test_a_short_last_row_is_centred_and_holds_no_empty_axes(tmp_path):
    run = tmp_path / "task"
    run.mkdir()
    records = [{"kind": "train", "step": s, "tokens": 10 * s, "train_loss": 1 / s, "lr": 1e-3} for s in (1, 2, 3)]
    records += [{"kind": "eval", "step": 3, "tokens": 30, "accuracy": {"1-4": 0.5, "5-8": 0.2, "9-12": 0.1}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = draw_runs([run], lr=True)  # training loss, three bins, learning rate: 5 panels
    assert len(fig.axes) == 5 and all(a.get_lines() for a in fig.axes)
    top, bottom = fig.axes[:3], fig.axes[3:]
    centre = (top[0].get_position().x0 + top[-1].get_position().x1) / 2
    assert (bottom[0].get_position().x0 + bottom[-1].get_position().x1) / 2 == pytest.approx(centre, abs=0.02)
