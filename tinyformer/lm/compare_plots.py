"""The three figures of `tinyformer compare`: training loss against steps (a band over seeds), validation
loss and perplexity per variant (every seed and the mean), perplexity against evaluation context length
(learned positions stop where their table ends, marked on the figure). Styles as `tinyformer plot`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tinyformer.fileio import atomic_write
from tinyformer.train.metrics import read_metrics
from tinyformer.train.plot import run_style


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Labels, grid and legend of a one-panel figure, then save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def _figure(width: float, height: float, cols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, cols, figsize=(width, height), squeeze=False)


def _seed_note(n: int) -> str:
    return f"{n} seed{'s' * (n != 1)}" + (", band: min-max" if n > 1 else "")


def training_loss(members, variants: list[dict[str, Any]], path: Path) -> Path:
    """Training loss against steps: per variant the mean over seeds, a band from the lowest to the highest."""
    fig, axes = _figure(7.5, 4.8)
    ax = axes[0][0]
    for i, v in enumerate(variants):
        curves = []
        for m in (m for m in members if m.variant.label == v["variant"]):
            records = [r for r in read_metrics(m.run_dir) if r.get("kind") == "train" and r.get("train_loss") is not None]
            curves.append({r["step"]: r["train_loss"] for r in records})
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if not steps:
            continue
        values = [[c[s] for c in curves] for s in steps]
        mean = [sum(v_) / len(v_) for v_ in values]
        style = run_style(i)
        ax.plot(steps, mean, markevery=max(1, len(steps) // 8),
                label=f"{v['variant']} ({_seed_note(len(curves))})", **style)
        if len(curves) > 1:
            ax.fill_between(steps, [min(v_) for v_ in values], [max(v_) for v_ in values], color=style["color"],
                            alpha=0.18, lw=0)
    return _finish(fig, ax, "step", "training loss (nats/token)", "training loss", path)


def validation(variants: list[dict[str, Any]], trained: int, path: Path) -> Path:
    """Validation loss and perplexity at the training context: each seed a hollow marker, the mean a wide
    line in the variant's colour with its value written beside it, whiskers from the lowest to the highest."""
    fig, axes = _figure(max(7.5, 2.2 * len(variants) + 3), 4.6, cols=2)
    for ax, key, title in ((axes[0][0], "loss", "validation loss (nats/token)"),
                           (axes[0][1], "perplexity", "validation perplexity")):
        for i, v in enumerate(variants):
            style = run_style(i)
            first = v["by_seq_len"][0]
            s = first[key]
            if s["mean"] is None:
                continue
            seeds = [x for x in first["per_seed"][key] if x is not None]
            ax.hlines(s["mean"], i - 0.3, i + 0.3, color=style["color"], lw=3)
            if s["n"] > 1:
                ax.vlines(i, s["min"], s["max"], color=style["color"], lw=1)
            ax.plot([i] * len(seeds), seeds, linestyle="none", marker=style["marker"], color=style["color"],
                    mfc="white", ms=8, mew=1.5)
            ax.annotate(f"{s['mean']:.3f}", (i + 0.3, s["mean"]), textcoords="offset points", xytext=(4, 0),
                        va="center", fontsize=9)
        lows = [v["by_seq_len"][0][key]["min"] for v in variants if v["by_seq_len"][0][key]["min"] is not None]
        highs = [v["by_seq_len"][0][key]["max"] for v in variants if v["by_seq_len"][0][key]["max"] is not None]
        if lows:
            pad = 0.15 * (max(highs) - min(lows)) or 0.05 * max(highs)
            ax.set_ylim(min(lows) - pad, max(highs) + pad)
        ax.set_xlim(-0.6, len(variants) - 0.1)
        ax.set_xticks(range(len(variants)), [v["variant"] for v in variants])
        ax.set_title(f"{title} at {trained} tokens")
        ax.grid(alpha=0.3, axis="y")
    n = max(len(v["seeds"]) for v in variants)
    fig.suptitle(f"validation per variant, best checkpoint of each run ({n} seed{'s' * (n != 1)}: markers; "
                 "wide line: mean" + ("; whisker: min-max" if n > 1 else "") + ")", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def context_length(variants: list[dict[str, Any]], trained: int, path: Path) -> Path:
    """Perplexity against evaluation context length; a variant that cannot go further (learned positions)
    ends in an x with the reason written beside it."""
    fig, axes = _figure(8, 5)
    ax = axes[0][0]
    lengths = [b["seq_len"] for b in variants[0]["by_seq_len"]]
    top = 0.0
    low = math.inf
    for i, v in enumerate(variants):
        style = run_style(i)
        done = [b for b in v["by_seq_len"] if b["perplexity"]["mean"] is not None]
        xs = [b["seq_len"] for b in done]
        n = len(v["seeds"])
        ax.plot(xs, [b["perplexity"]["mean"] for b in done], label=f"{v['variant']} ({_seed_note(n)})", **style)
        if n > 1 and done:
            ax.fill_between(xs, [b["perplexity"]["min"] for b in done], [b["perplexity"]["max"] for b in done],
                            color=style["color"], alpha=0.18, lw=0)
        top = max([top] + [b["perplexity"]["max"] for b in done])
        low = min([low] + [b["perplexity"]["min"] for b in done])
        stop = next((b for b in v["by_seq_len"] if b["perplexity"]["mean"] is None), None)
        if stop is not None and done:
            last = done[-1]
            ax.plot([last["seq_len"]], [last["perplexity"]["mean"]], marker="x", ms=14, mew=2.5, color=style["color"],
                    linestyle="none")
            ax.annotate(f"{v['variant']}: {stop['stopped']};\nnot evaluated at {stop['seq_len']}+ tokens",
                        (last["seq_len"], last["perplexity"]["mean"]), textcoords="offset points", xytext=(12, -4),
                        fontsize=8, color=style["color"], va="top")
    ax.axvline(trained, color="grey", lw=1, linestyle=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{n}\n({n // trained}x)" for n in lengths])
    ax.minorticks_off()
    if low > 0 and top > 10 * low:
        ax.set_yscale("log")
    return _finish(fig, ax, f"evaluation context (tokens; training context {trained}, dotted)",
                   "validation perplexity", "perplexity against evaluation context length", path)


def draw_all(members, variants: list[dict[str, Any]], trained: int, out: Path) -> dict[str, Path]:
    """The three figures into OUT/: training-loss.png, validation.png, context-length.png."""
    return {"training_loss": training_loss(members, variants, out / "training-loss.png"),
            "validation": validation(variants, trained, out / "validation.png"),
            "context_length": context_length(variants, trained, out / "context-length.png")}
