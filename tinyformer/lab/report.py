"""Report: a task x scheme x bin accuracy table (markdown, CSV) and a heatmap, with published numbers beside ours.

Per (task, scheme) the report takes the best-config re-run over seeds (`best-<pe>.json`, mean ± sample
standard deviation) when there is one, else the best sweep row by its first bin beyond the training
range (one run).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write
from tinyformer.lab.sweep import best_row, read_rows
from tinyformer.model.positions import LAB_NAMES, scheme

PUBLISHED_FILE = Path(__file__).resolve().parents[2] / "docs" / "published-results.yaml"


@dataclass
class Entry:
    """One table row: a task under a position scheme, accuracy per bin over `n` runs."""

    task: str
    pe: str
    mean: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    n: int = 1
    source: str = ""


def bin_key(name: str) -> tuple[int, int]:
    lo, hi = name.split("-")
    return int(lo), int(hi)


def load_published(path: str | Path | None = None) -> dict:
    """{task: {pe: {bin: accuracy}}} from docs/published-results.yaml; {} when the file is not there."""
    path = Path(path) if path else PUBLISHED_FILE
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise TinyformerError(f"published results file {path} is not valid YAML; fix the syntax") from None
    return data.get("results", {})


def published_for(published: dict, task: str, pe: str) -> dict[str, float]:
    """Published accuracies for this task and scheme; `ape` and `learned` are the same scheme."""
    for name, bins in published.get(task, {}).items():
        if name in LAB_NAMES and pe in LAB_NAMES and scheme(name, aliases=True) is scheme(pe, aliases=True):
            return {str(k): float(v) for k, v in bins.items()}
    return {}


def collect(results: str | Path) -> list[Entry]:
    """One entry per (task, scheme) found under `results`."""
    results = Path(results)
    if not results.is_dir():
        raise TinyformerError(f"results directory {results} does not exist; run `tinyformer lengen sweep` first")
    entries = []
    for task_dir in sorted(p for p in results.iterdir() if p.is_dir()):
        schemes = {p.name[len("summary-"): -len(".jsonl")] for p in task_dir.glob("summary-*.jsonl")}
        schemes |= {p.name[len("best-"): -len(".json")] for p in task_dir.glob("best-*.json")}
        for pe in sorted(schemes):
            best_file = task_dir / f"best-{pe}.json"
            if best_file.exists():
                best = json.loads(best_file.read_text(encoding="utf-8"))
                acc = best["accuracy"]
                entries.append(Entry(task_dir.name, pe, {b: v["mean"] for b, v in acc.items()},
                                     {b: v["std"] for b, v in acc.items()}, len(best["seeds"]),
                                     f"best by {best['by']}, {len(best['seeds'])} seeds"))
                continue
            rows = read_rows(task_dir / f"summary-{pe}.jsonl")
            if rows:
                top = best_row(rows, None)
                entries.append(Entry(task_dir.name, pe, dict(top["accuracy"]), {}, 1,
                                     f"best sweep row of {len(rows)}"))
    if not entries:
        raise TinyformerError(f"no results under {results}; run `tinyformer lengen sweep` (and `best`) first")
    return entries


def all_bins(entries: list[Entry]) -> list[str]:
    return sorted({b for e in entries for b in e.mean}, key=bin_key)


def _cell(e: Entry, b: str) -> str:
    if b not in e.mean:
        return "-"
    if e.n > 1:
        return f"{e.mean[b]:.3f} ± {e.std.get(b, 0.0):.3f}"
    return f"{e.mean[b]:.3f}"


def render_markdown(entries: list[Entry], published: dict) -> str:
    """The table: task | scheme | runs | one column per bin | published value per bin where one exists."""
    bins = all_bins(entries)
    # published values only for bins we measured too: other lengths are not comparable
    pub_bins = sorted({b for e in entries for b in published_for(published, e.task, e.pe) if b in bins}, key=bin_key)
    header = ["task", "scheme", "runs", *bins, *(f"published {b}" for b in pub_bins)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        pub = published_for(published, e.task, e.pe)
        cells = [e.task, e.pe, str(e.n), *(_cell(e, b) for b in bins),
                 *(f"{pub[b]:.3f}" if b in pub else "-" for b in pub_bins)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def published_note(entries: list[Entry], published: dict) -> str:
    """What the published columns cover, and why a bin or a row of ours has none: they hold only the bins the
    reference study measured (other lengths are not comparable) for the tasks and schemes it ran."""
    if not published:
        return "Published: no reference numbers were found (docs/published-results.yaml or --published)."
    covered = sorted({str(b) for by_pe in published.values() for bins in by_pe.values() for b in bins}, key=bin_key)
    schemes = sorted({pe for by_pe in published.values() for pe in by_pe})
    parts = [f"Published: the reference numbers in docs/published-results.yaml, which cover only the bins "
             f"{', '.join(covered)} of {', '.join(published)} under {', '.join(schemes)}"]
    uncovered = [b for b in all_bins(entries) if b not in covered]
    if len(uncovered) == len(all_bins(entries)):
        parts.append(f"none of this report's bins ({', '.join(uncovered)}) is among them, so no published column "
                     "is shown (other lengths are not comparable; `tinyformer lengen reproduce` trains the published "
                     "protocol and sets its bins beside the published ones)")
    elif uncovered:
        parts.append(f"{', '.join(uncovered)} {'has' if len(uncovered) == 1 else 'have'} no published column")
    unpublished = [f"{e.task}/{e.pe}" for e in entries if not published_for(published, e.task, e.pe)]
    if unpublished:
        parts.append(f"none for {', '.join(unpublished)}: the reference study published no such row")
    return "; ".join(parts) + "."


def render_csv(entries: list[Entry], published: dict) -> str:
    """Long format: one line per (task, scheme, bin) with ours (mean, std, runs) and the published value."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["task", "scheme", "bin", "accuracy", "std", "runs", "published"])
    for e in entries:
        pub = published_for(published, e.task, e.pe)
        for b in all_bins(entries):
            if b in e.mean:
                writer.writerow([e.task, e.pe, b, f"{e.mean[b]:.4f}", f"{e.std.get(b, 0.0):.4f}", e.n,
                                 f"{pub[b]:.4f}" if b in pub else ""])
    return out.getvalue()


