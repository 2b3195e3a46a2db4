"""Sweeps over a YAML grid (resumable, one JSON line per finished run) and best-config re-runs over seeds.

Every setting is a dotted RunConfig key on top of the lab preset (tinyformer/presets/lengen.yaml): a grid
file maps keys to a list of values (every combination is run) or to one value (fixed for all), e.g.
`model.n_layers: [2, 4]`, `train.lr: [1e-3, 1e-4]`. Rows go to `RESULTS/<TASK>/summary-<scheme>.jsonl`; a
row's `key` is a hash of its full config, so an interrupted sweep skips what is already there, and a run
interrupted midway resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tinyformer.config import deep_merge, flatten_dotted, nest_dotted, read_yaml
from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write, directory_lock
from tinyformer.lab.executor import one_thread, stop_if_interrupted
from tinyformer.lab.run import result_row, train_task
from tinyformer.lab.setup import scheme_label
from tinyformer.train.config import RunConfig, preset_path, run_config_from_dict, saved_dict
from tinyformer.train.stats import spread
from tinyformer.train.status import DONE, FINISHED

DEFAULT_GRID = {
    "model.n_layers": [2, 4],
    "model.n_heads": [4, 8],
    "model.d_model": [64, 128, 256],
    "train.lr": [1e-3, 1e-4],
}
DEFAULT_SEEDS = (0, 1, 2)
# settings that change how a run is carried out or logged, not what it computes
NOT_IN_KEY = ("run_dir", "resume", "train.device", "train.threads", "train.log_every", "train.progress",
              "train.loggers", "train.tracker_project", "train.ckpt_every", "train.keep_last", "train.stop_at_step",
              "eval.batch_size", "train.dist_backend", "train.dist_timeout", "train.peak_flops", "train.reuse_memory")

Settings = dict[str, Any]  # dotted RunConfig key -> value


def lab_config(settings: Mapping[str, Any], config_file: str | Path | None = None) -> RunConfig:
    """The lab preset, then `config_file`, then `settings` (dotted keys) -> a task RunConfig."""
    data = read_yaml(preset_path("lengen"))
    if config_file:
        data = deep_merge(data, read_yaml(config_file))
    cfg = run_config_from_dict(deep_merge(data, nest_dotted(dict(settings))))
    if cfg.task is None:
        raise TinyformerError("a lab run needs a task section; set task.name (for example task.name=UR)")
    return cfg


def config_key(cfg: RunConfig) -> str:
    """A short, stable hash of everything that determines a run's result."""
    flat = flatten_dotted(saved_dict(cfg))
    d = {k: v for k, v in flat.items() if k not in NOT_IN_KEY}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]




def typed_settings(settings: Mapping[str, Any], cfg: RunConfig) -> Settings:
    """`settings` with each value as the config holds it (600, not the "600" a command line gave)."""
    resolved = flatten_dotted(saved_dict(cfg))
    return {k: resolved.get(k, v) for k, v in settings.items()}


def run_name(cfg: RunConfig) -> str:
    m, t = cfg.model, cfg.train
    return f"L{m.n_layers}-H{m.n_heads}-D{m.d_model}-lr{t.lr:g}-s{t.seed}-{config_key(cfg)[:8]}"


def run_path(results: str | Path, cfg: RunConfig) -> Path:
    """Where `lengen` puts a run: RESULTS/TASK/runs/SCHEME/NAME (NAME from the settings and a config hash)."""
    return Path(results) / cfg.task.name / "runs" / scheme_label(cfg.model.position) / run_name(cfg)


def load_grid(path: str | Path | None, base: Settings | None = None) -> dict[str, list]:
    """The grid as {dotted key: [values]}: the default grid, or a YAML file checked key by key."""
    raw = DEFAULT_GRID if path is None else read_yaml(path)
    if not raw:
        raise TinyformerError(f"grid file {path} is empty; give keys with lists of values, e.g. train.lr: [1e-3, 1e-4]")
    grid = {str(k): _values(str(k), v) for k, v in _flatten_grid(raw).items()}
    for key in ("task.name", "model.position"):
        if key in grid:
            raise TinyformerError(f"grid file {path} sets {key!r}; pass it with --{'task' if key == 'task.name' else 'pe'}")
    for key, values in grid.items():
        if not values:
            raise TinyformerError(f"grid file {path}: {key} has an empty list of values")
    # validate every key and value type now, not after hours of sweeping
    where = f"grid file {path}" if path else "default grid"
    for combo in combinations(grid):
        try:
            lab_config({**(base or {}), **combo})
        except TinyformerError as exc:
            raise TinyformerError(f"{where}: {exc}") from None
    return grid


