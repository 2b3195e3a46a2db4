"""`tinyformer train --config FILE [key=value ...]`: train any run (a language model on token files, or a
synthetic task of the lab) from one config schema; also under torchrun."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (see configs/); keys can be overridden after it")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in run_dir from its latest checkpoint (resume=must)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="dotted overrides, e.g. train.lr=1e-3 model.n_layers=6 run_dir=runs/x train.parallel=ddp",
    )


def train(cfg) -> dict:
    """Train a RunConfig of either kind; returns the summary."""
    if cfg.kind == "task":
        from tinyformer.lab.run import train_task

        return train_task(cfg)
    from tinyformer.lm.run import train_lm

    return train_lm(cfg)


def run(args: argparse.Namespace) -> int:
    from tinyformer.train.budget import stop_note
    from tinyformer.train.config import load_run_config
    from tinyformer.train.distributed import shutdown
    from tinyformer.train.status import exit_code

    overrides = list(args.overrides) + (["resume=must"] if args.resume else [])
    cfg = load_run_config(args.config, overrides)
    summary = train(cfg)
    shutdown()
    if int(os.environ.get("RANK", "0")) != 0:
        return exit_code(summary)
    line = f"{summary['status']} at step {summary['step']}"
    if summary.get("val_loss") is not None:
        line += f": val loss {summary['val_loss']:.4f}, ppl {summary['val_ppl']:.2f}"
    if summary.get("accuracy"):
        line += ": accuracy " + "  ".join(f"{b}: {v:.3f}" for b, v in summary["accuracy"].items())
    note = stop_note(summary)  # what train.budget / train.target_loss decided
    print(f"{line}{f' ({note})' if note else ''} -> {cfg.run_dir or 'runs/run'}")
    return exit_code(summary)  # 0 when it ended or paused; 130 / 143 when a signal stopped it after saving
