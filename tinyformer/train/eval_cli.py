"""`tinyformer eval --ckpt RUN`: a language model's loss, perplexity and bits per byte on a token file, or a
task run's exact-match accuracy per length bin (its own bins, or `--bins`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="run directory (language-model or task run) or checkpoint")
    parser.add_argument("--which", choices=("best", "latest"), help="checkpoint of a run (default: best, else latest)")
    parser.add_argument("--data", help="language model: token file (.bin); default: the run's validation file")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, help="language model: window length (default: the run's)")
    parser.add_argument("--max-tokens", type=int, help="language model: a fixed seeded subset of about this many tokens")
    parser.add_argument("--bins", help="task run: comma-separated length bins (default: the run's eval.bins)")
    parser.add_argument("--examples", type=int, help="task run: examples per bin (default: the run's eval.examples)")
    parser.add_argument("--greedy", action="store_true", help="task run: also free-running greedy accuracy")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import json

    from tinyformer.errors import TinyformerError
    from tinyformer.rundir import Run
    from tinyformer.train.runtime import resolve_device

    for flag in ("batch_size", "seq_len", "max_tokens", "examples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise TinyformerError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    device = resolve_device(args.device)
    run = Run(args.ckpt, args.which)
    model = run.load_model(device)
    out = _eval_task(run, model, args, device) if run.kind == "task" else _eval_lm(run, model, args, device)
    if args.json:
        print(json.dumps(out))
    elif run.kind == "task":
        greedy = out.get("accuracy_greedy") or {}
        print(f"exact-match accuracy per length bin of {run.name} (task {out['task']}, {out['examples']} examples "
              f"per bin, checkpoint {run.checkpoint.name}):")
        for b, acc in out["accuracy"].items():
            print(f"  bin {b:>9}: {acc:.3f}" + (f"   greedy {greedy[b]:.3f}" if b in greedy else ""))
    else:
        bpb = f", bits/byte {out['bits_per_byte']:.4f}" if out["bits_per_byte"] is not None else ""
        print(f"loss {out['loss']:.4f}, perplexity {out['perplexity']:.3f}{bpb} over {out['tokens']:,} tokens "
              f"of {out['data']}")
    return 0


def _eval_task(run, model, args, device) -> dict:
    import dataclasses

    from tinyformer.lab.evaluate import evaluate_bins
    from tinyformer.lab.setup import TaskSetup

    cfg = run.config
    changes = {}
    if args.bins:
        changes["bins"] = [b.strip() for b in args.bins.split(",") if b.strip()]
    if args.examples is not None:
        changes["examples"] = args.examples
    if changes:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **changes), model_keys=cfg.model_keys)
    setup = TaskSetup(cfg)  # bins beyond a learned position table are refused here
    result = evaluate_bins(model, setup.eval_sets, batch_size=cfg.eval.batch_size, positions=setup.eval_positions,
                           device=device, greedy=args.greedy, precision=args.precision)
    return {"task": setup.task.name, "examples": cfg.eval.examples, "checkpoint": str(run.checkpoint), **result}


def _eval_lm(run, model, args, device) -> dict:
    from tinyformer.data.tokenfile import check_token_file, read_token_file
    from tinyformer.errors import TinyformerError
    from tinyformer.train.evaluation import loss_metrics, loss_over
    from tinyformer.train.sampler import eval_batches

    cfg = run.config
    data = args.data or (cfg.data.val if cfg is not None and cfg.data is not None else None)
    if not data:
        raise TinyformerError(f"{run.given} has no validation file in its config; pass --data FILE.bin")
    tok = run.tokenizer()
    check_token_file(data, model.config.vocab_size, tok.fingerprint if tok is not None else None, "val")
    seq_len = args.seq_len or (cfg.train.seq_len if cfg is not None else None) or model.config.max_seq_len
    meta = read_token_file(data)[1]
    batches = eval_batches(data, args.batch_size, int(seq_len), max_tokens=args.max_tokens)
    loss_sum, count = loss_over(model, batches, device, args.precision)
    out = loss_metrics(loss_sum, count, meta.get("bytes_per_token"))
    return {"loss": out["val_loss"], "perplexity": out["val_ppl"], "bits_per_byte": out.get("val_bpb"),
            "tokens": out["val_tokens"], "data": str(data), "checkpoint": str(run.checkpoint)}
