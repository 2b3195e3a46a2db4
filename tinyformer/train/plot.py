"""Curves of one or more runs (read from RUN/metrics.jsonl) on one PNG figure: training loss, validation
loss and perplexity (language-model runs), exact-match accuracy per length bin (task runs, one panel per
bin), and optionally the learning rate; against steps, tokens or training time. Each run has its own colour,
line style and marker, so runs that overlap stay visible. Panels fill as few rows as they need (the last row
centred), and the axes count in steps of 1, 2, 2.5 or 5 with engineering prefixes (200k, 1.2M)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write
from tinyformer.train.metrics import read_metrics

COLORS = [f"C{i}" for i in range(10)]
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
X_LABELS = {"steps": "step", "tokens": "tokens seen", "time": "training time"}
X_FIELDS = {"tokens": "tokens", "time": "elapsed_s"}  # the record field of each axis but steps
TIME_UNITS = [(1.0, "s"), (60.0, "min"), (3600.0, "h")]  # the largest unit in which the run lasts 2 or more
MAX_COLS = 3


def run_style(i: int) -> dict[str, Any]:
    """Matplotlib keywords of the i-th run: colour, line style and marker all differ between neighbours
    (10 colours x 4 styles x 8 markers before a combination repeats). Earlier runs are drawn wider with
    larger hollow markers, so a run drawn exactly on top of another still shows the one beneath."""
    k = i % len(LINESTYLES)
    return {"color": COLORS[i % len(COLORS)], "linestyle": LINESTYLES[k], "marker": MARKERS[i % len(MARKERS)],
            "lw": 2.6 - 0.5 * k, "ms": 9 - 1.6 * k, "mfc": "none", "mew": 1.3}


def _x(record: dict[str, Any], x: str, scale: float = 1.0) -> float:
    return record["step"] if x == "steps" else record.get(X_FIELDS[x], math.nan) / scale


def time_unit(seconds: float) -> tuple[float, str]:
    """(seconds per unit, unit name) for a time axis that runs to `seconds`: s, min or h."""
    return next((u for u in reversed(TIME_UNITS) if seconds >= 2 * u[0]), TIME_UNITS[0])


def grid_shape(n_panels: int) -> tuple[int, int]:
    """(rows, columns) for `n_panels`: at most MAX_COLS across, as few rows as that allows, and the columns
    cut down so that only the last row has empty cells (4 panels: 2 x 2, not 2 x 3 with two empty)."""
    rows = math.ceil(n_panels / MAX_COLS)
    return rows, math.ceil(n_panels / rows)


def _markevery(n: int) -> int:
    return max(1, n // 8)  # about eight markers per line: enough to tell runs apart, not a smear


def draw_runs(run_dirs: Sequence[str | Path], x: str = "steps", lr: bool = False, names: Sequence[str] | None = None):
    """The matplotlib Figure of `run_dirs` (see the module docstring); a run with nothing to draw, or an
    unknown `x`, is a one-line error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, MaxNLocator

    if x not in X_LABELS:
        raise TinyformerError(f"--x must be steps, tokens or time, got {x!r}")
    runs = []
    for i, run in enumerate(run_dirs):
        if not Path(run).is_dir():
            raise TinyformerError(f"run {run} does not exist; pass run directories (with metrics.jsonl)")
        records = read_metrics(run)
        train = [r for r in records if r.get("kind") == "train" and r.get("train_loss") is not None]
        evals = [r for r in records if r.get("kind") == "eval"]
        if not train and not evals:
            raise TinyformerError(f"run {run} has no metrics.jsonl records yet; nothing to plot")
        if x != "steps" and any(X_FIELDS[x] not in r for r in train + evals):
            what = "tokens" if x == "tokens" else "its training time (elapsed_s; older runs lack it)"
            raise TinyformerError(f"run {run} does not record {what}; plot it with --x steps")
        runs.append((names[i] if names else _label(run, run_dirs), train, evals))
    panels = ["train"]
    if any(r.get("val_loss") is not None for _, _, ev in runs for r in ev):
        panels += ["val", "ppl"]
    bins = list(dict.fromkeys(b for _, _, ev in runs for r in ev for b in (r.get("accuracy") or {})))
    panels += [f"acc:{b}" for b in bins]
    if lr:
        panels.append("lr")
    rows, cols = grid_shape(len(panels))
    legend_rows = math.ceil(len(runs) / 4)
    legend_h = 0.25 + 0.25 * legend_rows  # inches under the panels for the legend
    height = 3.6 * rows + legend_h
    fig = plt.figure(figsize=(5.2 * cols, height))
    ax = dict(zip(panels, _panel_axes(fig, len(panels), rows, cols)))
    scale, x_label = 1.0, X_LABELS[x]
    if x == "time":
        scale, unit = time_unit(max((r["elapsed_s"] for _, tr, ev in runs for r in tr + ev), default=0.0))
        x_label = f"{x_label} ({unit}, evaluation excluded)"
    for i, (name, train, evals) in enumerate(runs):
        style = run_style(i)
        if train:
            ax["train"].plot([_x(r, x, scale) for r in train], [r["train_loss"] for r in train],
                             markevery=_markevery(len(train)), label=name, **style)
            if lr:
                ax["lr"].plot([_x(r, x, scale) for r in train], [r.get("lr", math.nan) for r in train],
                              markevery=_markevery(len(train)), label=name, **style)
        val = [r for r in evals if r.get("val_loss") is not None]
        if val:
            xs = [_x(r, x, scale) for r in val]
            ax["val"].plot(xs, [r["val_loss"] for r in val], label=name, **style)
            ax["ppl"].plot(xs, [r["val_ppl"] for r in val], label=name, **style)
        acc = [r for r in evals if r.get("accuracy")]
        for b in bins:
            points = [(_x(r, x, scale), r["accuracy"][b]) for r in acc if b in r["accuracy"]]
            if points:
                ax[f"acc:{b}"].plot(*zip(*points), label=name, **style)
    titles = {"train": "training loss (nats/token)", "val": "validation loss (nats/token)",
              "ppl": "validation perplexity", "lr": "learning rate"}
    for key, a in ax.items():
        a.set_xlabel(x_label)
        a.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        if x != "time":  # counts: 250k, 1.2M (a time axis has fractions, which would read as milli-units)
            a.xaxis.set_major_formatter(EngFormatter(sep=""))
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


def _panel_axes(fig, n: int, rows: int, cols: int) -> list:
    """`n` axes in a `rows` x `cols` grid, row by row, the last row's centred (half-column steps)."""
    grid = fig.add_gridspec(rows, 2 * cols)
    axes = []
    for i in range(n):
        row, col = divmod(i, cols)
        offset = cols - (n - row * cols) if row == rows - 1 else 0  # empty half-columns left of a short row
        axes.append(fig.add_subplot(grid[row, offset + 2 * col : offset + 2 * col + 2]))
    return axes


def _label(run: str | Path, all_runs: Sequence[str | Path]) -> str:
    """A run's name in the legend: its directory name, with the parent's when two runs share a name
    (compare/rope/seed-0 and compare/alibi/seed-0)."""
    path = Path(run)
    clash = sum(Path(r).name == path.name for r in all_runs) > 1
    return f"{path.parent.name}/{path.name}" if clash else path.name


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, x: str = "steps", lr: bool = False) -> Path:
    """Draw `run_dirs` (see `draw_runs`) into the PNG `out`, written atomically."""
    import matplotlib.pyplot as plt

    fig = draw_runs(run_dirs, x, lr)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
