"""Curves of one or more runs (read from RUN/metrics.jsonl) on one PNG figure: training loss, validation
loss and perplexity (language-model runs), exact-match accuracy per length bin (task runs, one panel per
bin), and optionally the learning rate; against steps or tokens. Each run has its own colour, line style
and marker, so runs that overlap stay visible."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyformer.errors import TinyformerError
from tinyformer.train.metrics import read_metrics

COLORS = [f"C{i}" for i in range(10)]
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
X_LABELS = {"steps": "step", "tokens": "tokens seen"}


def run_style(i: int) -> dict[str, Any]:
    """Matplotlib keywords of the i-th run: colour, line style and marker all differ between neighbours
    (10 colours x 4 styles x 8 markers before a combination repeats). Earlier runs are drawn wider with
    larger hollow markers, so a run drawn exactly on top of another still shows the one beneath."""
    k = i % len(LINESTYLES)
    return {"color": COLORS[i % len(COLORS)], "linestyle": LINESTYLES[k], "marker": MARKERS[i % len(MARKERS)],
            "lw": 2.6 - 0.5 * k, "ms": 9 - 1.6 * k, "mfc": "none", "mew": 1.3}


def _x(record: dict[str, Any], x: str) -> float:
    return record["step"] if x == "steps" else record.get("tokens", math.nan)


def _markevery(n: int) -> int:
    return max(1, n // 8)  # about eight markers per line: enough to tell runs apart, not a smear


def draw_runs(run_dirs: Sequence[str | Path], x: str = "steps", lr: bool = False, names: Sequence[str] | None = None):
    """The matplotlib Figure of `run_dirs` (see the module docstring); a run with nothing to draw, or an
    unknown `x`, is a one-line error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in X_LABELS:
        raise TinyformerError(f"--x must be steps or tokens, got {x!r}")
    runs = []
    for i, run in enumerate(run_dirs):
        if not Path(run).is_dir():
            raise TinyformerError(f"run {run} does not exist; pass run directories (with metrics.jsonl)")
        records = read_metrics(run)
        train = [r for r in records if r.get("kind") == "train" and r.get("train_loss") is not None]
        evals = [r for r in records if r.get("kind") == "eval"]
        if not train and not evals:
            raise TinyformerError(f"run {run} has no metrics.jsonl records yet; nothing to plot")
        if x == "tokens" and any("tokens" not in r for r in train + evals):
            raise TinyformerError(f"run {run} does not record tokens; plot it with --x steps")
        runs.append((names[i] if names else _label(run, run_dirs), train, evals))
    panels = ["train"]
    if any(r.get("val_loss") is not None for _, _, ev in runs for r in ev):
        panels += ["val", "ppl"]
    bins = list(dict.fromkeys(b for _, _, ev in runs for r in ev for b in (r.get("accuracy") or {})))
    panels += [f"acc:{b}" for b in bins]
    if lr:
        panels.append("lr")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    legend_rows = math.ceil(len(runs) / 4)
    legend_h = 0.25 + 0.25 * legend_rows  # inches under the panels for the legend
    height = 3.6 * rows + legend_h
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, height), squeeze=False)
    ax = dict(zip(panels, axes.flat))
    for extra in list(axes.flat)[len(panels):]:
        extra.set_visible(False)
    for i, (name, train, evals) in enumerate(runs):
        style = run_style(i)
        if train:
            ax["train"].plot([_x(r, x) for r in train], [r["train_loss"] for r in train],
                             markevery=_markevery(len(train)), label=name, **style)
            if lr:
                ax["lr"].plot([_x(r, x) for r in train], [r.get("lr", math.nan) for r in train],
                              markevery=_markevery(len(train)), label=name, **style)
        val = [r for r in evals if r.get("val_loss") is not None]
        if val:
            xs = [_x(r, x) for r in val]
            ax["val"].plot(xs, [r["val_loss"] for r in val], label=name, **style)
            ax["ppl"].plot(xs, [r["val_ppl"] for r in val], label=name, **style)
        acc = [r for r in evals if r.get("accuracy")]
        for b in bins:
            points = [(_x(r, x), r["accuracy"][b]) for r in acc if b in r["accuracy"]]
            if points:
                ax[f"acc:{b}"].plot(*zip(*points), label=name, **style)
    titles = {"train": "training loss (nats/token)", "val": "validation loss (nats/token)",
              "ppl": "validation perplexity", "lr": "learning rate"}
    for key, a in ax.items():
        a.set_xlabel(X_LABELS[x])
        a.set_title(titles.get(key) or f"exact-match accuracy, length bin {key[4:]}", fontsize=10)
        a.grid(alpha=0.3)
        a.ticklabel_format(axis="y", useOffset=False)  # "+1.805" above the axis reads as a value: whole numbers
        if key.startswith("acc:"):
            a.set_ylim(-0.03, 1.03)
    ppl = [line.get_ydata() for line in ax["ppl"].get_lines()] if "ppl" in ax else []
    if ppl and max(map(max, ppl)) > 10 * min(map(min, ppl)):  # log only where it spans orders of magnitude
        ax["ppl"].set_yscale("log")
    handles, labels = ax["train"].get_legend_handles_labels()
    if not handles:  # a task run that logged only evaluations: take the legend from any panel with lines
        handles, labels = next((a.get_legend_handles_labels() for a in ax.values() if a.get_lines()), ([], []))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4) or 1, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    return fig


def _label(run: str | Path, all_runs: Sequence[str | Path]) -> str:
    """A run's name in the legend: its directory name, with the parent's when two runs share a name
    (compare/rope/seed-0 and compare/alibi/seed-0)."""
    path = Path(run)
    clash = sum(Path(r).name == path.name for r in all_runs) > 1
    return f"{path.parent.name}/{path.name}" if clash else path.name


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, x: str = "steps", lr: bool = False) -> Path:
    """Draw `run_dirs` (see `draw_runs`) into the PNG `out`, written atomically."""
    import matplotlib.pyplot as plt

    from tinyformer.fileio import atomic_write

    fig = draw_runs(run_dirs, x, lr)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
