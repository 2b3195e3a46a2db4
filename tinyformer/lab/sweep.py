"""Sweeps over a YAML grid (resumable, one JSON line per finished run) and best-config re-runs over seeds.

A grid file maps `LengenConfig` fields to a list of values (every combination is run) or to one value
(fixed for all). Rows go to `RESULTS/<TASK>/summary-<pe>.jsonl`; a row's `key` is a hash of its full
config, so an interrupted sweep skips what is already there and runs only the rest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from tinyformer.config import from_dict, read_yaml, to_dict
from tinyformer.errors import TinyformerError
from tinyformer.lab.config import LengenConfig

DEFAULT_GRID = {
    "layers": [2, 4],
    "heads": [4, 8],
    "d_model": [64, 128, 256],
    "lr": [1e-3, 1e-4],
    "batch_size": 64,
    "steps": 30000,
    "weight_decay": 0.01,
}
DEFAULT_SEEDS = (0, 1, 2)
# fields that change how a run is carried out or logged, not what it computes
NOT_IN_KEY = ("device", "threads", "log_every", "eval_batch_size")


def config_key(cfg: LengenConfig) -> str:
    """A short, stable hash of everything that determines a run's result."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in NOT_IN_KEY}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def run_name(cfg: LengenConfig) -> str:
    return f"L{cfg.layers}-H{cfg.heads}-D{cfg.d_model}-lr{cfg.lr:g}-s{cfg.seed}-{config_key(cfg)[:8]}"


def load_grid(path: str | Path | None) -> dict:
    """The grid as {field: [values]}: the default grid, or a YAML file checked field by field."""
    raw = DEFAULT_GRID if path is None else read_yaml(path)
    if not raw:
        raise TinyformerError(f"grid file {path} is empty; give fields with lists of values, e.g. lr: [1e-3, 1e-4]")
    grid = {k: _values(k, v) for k, v in raw.items()}
    for name in ("task", "pe"):
        if name in grid:
            raise TinyformerError(f"grid file {path} sets {name!r}; pass it with --{name} instead")
    for key, values in grid.items():
        if not values:
            raise TinyformerError(f"grid file {path}: {key} has an empty list of values")
    # validate every field name and value type now, not after hours of sweeping
    where = f"grid file {path}" if path else "default grid"
    for combo in combinations(grid):
        try:
            from_dict(LengenConfig, combo)
        except TinyformerError as exc:
            raise TinyformerError(f"{where}: {exc}") from None
    return grid


def _values(key: str, value) -> list:
    """A grid entry as a list of values. For list-valued settings (eval_bins) a flat list is one value."""
    if not isinstance(value, (list, tuple)):
        return [value]
    if key in LIST_FIELDS and not any(isinstance(v, (list, tuple)) for v in value):
        return [list(value)]
    return list(value)


LIST_FIELDS = ("eval_bins",)


def combinations(grid: dict) -> list[dict]:
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
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):  # a torn last line from an interrupted write: drop it
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def summary_path(results: Path, task: str, pe: str) -> Path:
    return Path(results) / task / f"summary-{pe}.jsonl"


def make_row(cfg: LengenConfig, result: dict, run_dir: Path | None) -> dict:
    return {
        "key": config_key(cfg),
        "task": cfg.task,
        "pe": cfg.pe,
        "seed": cfg.seed,
        "layers": cfg.layers,
        "heads": cfg.heads,
        "d_model": cfg.d_model,
        "lr": cfg.lr,
        "steps": result["steps"],
        "stopped_early": result["stopped_early"],
        "accuracy": result["accuracy"],
        "accuracy_greedy": result.get("accuracy_greedy"),
        "train_seconds": result["train_seconds"],
        "run_dir": str(run_dir) if run_dir else None,
        "config": to_dict(cfg),
    }


TrainFn = Callable[[LengenConfig, Path], dict]


def default_train(cfg: LengenConfig, run_dir: Path, log: Callable[[str], None] = print) -> dict:
    from tinyformer.lab.train import train_run

    # force: a run dir without a summary row is a run interrupted after it finished writing; redo it
    return train_run(cfg, run_dir, force=True, log=log)


