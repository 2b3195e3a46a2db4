"""`tinyformer plot RUN... [--out FILE]`: train/val loss and perplexity curves of runs on one figure."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (with metrics.jsonl)")
    parser.add_argument("--out", help="PNG to write (default: RUN/plots/curves.png for one run, else curves.png)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tinyformer.train.plot import plot_runs

    out = args.out or (str(Path(args.runs[0]) / "plots" / "curves.png") if len(args.runs) == 1 else "curves.png")
    print(plot_runs(args.runs, out))
    return 0
