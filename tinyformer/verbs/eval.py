"""`tinyformer eval --ckpt RUN`: a language model's loss, perplexity and bits per byte on a token file, or a
task run's exact-match accuracy per length bin (its own bins, or `--bins`); with `--harness TASKS`, scores from
EleutherAI's lm-evaluation-harness (tinyformer.lm.harness), written to RUN/harness/<tasks>.json."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="run directory (language-model or task run) or checkpoint")
    parser.add_argument("--which", choices=("best", "latest"), help="checkpoint of a run (default: best, else latest)")
    parser.add_argument("--data", help="language model: token file (.bin); default: the run's validation file")
    parser.add_argument("--batch-size", type=int, help="default: a language model run's own (train.batch_size / "
                        "grad_accum), so its logged validation loss is reproduced exactly; task runs: eval.batch_size")
    parser.add_argument("--seq-len", help="language model: window length, or several (256,512,1024: perplexity "
                        "against context length); default: the run's")
    parser.add_argument("--max-tokens", type=_max_tokens, help="language model: a fixed seeded subset of about "
                        "this many tokens, or 0 / all: the whole file (default on the run's validation file: its "
                        "data.eval_tokens, as in training; the whole file when that is unset or the file is smaller)")
    parser.add_argument("--seed", type=int, help="language model: seed of the --max-tokens subset (default: the "
                        "run's train.seed, the subset training evaluated on)")
    parser.add_argument("--bins", help="task run: comma-separated length bins (default: the run's eval.bins)")
    parser.add_argument("--examples", type=int, help="task run: examples per bin (default: the run's eval.examples)")
    parser.add_argument("--greedy", action="store_true", help="task run: also free-running greedy accuracy")
    parser.add_argument("--harness", metavar="TASKS", help="lm-evaluation-harness tasks, comma-separated (e.g. "
                        "hellaswag,arc_easy): the run is exported to HF and scored by `lm_eval`; needs "
                        "tinyformer[harness]")
    parser.add_argument("--harness-include", metavar="DIR", help="harness: a folder of local task YAML files")
    parser.add_argument("--limit", help="harness: examples per task (or a fraction below 1); default: all")
    parser.add_argument("--num-fewshot", type=int, help="harness: few-shot examples (default: each task's own)")
    parser.add_argument("--log-samples", action="store_true", help="harness: also keep every request and "
                        "response (per-choice log-likelihoods, generated text) in the results file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _max_tokens(text: str) -> int:
    """`--max-tokens N`, with 0 or `all` for the whole file (0 stands for it from here on)."""
    if text.strip().lower() == "all":
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of tokens (or 0 / all: the whole file)") from None


def run(args: argparse.Namespace) -> int:
    import json

    from tinyformer.errors import TinyformerError
    from tinyformer.train.rundir import Run
    from tinyformer.train.runtime import resolve_device

    for flag in ("batch_size", "examples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise TinyformerError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.max_tokens is not None and args.max_tokens < 0:
        raise TinyformerError(f"--max-tokens must be at least 1, or 0 / all for the whole file; got {args.max_tokens}")
    if args.seed is not None and not 0 <= args.seed < 2**62:
        raise TinyformerError(f"--seed must be an integer from 0 to 2**62 - 1, got {args.seed}")
    device = resolve_device(args.device)
    run = Run(args.ckpt, args.which)
    if args.harness is not None:
        return _eval_harness(run, args, device)
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
    elif "by_seq_len" in out:
        print(f"perplexity against context length of {run.name} on {out['data']} (checkpoint {run.checkpoint.name}):")
        for r in out["by_seq_len"]:
            what = (f"loss {r['loss']:.4f}, perplexity {r['perplexity']:.3f} over {r['tokens']:,} tokens"
                    if r["loss"] is not None else f"not evaluated: {r['stopped']}")
            print(f"  {r['seq_len']:>6} tokens: {what}")
    else:
        bpb = f", bits/byte {out['bits_per_byte']:.4f}" if out["bits_per_byte"] is not None else ""
        print(f"loss {out['loss']:.4f}, perplexity {out['perplexity']:.3f}{bpb} over {out['tokens']:,} tokens "
              f"of {out['data']} ({out['subset'] or 'the whole file'})")
    return 0


def _eval_harness(run, args, device) -> int:
    import json
    import logging

    from tinyformer.lm import harness

    tasks, limit = harness.parse_tasks(args.harness), harness.parse_limit(args.limit)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its INFO lines would bury the table
    model = run.load_model()
    result = harness.evaluate(run, model, tasks, include=args.harness_include, limit=limit, device=str(device),
                              batch_size=args.batch_size or 1, precision=args.precision,
                              num_fewshot=args.num_fewshot, log_samples=args.log_samples)
    path = harness.results_path(run, tasks)
    harness.write_results(path, result)
    if args.json:
        print(json.dumps({"results": result["results"], "path": str(path)}))
    else:
        print(f"lm-evaluation-harness on {run.name} (checkpoint {run.checkpoint.name}"
              + (f", limit {limit}" if limit is not None else "") + "):")
        print(harness.table(result))
        print(f"results: {path}")
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
    _check_bins_fit(cfg, model, args.batch_size or cfg.eval.batch_size, device)
    setup = TaskSetup(cfg)  # bins beyond a learned position table are refused here
    result = evaluate_bins(model, setup.eval_sets, batch_size=args.batch_size or cfg.eval.batch_size,
                           positions=setup.eval_positions,
                           device=device, greedy=args.greedy, precision=args.precision)
    return {"task": cfg.task.name, "examples": cfg.eval.examples, "checkpoint": str(run.checkpoint), **result}


def _check_bins_fit(cfg, model, batch_size: int, device) -> None:
    """Refuse, before any example is built, bins whose examples and forward cannot fit in memory."""
    from tinyformer.model.memory import forward_bytes, require_fits
    from tinyformer.tasks import get_task, parse_range

    task = get_task(cfg.task.name)
    for name in cfg.eval.bins:
        lo, hi = parse_range(name)
        seq_len = task.sequence_length(task.check_range(lo, hi)[1])
        rows = min(batch_size, cfg.eval.examples)
        need = forward_bytes(model.config, rows, seq_len) + cfg.eval.examples * seq_len * 17  # + the examples
        require_fits(need, device, f"bin {name} ({cfg.eval.examples} examples of up to {seq_len:,} tokens)",
                     "evaluate shorter bins, or fewer --examples and a smaller --batch-size")


def _eval_lm(run, model, args, device) -> dict:
    from tinyformer.errors import TinyformerError
    from tinyformer.lm.contexts import evaluate_run, parse_lengths

    lengths = parse_lengths(args.seq_len) if args.seq_len else None
    results, used = evaluate_run(run, model, lengths, device, precision=args.precision, data=args.data,
                                 batch_size=args.batch_size, max_tokens=args.max_tokens, seed=args.seed)
    where = {"data": used["data"], "checkpoint": used["checkpoint"]}
    if lengths is not None and len(lengths) > 1:
        return {"by_seq_len": results, "trained_seq_len": used["trained_seq_len"], **where}
    r = results[0]
    if r["loss"] is None:
        raise TinyformerError(f"--seq-len {r['seq_len']} cannot be evaluated: {r['stopped']}")
    whole = used["max_tokens"] is None or r["tokens"] >= used["file_targets"]
    subset = "" if whole else (f"seeded subset of {r['tokens']:,} of its {used['file_targets']:,} tokens "
                               f"(--max-tokens {used['max_tokens']:,}), seed {used['seed']}")
    return {"loss": r["loss"], "perplexity": r["perplexity"], "bits_per_byte": r["bits_per_byte"],
            "tokens": r["tokens"], "seq_len": r["seq_len"], "subset": subset, **where}
