"""`tinyformer demo`: the embedded default, a small length-generalization study that needs no downloads.

Trains small models on two built-in tasks with three position schemes on short lengths, evaluates longer
length bins, prints the table and writes a heatmap. Runs are spread over worker processes of one thread
each (tiny models gain nothing from intra-op threads) and are seeded, so the table is the same every time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# The study: every task with every scheme. Short lengths keep it within minutes on two CPU cores.
DEMO_TASKS = ("majority", "UR")
DEMO_SCHEMES = ("ape", "rope", "alibi", "nope")
DEMO_SETTINGS = dict(
    layers=2, heads=4, d_model=128, lr=3e-3, warmup=50, batch_size=64, weight_decay=0.01,
    train_lengths="1-10", eval_bins=["1-10", "11-20", "21-30"], eval_examples=300, eval_every=250,
    greedy=True, log_every=100, device="cpu", seed=0,
)
DEMO_STEPS = {"majority": 500, "UR": 2500}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("lengen-demo"),
                        help="where the tables, the heatmap and the runs go (default lengen-demo/)")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel runs, one CPU thread each (default: the number of CPU cores, at most 2; "
                        "0 = one after another in this process)")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every run's step limit (e.g. 0.1 for a quick look)")
    parser.add_argument("--eval-examples", type=int, default=None, help="examples per length bin (default 300)")


def demo_configs(steps_scale: float = 1.0, eval_examples: int | None = None):
    from tinyformer.lab.config import LengenConfig

    configs = []
    for task in DEMO_TASKS:
        for pe in DEMO_SCHEMES:
            settings = {**DEMO_SETTINGS, "task": task, "pe": pe,
                        "steps": max(1, round(DEMO_STEPS[task] * steps_scale))}
            if eval_examples:
                settings["eval_examples"] = eval_examples
            configs.append(LengenConfig(**settings))
    return configs


def _run_one(cfg, run_dir: Path) -> dict:
    """One run in a worker process: a single thread, progress lines tagged with the run."""
    import torch

    from tinyformer.lab.train import train_run

    torch.set_num_threads(1)
    tag = f"{cfg.task:>8} / {cfg.pe:<5}"
    start = time.perf_counter()
    result = train_run(cfg, run_dir, force=True, log=lambda line: print(f"{tag}{line}", flush=True))
    result["wall_seconds"] = time.perf_counter() - start
    return result


def run(args: argparse.Namespace) -> int:
    from tinyformer.errors import TinyformerError
    from tinyformer.lab.report import Entry, write_report

    if args.workers is not None and args.workers < 0:
        raise TinyformerError(f"--workers must be 0 (run here) or more, got {args.workers}")
    if args.steps_scale <= 0:
        raise TinyformerError(f"--steps-scale must be positive, got {args.steps_scale}")
    configs = demo_configs(args.steps_scale, args.eval_examples)
    workers = max(1, min(2, os.cpu_count() or 1)) if args.workers is None else args.workers
    out = Path(args.out)
    first = configs[0]
    print("tinyformer demo: how far do position schemes carry a Transformer beyond its training lengths?")
    print(f"  tasks {', '.join(DEMO_TASKS)}; schemes {', '.join(DEMO_SCHEMES)}; {first.layers}-layer "
          f"d_model {first.d_model} models trained on lengths {first.train_lengths}, evaluated on bins "
          f"{', '.join(first.eval_bins)} ({first.eval_examples} examples each)")
    where = f"{workers} worker process(es)" if workers else "this process"
    print(f"  {len(configs)} runs on {where}; each stops when its training-range bin is "
          "solved or at its step limit\n")
    start = time.perf_counter()
    results: dict[tuple[str, str], dict] = {}
    # longest runs first, so the workers finish together (the table order is fixed regardless)
    ordered = sorted(configs, key=lambda c: -c.steps)
    for n_done, (cfg, result) in enumerate(_run_all(ordered, out, workers), 1):
        results[(cfg.task, cfg.pe)] = result
        acc = "  ".join(f"{b}: {v:.3f}" for b, v in result["accuracy"].items())
        print(f"[{n_done}/{len(configs)}] {cfg.task} / {cfg.pe} done: {result['steps']} steps in "
              f"{result['wall_seconds']:.0f} s  ->  {acc}", flush=True)
    elapsed = time.perf_counter() - start

    entries = [Entry(c.task, c.pe, results[(c.task, c.pe)]["accuracy"]) for c in configs]
    # the published numbers are for bins 51-100 / 101-150 after training on 1-50: nothing to set beside these
    paths = write_report(entries, out, {}, f"tinyformer demo: trained on lengths {first.train_lengths}")
    print()
    print(format_table(configs, results))
    print(f"\nfinished in {elapsed / 60:.1f} min")
    print(f"heatmap: {paths['heatmap']}")
    print(f"tables:  {paths['markdown']}, {paths['csv']}; runs (config, metrics, weights): {out / 'runs'}")
    print("next: `tinyformer lengen train --task UR --pe rope --help` for one run of your own, "
          "`tinyformer lengen sweep` for a grid (docs/lengen.md)")
    return 0


def _run_all(configs, out: Path, workers: int):
    """Yield (config, result) as runs finish: in worker processes, or here one after another (workers=0)."""
    if workers == 0:
        for cfg in configs:
            yield cfg, _run_one(cfg, out / "runs" / f"{cfg.task}-{cfg.pe}")
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # every run in a fresh interpreter, so no run's result can depend on which runs shared its process
    ctx = multiprocessing.get_context("spawn")
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, **fresh) as pool:
        futures = {pool.submit(_run_one, cfg, out / "runs" / f"{cfg.task}-{cfg.pe}"): cfg for cfg in configs}
        for future in as_completed(futures):
            yield futures[future], future.result()


def format_table(configs, results) -> str:
    """The final table: one line per task and scheme, accuracy per bin, steps used."""
    bins = list(configs[0].eval_bins)
    width = max(len(b) for b in bins) + 3
    agree = all(results[(c.task, c.pe)].get("accuracy_greedy") == results[(c.task, c.pe)]["accuracy"]
                for c in configs)
    header = f"{'task':<10}{'scheme':<8}" + "".join(f"{b:>{width}}" for b in bins) + f"{'steps':>8}"
    rule = "-" * len(header)
    lines = [f"exact-match accuracy per length bin (argmax under teacher forcing); trained on lengths "
             f"{configs[0].train_lengths}", rule, header, rule]
    for cfg in configs:
        r = results[(cfg.task, cfg.pe)]
        cells = "".join(f"{r['accuracy'][b]:>{width}.3f}" for b in bins)
        lines.append(f"{cfg.task:<10}{cfg.pe:<8}{cells}{r['steps']:>8}")
    lines.append(rule)
    if agree:
        lines.append("free-running greedy decoding gives exactly the same accuracies (as it must for these tasks)")
    else:
        lines.append("free-running greedy accuracy differs somewhere: see results.json of each run")
    return "\n".join(lines)
