"""`tinyformer lengen train|sweep|best|report`: length-generalization runs, sweeps, seed re-runs, reports.

Runs take the one config schema: the lab preset (tinyformer/presets/lengen.yaml), then `--config FILE`, then
dotted `key=value` overrides, exactly like `tinyformer train`. The few short flags are aliases of schema
keys (ALIASES), with their help generated from the schema.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tinyformer.lab.executor import GPU_RUNS
from tinyformer.model.positions import SCHEMES

# short flag -> schema key; help text and default are read from the schema
ALIASES = {
    "task": "task.name",
    "pe": "model.position",
    "seed": "train.seed",
    "steps": "train.max_steps",
    "lr": "train.lr",
}


def _schema_default(key: str):
    from tinyformer.config import read_yaml
    from tinyformer.train.config import RunConfig, preset_path

    section, name = key.split(".")
    preset = read_yaml(preset_path("lengen")).get(section) or {}
    if name in preset:
        return preset[name]
    hints = {f.name: f for f in dataclasses.fields(RunConfig)}
    default = hints[section].default_factory() if hints[section].default_factory is not dataclasses.MISSING else None
    return getattr(default, name, None)


def _scheme_names() -> str:
    """' (ape = learned absolute; also sinusoidal, rope, alibi, nope, fire, abacus)': the table's names for --pe."""
    named = "; ".join(f"{alias} = {s.summary}" for s in SCHEMES.values() for alias in s.aliases)
    return f" ({named}; also {', '.join(s.name for s in SCHEMES.values() if not s.aliases)})"


def _alias_help(flag: str, key: str) -> str:
    extra = {"pe": _scheme_names(),
             "task": " (e.g. UR, NF, add:base=16)"}.get(flag, "")
    return f"alias of {key}=V{extra}; lab default {_schema_default(key)!r}"


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML run config on top of the lab preset (overrides go after it)")
    for flag, key in ALIASES.items():
        p.add_argument(f"--{flag}", dest=f"alias_{flag}", metavar="V", help=_alias_help(flag, key))
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. model.n_layers=4 train.precision=bf16 eval.bins=[1-10,11-20]")


def _add_executor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="runs at once (default: one per CPU core, one thread each; "
                   f"{GPU_RUNS} sharing a GPU; 0 = one after another in this process)")
    p.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="local worker processes, or one Ray task per run on a cluster (pip install 'tinyformer[ray]')")
    p.add_argument("--address", help="Ray cluster address (default: start or join a local one)")


def _executor(args: argparse.Namespace):
    import torch

    from tinyformer.lab.executor import make_executor

    device = "cuda" if torch.cuda.is_available() else "cpu"  # runs use train.device=auto: the GPU when there is one
    return make_executor(args.executor, args.workers, device, args.address)