def sweep(base: dict, grid: dict, results: str | Path, *, train: TrainFn | None = None,
          log: Callable[[str], None] = print) -> list[dict]:
    """Run every grid combination on top of `base` (task, pe and fixed settings) not yet in the summary."""
    results = Path(results)
    configs = [from_dict(LengenConfig, {**base, **combo}) for combo in combinations(grid)]
    path = summary_path(results, configs[0].task, configs[0].pe)
    done = {row["key"] for row in read_rows(path)}
    todo = [c for c in configs if config_key(c) not in done]
    log(f"sweep {configs[0].task} / {configs[0].pe}: {len(configs)} combinations, {len(configs) - len(todo)} "
        f"already in {path}, {len(todo)} to run")
    rows = []
    for i, cfg in enumerate(todo, 1):
        run_dir = results / cfg.task / "runs" / cfg.pe / run_name(cfg)
        log(f"[{i}/{len(todo)}] {run_name(cfg)}")
        result = (train or (lambda c, d: default_train(c, d, log)))(cfg, run_dir)
        row = make_row(cfg, result, run_dir)
        append_row(path, row)
        rows.append(row)
    return rows


def best_row(rows: list[dict], by: str) -> dict:
    """The row with the highest accuracy on bin `by` (ties: higher mean over bins, then fewer steps)."""
    if not rows:
        raise TinyformerError("the summary has no rows; run `tinyformer lengen sweep` first")
    if any(by not in r["accuracy"] for r in rows):
        bins = sorted({b for r in rows for b in r["accuracy"]})
        raise TinyformerError(f"bin {by!r} is not in every summary row; bins present: {', '.join(bins)}")
    return max(rows, key=lambda r: (r["accuracy"][by], statistics.fmean(r["accuracy"].values()), -r["steps"]))


def spread(rows: list[dict], field: str = "accuracy") -> dict:
    """Per bin: mean, sample standard deviation, min and max over the rows (seeds)."""
    out = {}
    for b in rows[0][field]:
        values = [r[field][b] for r in rows]
        out[b] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    return out


def best(task: str, pe: str, results: str | Path, *, by: str = "51-100", seeds=DEFAULT_SEEDS,
         train: TrainFn | None = None, log: Callable[[str], None] = print) -> dict:
    """Re-run the best summary row with each seed; write best-<pe>.jsonl (rows) and best-<pe>.json (spread)."""
    results = Path(results)
    path = summary_path(results, task, pe)
    rows = read_rows(path)
    if not rows:
        raise TinyformerError(f"no sweep results in {path}; run `tinyformer lengen sweep --task {task} --pe {pe}` first")
    top = best_row(rows, by)
    log(f"best {task} / {pe} by bin {by}: {run_name(from_dict(LengenConfig, top['config']))} "
        f"({by}: {top['accuracy'][by]:.3f})")
    seed_path = results / task / f"best-{pe}.jsonl"
    # a deterministic run already done (in the sweep or an earlier `best`) is reused
    known = {r["key"]: r for r in read_rows(seed_path) + rows}
    seed_rows = []
    for seed in seeds:
        cfg = from_dict(LengenConfig, {**top["config"], "seed": seed})
        key = config_key(cfg)
        if key in known:
            log(f"  seed {seed}: already run")
            row = known[key]
        else:
            log(f"  seed {seed}: training")
            run_dir = results / task / "runs" / pe / run_name(cfg)
            result = (train or (lambda c, d: default_train(c, d, log)))(cfg, run_dir)
            row = make_row(cfg, result, run_dir)
            append_row(seed_path, row)
            known[key] = row
        seed_rows.append(row)
    summary = {
        "task": task,
        "pe": pe,
        "by": by,
        "seeds": list(seeds),
        "config": {k: v for k, v in top["config"].items() if k != "seed"},
        "accuracy": spread(seed_rows),
        "per_seed": {str(r["seed"]): r["accuracy"] for r in seed_rows},
    }
    if all(r.get("accuracy_greedy") for r in seed_rows):
        summary["accuracy_greedy"] = spread(seed_rows, "accuracy_greedy")
    from tinyformer.fileio import atomic_write

    with atomic_write(results / task / f"best-{pe}.json") as f:
        f.write(json.dumps(summary, indent=2) + "\n")
    return summary
