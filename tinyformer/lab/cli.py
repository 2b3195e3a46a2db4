"""`tinyformer lengen train|sweep|best|report`: length-generalization runs, sweeps, seed re-runs, reports."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

# flags for LengenConfig fields; every field is also settable in a --config YAML file
FIELD_HELP = {
    "layers": "transformer layers", "heads": "attention heads", "d_model": "model width",
    "d_ff": "MLP width (default 4 x d_model)", "arch": "model preset: gpt2 | llama",
    "n_predict": "output heads for multi-token prediction (accuracy is reported with 1 and k heads)",
    "lr": "peak learning rate", "min_lr": "final learning rate (default lr/10)",
    "schedule": "cosine | constant | linear", "warmup": "warmup steps", "weight_decay": "AdamW weight decay",
    "grad_clip": "gradient norm clip (0 = off)", "batch_size": "examples per step",
    "steps": "step limit (training stops earlier once the training-range bin is solved)",
    "seed": "seed of the model init and the training stream", "rope_theta": "RoPE base",
    "rope_scaling": "RoPE linear scaling factor", "max_positions": "learned/abacus position table size "
    "(default: the longest evaluated input)", "random_offset": "true/false: random position offsets in "
    "training (default: on for learned/abacus)", "train_lengths": "training length range LO-HI",
    "eval_examples": "examples per evaluation bin", "eval_every": "evaluate every N steps",
    "eval_batch_size": "evaluation batch size", "eval_seed": "seed of the fixed evaluation sets",
    "stop_accuracy": "stop once the training-range bin reaches this accuracy",
    "greedy_examples": "examples per bin for free-running greedy accuracy (default all)",
    "log_every": "log the loss every N steps", "device": "auto | cpu | cuda | mps",
    "threads": "torch CPU threads (default: torch's choice; 1 is often fastest for tiny models)",
}


def _add_config_flags(p: argparse.ArgumentParser, with_task: bool = True) -> None:
    from tinyformer.lab.config import PE_SCHEMES
    from tinyformer.tasks.registry import task_names

    if with_task:
        p.add_argument("--task", help=f"task name ({' '.join(task_names())}; add:base=N,reverse=...,hints=...)")
        p.add_argument("--pe", help=f"position scheme: {' | '.join(PE_SCHEMES)}")
    p.add_argument("--config", type=Path, help="YAML file of run settings (flags override it)")
    p.add_argument("--eval-bins", help="comma-separated evaluation bins, e.g. 1-50,51-100,101-150")
    p.add_argument("--no-greedy", action="store_true", help="skip the free-running greedy accuracy")
    for name, text in FIELD_HELP.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar="V", help=text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("train", help="one run: train, evaluate the length bins, write a run directory")
    _add_config_flags(p)
    p.add_argument("--out", type=Path, help="run directory (default results/TASK/runs/PE/NAME)")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")

    p = sub.add_parser("sweep", help="every combination of a YAML grid, appended to results/TASK/summary-PE.jsonl")
    _add_config_flags(p)
    p.add_argument("--grid", type=Path, help="YAML grid: field: [values] (default: layers, heads, d_model, lr)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results directory (default results)")

    p = sub.add_parser("best", help="re-run the best sweep row with seeds 0, 1, 2: mean and spread per bin")
    p.add_argument("--task", required=True)
    p.add_argument("--pe", required=True)
    p.add_argument("--by", default="51-100", help="bin that decides the best row (default 51-100)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--results", type=Path, default=Path("results"))

    p = sub.add_parser("report", help="task x scheme x bin table (markdown, CSV) and a heatmap PNG")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--out", type=Path, help="where report.md, report.csv, heatmap.png go (default: --results)")
    p.add_argument("--published", type=Path, help="published numbers YAML (default docs/published-results.yaml)")


def config_from_args(args: argparse.Namespace, base: dict | None = None) -> dict:
    """The run settings as a dict: --config YAML, then `base`, then the flags given."""
    from tinyformer.config import read_yaml
    from tinyformer.lab.config import LengenConfig

    data = dict(read_yaml(args.config)) if getattr(args, "config", None) else {}
    data.update(base or {})
    names = {f.name for f in dataclasses.fields(LengenConfig)}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            data[name] = value
    if getattr(args, "eval_bins", None):
        data["eval_bins"] = [b.strip() for b in args.eval_bins.split(",") if b.strip()]
    if getattr(args, "no_greedy", False):
        data["greedy"] = False
    return data


def _require(args, *names: str) -> None:
    from tinyformer.errors import TinyformerError

    for name in names:
        if not getattr(args, name, None):
            raise TinyformerError(f"lengen {args.action} needs --{name}")


def _check_names(task: str, pe: str) -> None:
    from tinyformer.lab.config import model_position
    from tinyformer.tasks import get_task

    get_task(task)
    model_position(pe)


def run(args: argparse.Namespace) -> int:
    from tinyformer.config import from_dict
    from tinyformer.lab.config import LengenConfig
    from tinyformer.tasks import get_task

    if args.action == "train":
        from tinyformer.lab.sweep import run_name
        from tinyformer.lab.train import LengenSetup, train_run

        data = config_from_args(args)
        for name in ("task", "pe"):
            if name not in data:
                _require(args, name)
        _check_names(data["task"], data["pe"])
        cfg = from_dict(LengenConfig, data)
        setup = LengenSetup(cfg)  # checks the bins against the task and the position table first
        out = args.out or Path("results") / cfg.task / "runs" / cfg.pe / run_name(cfg)
        if out.exists() and not args.force:
            from tinyformer.errors import TinyformerError

            raise TinyformerError(f"run directory {out} already exists; pass --force to overwrite it or use --out")
        print(f"lengen train: {cfg.task} ({get_task(cfg.task).description}) with {cfg.pe} positions -> {out}")
        result = train_run(cfg, out, force=args.force, setup=setup)
        print(f"done after {result['steps']} steps ({result['train_seconds']:.0f} s)"
              + (", training-range bin solved" if result["stopped_early"] else ""))
        for b, acc in result["accuracy"].items():
            greedy = result.get("accuracy_greedy", {}).get(b)
            print(f"  bin {b:>9}: {acc:.3f}" + (f"   greedy {greedy:.3f}" if greedy is not None else ""))
        for k, accs in result.get("accuracy_heads", {}).items():  # multi-token prediction (n_predict > 1)
            print(f"  {k} token(s) per pass: " + "  ".join(f"{b}: {a:.3f}" for b, a in accs.items()))
        print(f"run directory: {out}")
        return 0

    if args.action == "sweep":
        from tinyformer.lab.sweep import load_grid, sweep

        _require(args, "task", "pe")
        _check_names(args.task, args.pe)
        grid = load_grid(args.grid)
        base = config_from_args(args, {"task": args.task, "pe": args.pe})
        given = set(base) - {"task", "pe"}
        grid = {k: v for k, v in grid.items() if k not in given} or {"seed": [base.get("seed", 0)]}
        rows = sweep(base, grid, args.results)
        print(f"sweep finished: {len(rows)} new runs; summary in {args.results / args.task}/summary-{args.pe}.jsonl")
        return 0

    if args.action == "best":
        from tinyformer.errors import TinyformerError
        from tinyformer.lab.sweep import best

        _check_names(args.task, args.pe)
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise TinyformerError(f"--seeds {args.seeds!r} is not a comma-separated list of integers") from None
        summary = best(args.task, args.pe, args.results, by=args.by, seeds=seeds)
        print(f"best config over seeds {', '.join(map(str, seeds))}:")
        for b, s in summary["accuracy"].items():
            print(f"  bin {b:>9}: {s['mean']:.3f} ± {s['std']:.3f}  (min {s['min']:.3f}, max {s['max']:.3f})")
        print(f"written: {args.results / args.task}/best-{args.pe}.json")
        return 0

    if args.action == "report":
        from tinyformer.lab.report import collect, load_published, render_markdown, write_report

        entries = collect(args.results)
        published = load_published(args.published)
        paths = write_report(entries, args.out or args.results, published, "length-generalization results")
        print(render_markdown(entries, published))
        for what, path in paths.items():
            print(f"{what}: {path}")
        return 0
    return 2
