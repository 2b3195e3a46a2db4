"""`tinyformer compare --config FILE --vary model.position=sinusoidal,rope,alibi [--seeds N] [key=value ...]`:
train the variants of one language-model config (resumable), then a table and three figures: training loss,
validation loss/perplexity per variant, perplexity against evaluation context length."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config of a language model (see configs/)")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                        help="a config key and its values, one variant each (repeat for a grid), "
                        "e.g. model.position=sinusoidal,rope,alibi")
    parser.add_argument("--seeds", type=int, default=1, help="runs per variant, seeds train.seed, train.seed+1, ...")
    parser.add_argument("--out", default="runs/compare", help="directory of the runs, table and figures "
                        "(default: runs/compare); run again to resume")
    parser.add_argument("--factors", default="1,2,4,8", help="evaluation contexts as multiples of the training "
                        "context (default: 1,2,4,8)")
    parser.add_argument("--device", default="auto", help="device of the evaluations (training: train.device)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides for every variant")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tinyformer.errors import TinyformerError
    from tinyformer.fileio import directory_lock
    from tinyformer.lm import compare
    from tinyformer.train.runtime import resolve_device
    from tinyformer.train.status import INTERRUPTED, PAUSED, exit_code

    try:
        factors = [int(f) for f in args.factors.split(",") if f.strip()]
    except ValueError:
        factors = []
    if not factors or min(factors) < 1:
        raise TinyformerError(f"--factors {args.factors!r} must be comma-separated whole numbers >= 1, e.g. 1,2,4,8")
    out = Path(args.out)
    members = compare.plan(args.config, args.overrides, args.vary, args.seeds, out)
    device = resolve_device(args.device)
    n_variants = len({m.variant.label for m in members})
    print(f"compare: {n_variants} variant{'s' * (n_variants != 1)} x {args.seeds} seed{'s' * (args.seeds != 1)} "
          f"= {len(members)} run{'s' * (len(members) != 1)} in {out / 'runs'}")
    with directory_lock(out, "compare output directory"):  # a second compare on `out` refuses
        status = compare.train_all(members)
        if status == INTERRUPTED:
            stopped = next(m for m in members if m.summary.get("status") == INTERRUPTED)
            print(f"compare: interrupted during {stopped.variant.label}, seed {stopped.seed}; run the same command "
                  "again to resume")
            return exit_code(stopped.summary)
        if status == PAUSED:
            print("compare: runs paused at train.stop_at_step; run the same command without it to finish them")
            return 0
        trained = compare.evaluate_all(members, factors, device)
        paths = compare.write_results(members, out, trained)
        print()
        print(compare.results_table(compare.aggregate(members), trained))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
