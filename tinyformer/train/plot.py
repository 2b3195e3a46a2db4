"""Curves of one or more runs (read from RUN/metrics.jsonl) on one PNG figure: loss for every run,
perplexity for language-model runs, exact-match accuracy per length bin for task runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from tinyformer.errors import TinyformerError
from tinyformer.train.metrics import read_metrics


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Panels against steps: train loss (thin) and validation loss (markers); validation perplexity when a
    run has it; accuracy per length bin when a run is a task run. One colour per run, one line style per
    bin. The PNG is written atomically; a run with nothing to draw is a one-line error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinyformer.fileio import atomic_write

    runs = []
    for run in run_dirs:
        if not Path(run).is_dir():
            raise TinyformerError(f"run {run} does not exist; pass run directories (with metrics.jsonl)")
        records = read_metrics(run)
        train = [r for r in records if r.get("kind") == "train" and r.get("train_loss") is not None]
        evals = [r for r in records if r.get("kind") == "eval"]
        if not train and not evals:
            raise TinyformerError(f"run {run} has no metrics.jsonl records yet; nothing to plot")
        runs.append((Path(run).name, train, evals))
    has_ppl = any(r.get("val_ppl") is not None for _, _, ev in runs for r in ev)
    has_acc = any(r.get("accuracy") for _, _, ev in runs for r in ev)
    panels = ["loss"] + (["ppl"] if has_ppl else []) + (["acc"] if has_acc else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    ax = dict(zip(panels, axes[0]))
    styles = ["-", "--", ":", "-."]
    for i, (name, train, evals) in enumerate(runs):
        color = f"C{i % 10}"
        if train:
            ax["loss"].plot([r["step"] for r in train], [r["train_loss"] for r in train], color=color, lw=1,
                            alpha=0.7, label=f"{name} train")
        val = [r for r in evals if r.get("val_loss") is not None]
        if val:
            xs = [r["step"] for r in val]
            ax["loss"].plot(xs, [r["val_loss"] for r in val], "o-", color=color, ms=3, label=f"{name} val")
            ax["ppl"].plot(xs, [r["val_ppl"] for r in val], "o-", color=color, ms=3, label=f"{name} val")
        acc = [r for r in evals if r.get("accuracy")]
        for j, b in enumerate(acc[0]["accuracy"] if acc else []):
            ax["acc"].plot([r["step"] for r in acc], [r["accuracy"].get(b, math.nan) for r in acc],
                           styles[j % len(styles)], marker="o", color=color, ms=3, label=f"{name} len {b}")
    titles = {"loss": "loss (nats/token)", "ppl": "validation perplexity", "acc": "exact-match accuracy per length bin"}
    for key, a in ax.items():
        a.set_xlabel("step")
        a.set_title(titles[key])
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    if has_ppl:
        ax["ppl"].set_yscale("log")
    if has_acc:
        ax["acc"].set_ylim(-0.02, 1.02)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