def _csv(text: str | None, cast=str) -> list | None:
    from tinyformer.errors import TinyformerError

    if not text:
        return None
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TinyformerError(f"{text!r} is not a comma-separated list of {cast.__name__}s") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("train", help="one run: train until the training-range bin is solved, evaluate every bin")
    _add_run_arguments(p)
    p.add_argument("--out", type=Path, help="run directory (default results/TASK/runs/SCHEME/NAME); also run_dir=")
    p.add_argument("--force", action="store_true", help="delete an existing run directory and start again "
                   "(without it an unfinished run resumes and a finished one is reported)")

    p = sub.add_parser("sweep", help="every combination of a YAML grid, appended to RESULTS/TASK/summary-SCHEME.jsonl")
    _add_run_arguments(p)
    p.add_argument("--grid", type=Path, help="YAML grid: key: [values] (default: model.n_layers, model.n_heads, "
                   "model.d_model, train.lr)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results directory (default results)")
    _add_executor_arguments(p)

    p = sub.add_parser("best", help="re-run the best sweep row with seeds 0, 1, 2: mean and spread per bin")
    p.add_argument("--task", required=True)
    p.add_argument("--pe", required=True)
    p.add_argument("--by", help="bin that decides the best row (default: the first bin beyond the training range)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--results", type=Path, default=Path("results"))
    _add_executor_arguments(p)

    p = sub.add_parser("reproduce", help="the published table (7 rows x APE/RoPE x 3 seeds) under the published "
                       "protocol; resumable; report beside the published numbers")
    p.add_argument("--scale", default="cpu", help="cpu (about an hour on 2 cores) or full (the published protocol)")
    p.add_argument("--results", type=Path, help="results directory (default results/reproduce-SCALE)")
    p.add_argument("--rows", help="comma-separated published rows (default all: UF,UL,UR,NLFirst,NRFirst,NLLast,NRLast)")
    p.add_argument("--schemes", help="comma-separated columns (default ape,rope, the published ones); also our "
                   "extra columns under the same protocol (presets/published_extra.yaml): rope-rand, alibi-rand, "
                   "fire, coupled-relative (run only on rows whose task has a position coupling rule)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    _add_executor_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="changes applied to every run (recorded: a results directory keeps one set)")

    p = sub.add_parser("report", help="task x scheme x bin table (markdown, CSV) and a heatmap PNG")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--out", type=Path, help="where report.md, report.csv, heatmap.png go (default: --results)")
    p.add_argument("--published", type=Path, help="published numbers YAML (default docs/published-results.yaml)")


def settings_from_args(args: argparse.Namespace) -> dict:
    """The run's settings as dotted keys: the aliases given, then the key=value overrides."""
    from tinyformer.config import flatten_dotted, parse_overrides
    from tinyformer.lab.setup import model_position

    settings = {}
    for flag, key in ALIASES.items():
        value = getattr(args, f"alias_{flag}", None)
        if value is not None:
            settings[key] = value
    settings.update(flatten_dotted(parse_overrides(args.overrides)))
    if "model.position" in settings:
        settings["model.position"] = model_position(str(settings["model.position"]))
    return settings


def run(args: argparse.Namespace) -> int:
    from tinyformer.lab.sweep import lab_config

    if args.action == "train":
        return _train(args, settings_from_args(args))

    if args.action == "sweep":
        from tinyformer.lab.sweep import load_grid, sweep

        settings = settings_from_args(args)
        lab_config(settings, args.config)  # a typo fails here, before the grid runs
        if args.config:
            from tinyformer.config import flatten_dotted, read_yaml

            settings = {**flatten_dotted(read_yaml(args.config)), **settings}
        grid = load_grid(args.grid, settings)
        grid = {k: v for k, v in grid.items() if k not in settings} or {"train.seed": [settings.get("train.seed", 0)]}
        rows = sweep(settings, grid, args.results, executor=_executor(args))
        print(f"sweep finished: {len(rows)} new run{'s' if len(rows) != 1 else ''}; summaries in {args.results}/")
        return 0

    if args.action == "best":
        from tinyformer.errors import TinyformerError
        from tinyformer.lab.setup import model_position, scheme_label
        from tinyformer.lab.sweep import best
        from tinyformer.tasks import get_task

        get_task(args.task)
        pe = scheme_label(model_position(args.pe))
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise TinyformerError(f"--seeds {args.seeds!r} is not a comma-separated list of integers") from None
        summary = best(args.task, pe, args.results, by=args.by, seeds=seeds, executor=_executor(args))
        print(f"best config by bin {summary['by']} over seeds {', '.join(map(str, seeds))}:")
        for b, s in summary["accuracy"].items():
            print(f"  bin {b:>9}: {s['mean']:.3f} ± {s['std']:.3f}  (min {s['min']:.3f}, max {s['max']:.3f})")
        print(f"written: {args.results / args.task}/best-{pe}.json")
        return 0

    if args.action == "reproduce":
        return _reproduce(args)

    if args.action == "report":
        from tinyformer.lab.report import (
            collect,
            load_published,
            published_note,
            render_markdown,
            write_report,
        )

        entries = collect(args.results)
        published = load_published(args.published)
        paths = write_report(entries, args.out or args.results, published, "length-generalization results")
        print(render_markdown(entries, published))
        print(published_note(entries, published) + "\n")
        for what, path in paths.items():
            print(f"{what}: {path}")
        return 0
    return 2


def _train(args: argparse.Namespace, settings: dict) -> int:
    import dataclasses as dc
    import shutil

    from tinyformer.lab.run import resolve_task_run, train_task
    from tinyformer.lab.setup import scheme_label
    from tinyformer.lab.sweep import lab_config, run_path
    from tinyformer.tasks import get_task
    from tinyformer.train.budget import stop_note
    from tinyformer.train.status import DONE, EARLY_STOPPED, SOLVED

    cfg = lab_config(settings, args.config)
    resolve_task_run(cfg)  # bins, positions and the model checked before any directory is touched
    out = args.out or (Path(cfg.run_dir) if cfg.run_dir else run_path("results", cfg))
    if args.force and out.exists():
        shutil.rmtree(out)
    cfg = dc.replace(cfg, run_dir=str(out), model_keys=cfg.model_keys)
    scheme = scheme_label(cfg.model.position)
    print(f"lengen train: {cfg.task.name} ({get_task(cfg.task.name).description}) with {scheme} positions -> {out}")
    summary = train_task(cfg)
    if summary["status"] not in DONE:  # paused or stopped by a signal: a checkpoint to continue from
        from tinyformer.train.status import exit_code

        print(f"{summary['status']} at step {summary['step']}; run the same command again to continue")
        return exit_code(summary)  # 130 / 143 when a signal stopped it
    how = {SOLVED: ", training-range bin solved",
           EARLY_STOPPED: ", stopped early: no improvement (the run has ended; raising train.max_steps "
                                 "does not continue it)"}.get(summary["status"], "")
    if note := stop_note(summary):  # train.budget
        how += f", {note}"
    print(f"done after {summary['step']} steps ({summary['elapsed_s']:.0f} s of training){how}")
    for b, acc in summary["accuracy"].items():
        greedy = (summary.get("accuracy_greedy") or {}).get(b)
        print(f"  bin {b:>9}: {acc:.3f}" + (f"   greedy {greedy:.3f}" if greedy is not None else ""))
    for k, accs in (summary.get("accuracy_heads") or {}).items():  # multi-token prediction (n_predict > 1)
        print(f"  {k} token(s) per pass: " + "  ".join(f"{b}: {a:.3f}" for b, a in accs.items()))
    print(f"run directory: {out}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    import time

    from tinyformer.config import flatten_dotted, parse_overrides
    from tinyformer.lab import reproduce
    from tinyformer.lab.report import load_published

    if args.scale not in reproduce.SCALES:
        from tinyformer.errors import TinyformerError

        raise TinyformerError(f"unknown scale {args.scale!r}; use --scale cpu or --scale full")
    results = args.results or Path("results") / f"reproduce-{args.scale}"
    overrides = flatten_dotted(parse_overrides(args.overrides))
    start = time.perf_counter()
    chosen = {"rows": _csv(args.rows), "schemes": _csv(args.schemes), "overrides": overrides}
    records = reproduce.reproduce(args.scale, results, _executor(args), seeds=_csv(args.seeds, int), **chosen)
    aggregated = reproduce.aggregate(records, args.scale, reproduce.skipped(args.scale, **chosen))
    paths = reproduce.write(results, aggregated, args.scale, load_published())
    print()
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"{len(records)} runs in {(time.perf_counter() - start) / 60:.1f} min (runs already finished were read back)")
    for what, path in paths.items():
        print(f"{what}: {path}")
    return 0
