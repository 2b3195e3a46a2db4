"""`tinyformer eval --ckpt RUN [--data FILE]`: loss, perplexity and bits per byte of a run on a token file."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    parser.add_argument("--which", choices=("best", "latest"), help="checkpoint of a run (default: best, else latest)")
    parser.add_argument("--data", help="token file (.bin); default: the run's validation file")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, help="window length (default: the run's)")
    parser.add_argument("--max-tokens", type=int, help="evaluate a fixed seeded subset of about this many tokens")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_dir_of(path):
    """The run directory of a run or checkpoint path (a checkpoint lives in RUN/checkpoints/step-N)."""
    from pathlib import Path

    path = Path(path)
    return path if (path / "checkpoints").is_dir() or (path / "config.yaml").exists() else path.parent.parent


def load_run_model(path: str, which: str, device):
    """(model, run_dir, run config dict or {}) of a run or checkpoint path."""
    from tinyformer.config import read_yaml
    from tinyformer.errors import TinyformerError
    from tinyformer.model.io import load_model

    run_dir = run_dir_of(path)
    from pathlib import Path

    if not Path(path).exists():
        raise TinyformerError(f"checkpoint {path} does not exist; pass a run directory or a checkpoint directory")
    if which is None:  # the best checkpoint when the run evaluated, else its latest
        from tinyformer.train.checkpoint import read_index

        which = "best" if read_index(run_dir).get("best") else "latest"
    model = load_model(path, which=which, map_location="cpu").to(device).eval()
    config = read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else {}
    return model, run_dir, config


def run(args: argparse.Namespace) -> int:
    import json

    from tinyformer.errors import TinyformerError
    from tinyformer.train.sampler import eval_batches, open_token_file
    from tinyformer.train.trainer import check_token_file, loss_metrics, loss_over, resolve_device

    device = resolve_device(args.device)
    model, run_dir, config = load_run_model(args.ckpt, args.which, device)
    data = args.data or (config.get("data") or {}).get("val")
    if not data:
        raise TinyformerError(f"run {run_dir} has no validation file in its config; pass --data FILE.bin")
    fingerprint = None
    if (run_dir / "tokenizer").is_dir():
        from tinyformer.tokenizer import Tokenizer

        fingerprint = Tokenizer.load(run_dir / "tokenizer").fingerprint
    check_token_file(data, model.config.vocab_size if hasattr(model, "config") else 1 << 31, fingerprint, "val")
    seq_len = args.seq_len or (config.get("train") or {}).get("seq_len") or (config.get("model") or {}).get("max_seq_len")
    if not seq_len:
        raise TinyformerError("cannot tell the window length; pass --seq-len")
    meta = open_token_file(data)[1]
    batches = eval_batches(data, args.batch_size, int(seq_len), max_tokens=args.max_tokens)
    loss_sum, count = loss_over(model, batches, device, args.precision)
    out = loss_metrics(loss_sum, count, meta.get("bytes_per_token"))
    out = {"loss": out["val_loss"], "perplexity": out["val_ppl"], "bits_per_byte": out.get("val_bpb"),
           "tokens": out["val_tokens"], "data": str(data)}
    if args.json:
        print(json.dumps(out))
    else:
        bpb = f", bits/byte {out['bits_per_byte']:.4f}" if out["bits_per_byte"] is not None else ""
        print(f"loss {out['loss']:.4f}, perplexity {out['perplexity']:.3f}{bpb} over {out['tokens']:,} tokens of {data}")
    return 0
