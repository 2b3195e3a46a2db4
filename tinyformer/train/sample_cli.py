"""`tinyformer sample --ckpt RUN --prompt TEXT`: generate text from a run with its own tokenizer."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="run directory or checkpoint directory")
    parser.add_argument("--which", choices=("best", "latest"), help="checkpoint of a run (default: best, else latest)")
    parser.add_argument("--prompt", default="", help="text to continue (default: start from <|endoftext|>)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    import torch

    from tinyformer.errors import TinyformerError
    from tinyformer.tokenizer import Tokenizer
    from tinyformer.train.eval_cli import load_run_model
    from tinyformer.train.trainer import resolve_device

    if args.temperature < 0 or (args.top_p is not None and not 0 < args.top_p <= 1):
        raise TinyformerError("--temperature must be >= 0 and --top-p in (0, 1]")
    device = resolve_device(args.device)
    model, run_dir, _ = load_run_model(args.ckpt, args.which, device)
    if not (run_dir / "tokenizer").is_dir():
        raise TinyformerError(f"run {run_dir} has no tokenizer/ directory; sampling text needs the run's tokenizer")
    tok = Tokenizer.load(run_dir / "tokenizer")
    prompt = tok.encode(args.prompt, allowed_special="all") if args.prompt else [tok.eot_id or 0]
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    stop = [tok.eot_id] if tok.eot_id is not None else None
    for i in range(args.num_samples):
        out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, stop_tokens=stop, seed=args.seed + i)
        new = out[0].tolist()[len(prompt) :]
        if tok.eot_id in new:  # the story ends at its end-of-text token
            new = new[: new.index(tok.eot_id)]
        text = tok.decode(new)
        print((args.prompt + text) if args.prompt else text)
        if i + 1 < args.num_samples:
            print("---")
    return 0
