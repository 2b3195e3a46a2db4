"""`tinyformer export`: a run or checkpoint -> an HF model directory (weights, config.json, tokenizer files)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    parser.add_argument(
        "--format", choices=["hf"], default="hf", help="output format (hf: GPT-2, Llama or MPT)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--which", choices=["latest", "best"], help="checkpoint of a run (default: best, else latest)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output directory")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tinyformer.fileio import check_output
    from tinyformer.train.rundir import Run

    run = Run(args.ckpt, args.which)
    if Path(args.out).exists() and not args.force:
        check_output(args.out, args.force)  # before importing torch: bad input fails fast

    from tinyformer.lm.publish import export_run
    from tinyformer.model.hf_config import ARCHITECTURES, hf_family
    from tinyformer.tasks import get_task

    model = run.load_model()
    family = hf_family(model.config)
    check_output(args.out, args.force)  # only now: a failed export creates no directory
    tokenizer = run.tokenizer()
    notes = []
    if run.kind == "task":
        notes.append(f"task run: its vocabulary is task {run.config.task.name}'s symbols "
                     f"({' '.join(get_task(run.config.task.name).vocab)}), not a text tokenizer; no tokenizer files written")
    elif tokenizer is None:
        notes.append(f"no tokenizer in {run.path or run.checkpoint}: weights and config only")
    if model.config.n_predict > 1:
        notes.append(f"the {model.config.n_predict - 1} extra multi-token heads are not exported")
    out = export_run(run, model, args.out, force=args.force)  # weights, config, tokenizer, model card
    print(f"exported {run.checkpoint} as {ARCHITECTURES[family]} to {out} (model card: {out / 'README.md'})")
    for note in notes:
        print(f"note: {note}")
    return 0
