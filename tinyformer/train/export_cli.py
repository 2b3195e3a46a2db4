"""`tinyformer export`: a run or checkpoint -> an HF model directory (weights, config.json, tokenizer files)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    parser.add_argument(
        "--format", choices=["hf"], default="hf", help="output format (hf: GPT-2, Llama or MPT)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--which", choices=["latest", "best"], default="latest", help="checkpoint of a run")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output directory")


def _run_dir_of(ckpt: Path) -> Path:
    """RUN for RUN/checkpoints/step-N; the checkpoint's own directory otherwise."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt


def run(args: argparse.Namespace) -> int:
    from tinyformer.fileio import check_output
    from tinyformer.model.io import resolve_checkpoint

    ckpt = resolve_checkpoint(args.ckpt, args.which)
    check_output(args.out, args.force)  # both before importing torch: bad input fails fast

    from tinyformer.model.hf import ARCHITECTURES, export_hf, hf_family
    from tinyformer.model.io import load_model

    model = load_model(ckpt)
    family = hf_family(model.config)
    tokenizer_dir: Path | None = _run_dir_of(ckpt) / "tokenizer"
    eos = None
    notes = []
    if tokenizer_dir.is_dir():
        try:
            from tinyformer.tokenizer import Tokenizer
            from tinyformer.tokenizer.export import to_hf  # noqa: F401  (only checking it exists)

            eos = Tokenizer.load(tokenizer_dir).eot_id
        except ImportError:
            notes.append("tokenizer files not written: this install has no tokenizer export")
            tokenizer_dir = None
    else:
        notes.append(f"no tokenizer at {tokenizer_dir}: weights and config only")
        tokenizer_dir = None
    if model.config.n_predict > 1:
        notes.append(f"the {model.config.n_predict - 1} extra multi-token heads are not exported")
    out = export_hf(
        model, args.out, force=args.force, eos_token_id=eos, bos_token_id=eos, tokenizer_dir=tokenizer_dir
    )
    print(f"exported {ckpt} as {ARCHITECTURES[family]} to {out}")
    for note in notes:
        print(f"note: {note}")
    return 0
