"""Loss and perplexity curves of one or more runs (read from RUN/metrics.jsonl) on one PNG figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from tinyformer.errors import TinyformerError
from tinyformer.train.metrics import read_metrics


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Two panels against tokens seen: train (thin) and validation (markers) loss; validation perplexity.
    One colour per run. The PNG is written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinyformer.fileio import atomic_write

    fig, (ax_loss, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4))
    drew = False
    for i, run in enumerate(run_dirs):
        records = read_metrics(run)
        if not records:
            if not Path(run).is_dir():
                raise TinyformerError(f"run {run} does not exist; pass run directories (with metrics.jsonl)")
            raise TinyformerError(f"run {run} has no metrics.jsonl records yet; nothing to plot")
        color = f"C{i % 10}"
        name = Path(run).name
        train = [r for r in records if r.get("kind") == "train" and r.get("train_loss") is not None]
        val = [r for r in records if r.get("kind") == "eval" and r.get("val_loss") is not None]
        if train:
            xs = [r["tokens"] for r in train]
            ax_loss.plot(xs, [r["train_loss"] for r in train], color=color, lw=1, alpha=0.6, label=f"{name} train")
            ax_ppl.plot(xs, [math.exp(min(r["train_loss"], 50)) for r in train], color=color, lw=1, alpha=0.4,
                        label=f"{name} train")
        if val:
            xs = [r["tokens"] for r in val]
            ax_loss.plot(xs, [r["val_loss"] for r in val], "o-", color=color, ms=3, label=f"{name} val")
            ax_ppl.plot(xs, [r["val_ppl"] for r in val], "o-", color=color, ms=3, label=f"{name} val")
        drew = drew or bool(train or val)
    for ax, title in ((ax_loss, "loss (nats/token)"), (ax_ppl, "perplexity")):
        ax.set_xlabel("tokens seen")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if drew:
            ax.legend(fontsize=7)
    ax_ppl.set_yscale("log")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