def render_heatmap(entries: list[Entry], published: dict, path: str | Path, title: str = "") -> Path:
    """Rows task/scheme, columns bins, colour = accuracy; published values in brackets under ours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bins = all_bins(entries)
    grid = np.array([[e.mean.get(b, np.nan) for b in bins] for e in entries])
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(bins), 0.9 + 0.5 * len(entries)))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i, e in enumerate(entries):
        pub = published_for(published, e.task, e.pe)
        for j, b in enumerate(bins):
            if np.isnan(grid[i, j]):
                continue
            text = f"{grid[i, j]:.2f}" + (f"\n[{pub[b]:.2f}]" if b in pub else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="black" if grid[i, j] > 0.6 else "white")
    ax.set_xticks(range(len(bins)), [f"len {b}" for b in bins])
    ax.set_yticks(range(len(entries)), [f"{e.task} / {e.pe}" for e in entries])
    ax.set_title(title or "exact-match accuracy per length bin  [published, where there is one]", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path


def write_report(entries: list[Entry], out_dir: str | Path, published: dict, title: str = "") -> dict[str, Path]:
    """report.md, report.csv and heatmap.png under `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "report.md", "csv": out_dir / "report.csv", "heatmap": out_dir / "heatmap.png"}
    note = ("\nOurs: exact-match accuracy (teacher forcing); ± is the sample standard deviation over seeds. "
            f"{published_note(entries, published)}\n")
    with atomic_write(paths["markdown"]) as f:
        f.write((f"# {title}\n\n" if title else "") + render_markdown(entries, published) + note)
    with atomic_write(paths["csv"]) as f:
        f.write(render_csv(entries, published))
    render_heatmap(entries, published, paths["heatmap"], title)
    return paths
