"""`tinyformer plot RUN... [--out FILE] [--x steps|tokens|time] [--lr]`: the curves of runs on one figure."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (with metrics.jsonl)")
    parser.add_argument("--out", help="PNG to write (default: RUN/plots/curves.png for one run, else curves.png)")
    parser.add_argument("--x", choices=("steps", "tokens", "time"), default="steps",
                        help="horizontal axis: steps, tokens seen, or training time (the records' elapsed_s: "
                             "the training steps' wall-clock time, evaluation and checkpoints excluded; "
                             "default: steps)")
    parser.add_argument("--lr", action="store_true", help="add a panel with the learning rate")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tinyformer.train import rundir
    from tinyformer.train.plot import plot_runs

    one_run = Path(args.runs[0]) / rundir.PLOTS_DIR / rundir.CURVES_FILE
    out = args.out or (str(one_run) if len(args.runs) == 1 else rundir.CURVES_FILE)
    print(plot_runs(args.runs, out, x=args.x, lr=args.lr))
    return 0