def _flatten_grid(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Grid files may nest sections (`train: {lr: [...]}`) or use dotted keys (`train.lr: [...]`)."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, Mapping):
            out.update({f"{k}.{kk}": vv for kk, vv in _flatten_grid(v).items()})
        else:
            out[str(k)] = v
    return out


LIST_KEYS = ("eval.bins",)


def _values(key: str, value) -> list:
    """A grid entry as a list of values. For list-valued settings (eval.bins) a flat list is one value."""
    if not isinstance(value, (list, tuple)):
        return [value]
    if key in LIST_KEYS and not any(isinstance(v, (list, tuple)) for v in value):
        return [list(value)]
    return list(value)


def combinations(grid: Mapping[str, list]) -> list[Settings]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def read_rows(path: Path) -> list[dict]:
    """The rows of a summary file; a torn last line (an interrupted write) is ignored."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise TinyformerError(f"{path} line {number} is not valid JSON; remove or fix that line") from None
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append one JSON line and fsync, so a finished run is never lost to a later interruption."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # a torn last line from an interrupted write: drop it
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def summary_path(results: Path, task: str, scheme: str) -> Path:
    return Path(results) / task / f"summary-{scheme}.jsonl"


def make_row(cfg: RunConfig, settings: Settings, result: dict, run_dir: Path | None) -> dict:
    return {
        "key": config_key(cfg),
        "task": cfg.task.name,
        "pe": scheme_label(cfg.model.position),
        "seed": cfg.train.seed,
        "layers": cfg.model.n_layers,
        "heads": cfg.model.n_heads,
        "d_model": cfg.model.d_model,
        "lr": cfg.train.lr,
        **result,
        "run_dir": str(run_dir) if run_dir else None,
        "settings": settings,
    }


TrainFn = Callable[[RunConfig, Path], dict]


def default_train(cfg: RunConfig, run_dir: Path) -> dict:
    """Train (or resume, or read back a finished) run in `run_dir`: the result fields of its summary."""
    return result_row(train_task(dataclasses.replace(cfg, run_dir=str(run_dir), model_keys=cfg.model_keys)))


def _run_all(jobs: list[tuple[Settings, RunConfig, Path]], train: TrainFn | None, executor, log):
    """Yield (settings, cfg, run_dir, result) as runs finish: through `train` one after another (tests), or
    through the executor (worker processes, or Ray). A run stopped by a signal ends it: `Interrupted` is
    raised once that run is yielded (the executor waits for the runs under way to save)."""
    if train is not None or executor is None:
        for settings, cfg, run_dir in jobs:
            log(f"  {run_name(cfg)}")
            result = (train or default_train)(cfg, run_dir)
            yield settings, cfg, run_dir, result
            stop_if_interrupted(result)  # a signal stops the sweep, not only its run
        return
    cfgs = [one_thread(dataclasses.replace(c, run_dir=str(d), model_keys=c.model_keys)) for _, c, d in jobs]
    for i, summary in executor.map(train_task, cfgs):
        settings, cfg, run_dir = jobs[i]
        log(f"  done: {run_name(cfg)}")
        yield settings, cfg, run_dir, result_row(summary)


def sweep(base: Settings, grid: Mapping[str, list], results: str | Path, *, train: TrainFn | None = None,
          executor=None, log: Callable[[str], None] = print) -> list[dict]:
    """Run every grid combination on top of `base` (task, scheme and fixed settings) not yet in the summary;
    `results` is locked meanwhile, so a second sweep on it refuses instead of running the grid twice."""
    with directory_lock(results, "sweep results directory"):
        return _sweep(base, grid, Path(results), train, executor, log)


def _sweep(base: Settings, grid: Mapping[str, list], results: Path, train: TrainFn | None, executor,
           log: Callable[[str], None]) -> list[dict]:
    todo_all = [({**base, **combo}) for combo in combinations(grid)]
    configs = [(s, lab_config(s)) for s in todo_all]
    first = configs[0][1]
    path = summary_path(results, first.task.name, scheme_label(first.model.position))
    done = {row["key"] for row in read_rows(path)}
    todo = [(s, c) for s, c in configs if config_key(c) not in done]
    log(f"sweep {first.task.name} / {scheme_label(first.model.position)}: {len(configs)} combination(s), "
        f"{len(configs) - len(todo)} already in {path}, {len(todo)} to run")
    rows = []
    jobs = [(settings, cfg, run_path(results, cfg)) for settings, cfg in todo]
    for settings, cfg, run_dir, result in _run_all(jobs, train, executor, log):
        if _unfinished(result, run_dir, log):
            continue
        row = make_row(cfg, settings, result, run_dir)
        append_row(path, row)
        rows.append(row)
    return rows


def _unfinished(result: dict, run_dir: Path, log: Callable[[str], None]) -> bool:
    """A run that did not end (interrupted, paused) gets no summary row: the next sweep resumes it."""
    if result.get("status", FINISHED) in DONE:
        return False
    log(f"  {run_dir}: {result['status']}; not recorded, run the command again to continue it")
    return True


def pick_bin(rows: list[dict], by: str | None) -> str:
    """The bin that ranks rows: `by`, or by default the second bin every row has (the first beyond the
    training range in the usual layout), else the only one."""
    if not rows:
        raise TinyformerError("the summary has no rows; run `tinyformer lengen sweep` first")
    common = [b for b in rows[0]["accuracy"] if all(b in r["accuracy"] for r in rows)]
    if by is None:
        if not common:
            raise TinyformerError("the summary rows share no length bin; pass --by BIN")
        return common[1] if len(common) > 1 else common[0]
    if by not in common:
        raise TinyformerError(f"bin {by!r} is not in every summary row; bins present in all: {', '.join(common)}")
    return by


def best_row(rows: list[dict], by: str | None) -> dict:
    """The row with the highest accuracy on bin `by` (see pick_bin; ties: higher mean over bins, then fewer
    steps)."""
    by = pick_bin(rows, by)
    return max(rows, key=lambda r: (r["accuracy"][by], statistics.fmean(r["accuracy"].values()), -r["steps"]))


def spread_per_bin(rows: list[dict], field: str = "accuracy") -> dict:
    """Per bin: mean, sample standard deviation, min and max over the rows (seeds)."""
    return {b: spread([r[field][b] for r in rows]) for b in rows[0][field]}


def best(task: str, pe: str, results: str | Path, *, by: str | None = None, seeds=DEFAULT_SEEDS,
         train: TrainFn | None = None, executor=None, log: Callable[[str], None] = print) -> dict:
    """Re-run the best summary row with each seed; write best-<pe>.jsonl (rows) and best-<pe>.json (spread)."""
    results = Path(results)
    path = summary_path(results, task, pe)
    rows = read_rows(path)
    if not rows:
        raise TinyformerError(f"no sweep results in {path}; run `tinyformer lengen sweep --task {task} --pe {pe}` first")
    by = pick_bin(rows, by)
    top = best_row(rows, by)
    top_cfg = lab_config(top["settings"])
    log(f"best {task} / {pe}: {run_name(top_cfg)}")
    seed_path = results / task / f"best-{pe}.jsonl"
    # a deterministic run already done (in the sweep or an earlier `best`) is reused
    known = {r["key"]: r for r in read_rows(seed_path) + rows}
    by_seed: dict[int, dict] = {}
    jobs = []
    for seed in seeds:
        settings = {**top["settings"], "train.seed": seed}
        cfg = lab_config(settings)
        if config_key(cfg) in known:
            log(f"  seed {seed}: already run")
            by_seed[seed] = known[config_key(cfg)]
        else:
            log(f"  seed {seed}: to train")
            jobs.append((settings, cfg, run_path(results, cfg)))
    for settings, cfg, run_dir, result in _run_all(jobs, train, executor, log):
        if _unfinished(result, run_dir, log):
            continue
        row = make_row(cfg, settings, result, run_dir)
        append_row(seed_path, row)
        by_seed[cfg.train.seed] = row
    missing = [seed for seed in seeds if seed not in by_seed]
    if missing:
        raise TinyformerError(f"seeds {', '.join(map(str, missing))} did not finish; run the command again to "
                              "continue them")
    seed_rows = [by_seed[seed] for seed in seeds]
    summary = {
        "task": task,
        "pe": pe,
        "by": by,
        "seeds": list(seeds),
        "settings": {k: v for k, v in typed_settings(top["settings"], top_cfg).items() if k != "train.seed"},
        "accuracy": spread_per_bin(seed_rows),
        "per_seed": {str(r["seed"]): r["accuracy"] for r in seed_rows},
    }
    if all(r.get("accuracy_greedy") for r in seed_rows):
        summary["accuracy_greedy"] = spread_per_bin(seed_rows, "accuracy_greedy")
    with atomic_write(results / task / f"best-{pe}.json") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
    return summary
