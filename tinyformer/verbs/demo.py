"""`tinyformer demo`: the embedded default, a small length-generalization study that needs no downloads.

Trains small models on two built-in tasks with three position schemes on short lengths, evaluates longer
length bins, prints the table and writes a heatmap. Runs are spread over worker processes of one thread
each (tiny models gain nothing from intra-op threads) and are seeded, so the table is the same every time.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# The study: every task with every scheme. Short lengths keep it within minutes on two CPU cores.
DEMO_TASKS = ("majority", "UR")
DEMO_SCHEMES = ("ape", "rope", "alibi", "nope")
# dotted RunConfig keys on top of the lab preset (tinyformer/presets/lengen.yaml)
DEMO_SETTINGS = {
    "model.n_layers": 2, "model.n_heads": 4, "model.d_model": 128, "train.lr": 3e-3, "train.warmup": 50,
    "train.batch_size": 64, "train.weight_decay": 0.01, "task.train_lengths": "1-10",
    "eval.bins": ["1-10", "11-20", "21-30"], "eval.examples": 300, "train.eval_every": 250, "eval.greedy": True,
    "train.log_every": 100, "train.device": "cpu", "train.threads": 1, "train.seed": 0, "train.progress": False,
    "train.precision": "fp32",  # fixed, not measured: the demo prints the same table on every machine
}
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


class DemoRun:
    """One run of the demo: its task, scheme name and config (a lab RunConfig)."""

    def __init__(self, task: str, pe: str, cfg) -> None:
        self.task, self.pe, self.cfg = task, pe, cfg


def demo_configs(out: Path, steps_scale: float = 1.0, eval_examples: int | None = None) -> list[DemoRun]:
    from tinyformer.lab.setup import model_position
    from tinyformer.lab.sweep import lab_config

    runs = []
    for task in DEMO_TASKS:
        for pe in DEMO_SCHEMES:
            settings = {**DEMO_SETTINGS, "task.name": task, "model.position": model_position(pe),
                        "train.max_steps": max(1, round(DEMO_STEPS[task] * steps_scale)),
                        "run_dir": str(out / "runs" / f"{task}-{pe}")}
            if eval_examples:
                settings["eval.examples"] = eval_examples
            runs.append(DemoRun(task, pe, lab_config(settings)))
    return runs


def _run_one(run: DemoRun) -> dict:
    """One run in a worker process (one thread): trained through the engine, or read back when finished."""
    from tinyformer.lab.run import train_task

    start = time.perf_counter()
    summary = train_task(run.cfg)
    summary["wall_seconds"] = time.perf_counter() - start
    return summary


def run(args: argparse.Namespace) -> int:
    from tinyformer.errors import TinyformerError
    from tinyformer.lab.report import Entry, write_report

    if args.workers is not None and args.workers < 0:
        raise TinyformerError(f"--workers must be 0 (run here) or more, got {args.workers}")
    if args.steps_scale <= 0:
        raise TinyformerError(f"--steps-scale must be positive, got {args.steps_scale}")
    out = Path(args.out)
    configs = demo_configs(out, args.steps_scale, args.eval_examples)
    workers = max(1, min(2, os.cpu_count() or 1)) if args.workers is None else args.workers
    first = configs[0].cfg
    print("tinyformer demo: how far do position schemes carry a Transformer beyond its training lengths?")
    print(f"  tasks {', '.join(DEMO_TASKS)}; schemes {', '.join(DEMO_SCHEMES)}; {first.model.n_layers}-layer "
          f"d_model {first.model.d_model} models trained on lengths {first.task.train_lengths}, evaluated on bins "
          f"{', '.join(first.eval.bins)} ({first.eval.examples} examples each)")
    where = f"{workers} worker process(es)" if workers else "this process"
    print(f"  {len(configs)} runs on {where}; each stops when its training-range bin is "
          "solved or at its step limit\n")
    import shutil

    shutil.rmtree(out / "runs", ignore_errors=True)  # the demo trains afresh: the same table every time
    start = time.perf_counter()
    results: dict[tuple[str, str], dict] = {}
    # longest runs first, so the workers finish together (the table order is fixed regardless)
    ordered = sorted(configs, key=lambda c: -c.cfg.train.max_steps)
    for n_done, (run, result) in enumerate(_run_all(ordered, workers), 1):
        results[(run.task, run.pe)] = result
        acc = "  ".join(f"{b}: {v:.3f}" for b, v in result["accuracy"].items())
        print(f"[{n_done}/{len(configs)}] {run.task} / {run.pe} done: {result['step']} steps in "
              f"{result['wall_seconds']:.0f} s  ->  {acc}", flush=True)
    elapsed = time.perf_counter() - start

    entries = [Entry(c.task, c.pe, results[(c.task, c.pe)]["accuracy"]) for c in configs]
    # the published numbers are for bins 51-100 / 101-150 after training on 1-50: nothing to set beside these
    paths = write_report(entries, out, {}, f"tinyformer demo: trained on lengths {first.task.train_lengths}")
    print()
    print(format_table(configs, results))
    print(f"\nfinished in {elapsed / 60:.1f} min")
    print(f"heatmap: {paths['heatmap']}")
    print(f"tables:  {paths['markdown']}, {paths['csv']}; runs (config, metrics, weights): {out / 'runs'}")
    print("next: `tinyformer lengen train --task UR --pe rope --help` for one run of your own, "
          "`tinyformer lengen sweep` for a grid (docs/lengen.md)")
    return 0


def _run_all(runs: list[DemoRun], workers: int):
    """Yield (run, summary) as runs finish, through the lab's executor (worker processes, or here: 0)."""
    from tinyformer.lab.executor import LocalExecutor

    for i, summary in LocalExecutor(workers).map(_run_one, runs):
        yield runs[i], summary


def format_table(configs, results) -> str:
    """The final table: one line per task and scheme, accuracy per bin, steps used."""
    bins = list(configs[0].cfg.eval.bins)
    width = max(len(b) for b in bins) + 3
    agree = all(results[(c.task, c.pe)].get("accuracy_greedy") == results[(c.task, c.pe)]["accuracy"]
                for c in configs)
    header = f"{'task':<10}{'scheme':<8}" + "".join(f"{b:>{width}}" for b in bins) + f"{'steps':>8}"
    rule = "-" * len(header)
    lines = [f"exact-match accuracy per length bin (argmax under teacher forcing); trained on lengths "
             f"{configs[0].cfg.task.train_lengths}", rule, header, rule]
    for cfg in configs:
        r = results[(cfg.task, cfg.pe)]
        cells = "".join(f"{r['accuracy'][b]:>{width}.3f}" for b in bins)
        lines.append(f"{cfg.task:<10}{cfg.pe:<8}{cells}{r['step']:>8}")
    lines.append(rule)
    if agree:
        lines.append("free-running greedy decoding gives exactly the same accuracies (as it must for these tasks)")
    else:
        lines.append("free-running greedy accuracy differs somewhere: see summary.json of each run")
    return "\n".join(lines)
