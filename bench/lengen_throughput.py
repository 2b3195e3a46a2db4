"""Lab training throughput through the one engine: examples/s of the published length-generalization
configuration (4 layers, 4 heads, d_model 256, lengths 1-50, batch 64) with `train.precision=auto` against
float32, measured in one run, interleaved in pairs (fp32, auto, then auto, fp32, ...), on the presets as shipped.
The headline ratio is the median of the rounds' own auto / fp32 ratios: the two runs of a round are tens of seconds
apart, so a machine whose speed drifts over a run (shared hosts do, by 10-20%) moves both.

    python bench/lengen_throughput.py [--task UR] [--pe ape] [--steps 40] [--repeats 6] [--threads N]
    python bench/lengen_throughput.py --old-tree DIR   # also the pre-engine loop, from a worktree of an old commit

Each measurement is a real `lengen` run (engine, checkpoint at the end, no evaluation until the last step)
in a fresh Python process of its own, so no run inherits another's allocator, thread or import state;
examples/s is read from metrics.jsonl, leaving out the first logging window (warm-up). The engine trains
each batch as groups of rows of similar length (`tinyformer.batch.split_by_length`); the old loop computes
every row to the batch's longest. `--old-tree` runs
the lab's former own loop (`tinyformer.lab.train.train_run`, removed by the engine change) from a git
worktree of the commit before it, the same way, on the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {"model.n_layers": 4, "model.n_heads": 4, "model.d_model": 256, "task.train_lengths": "1-50",
            "train.batch_size": 64, "eval.bins": ["1-50"], "eval.examples": 8, "eval.greedy": False,
            "train.eval_every": 0, "train.progress": False, "eval.stop_accuracy": 2.0, "train.warmup": 5}


def engine_run(task: str, pe: str, precision: str, steps: int, log_every: int, threads: int | None,
               run_dir: Path) -> tuple[float, str]:
    """(examples/s after the first logging window, the precision and attention kernel the run used) of one
    engine run, in this process."""
    import shutil

    from tinyformer.lab.run import train_task
    from tinyformer.lab.setup import model_position
    from tinyformer.lab.sweep import lab_config

    shutil.rmtree(run_dir, ignore_errors=True)
    settings = {**SETTINGS, "task.name": task, "model.position": model_position(pe), "train.max_steps": steps,
                "train.log_every": log_every, "train.precision": precision, "run_dir": str(run_dir)}
    if threads:
        settings["train.threads"] = threads
    summary = train_task(lab_config(settings))
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["examples_per_s"] for r in records if r["kind"] == "train"][1:]
    kernel = (summary.get("autotune") or {}).get("sdpa_backend", "auto")
    return statistics.fmean(rates), f"{summary['precision']}, {kernel} attention"


ENGINE = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
from lengen_throughput import engine_run
task, pe, precision, steps, log_every, threads, out = sys.argv[2:9]
if int(threads):
    torch.set_num_threads(int(threads))
print(json.dumps(engine_run(task, pe, precision, int(steps), int(log_every), int(threads) or None, Path(out))))
"""


def engine_rate(task: str, pe: str, precision: str, steps: int, log_every: int, threads: int | None,
                run_dir: Path) -> tuple[float, str]:
    """`engine_run` in a fresh process."""
    args = [str(Path(__file__).parent), task, pe, precision, str(steps), str(log_every), str(threads or 0), str(run_dir)]
    proc = subprocess.run([sys.executable, "-c", ENGINE, *args], capture_output=True, text=True, check=True)
    rate, used = json.loads(proc.stdout.strip().splitlines()[-1])
    return rate, used


OLD_LOOP = r"""
import json, sys
from tinyformer.lab.config import LengenConfig
from tinyformer.lab.train import train_run
task, pe, steps, log_every, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cfg = LengenConfig(task=task, pe=pe, layers=4, heads=4, d_model=256, train_lengths="1-50", batch_size=64,
                   eval_bins=["1-50"], eval_examples=8, greedy=False, steps=steps, eval_every=steps, warmup=5,
                   log_every=log_every, stop_accuracy=2.0, device="cpu")
train_run(cfg, out, force=True, log=lambda s: None)
rates = [r["examples_per_s"] for r in map(json.loads, open(out + "/metrics.jsonl")) if "examples_per_s" in r][1:]
print(sum(rates) / len(rates))
"""


def old_rate(tree: Path, task: str, pe: str, steps: int, log_every: int, threads: int | None, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, "-c", OLD_LOOP, task, pe, str(steps), str(log_every), str(out)],
                          env=env, cwd=tree, capture_output=True, text=True, check=True)  # cwd: "" is first on sys.path
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="UR")
    ap.add_argument("--pe", default="ape")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's, as shipped)")
    ap.add_argument("--old-tree", type=Path, help="a git worktree of the commit before the engine change")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.2f}; "
          f"{args.task}/{args.pe}, 4x4x256, lengths 1-50, batch 64, {args.steps} steps per measurement")
    rows: dict[str, list[float]] = {"fp32": [], "auto": [], "old": []}
    chosen = ""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TINYFORMER_CACHE"] = str(Path(tmp) / "cache")  # auto measures now, not from an old cache
        for i in range(args.repeats):
            # fp32, auto in even rounds, auto, fp32 in odd ones: a machine drifting in speed over the minutes
            # of a run favours neither side of a round's pair
            for precision in ("fp32", "auto") if i % 2 == 0 else ("auto", "fp32"):
                rate, used = engine_rate(args.task, args.pe, precision, args.steps, args.log_every, args.threads,
                                         Path(tmp) / f"{precision}-{i}")
                rows[precision].append(rate)
                chosen = used if precision == "auto" else chosen
                print(f"  engine {precision:>4} ({used}): {rate:8.1f} examples/s", flush=True)
            print(f"  round {i + 1}: auto / fp32 {rows['auto'][-1] / rows['fp32'][-1]:.3f}x", flush=True)
            if args.old_tree:
                rate = old_rate(args.old_tree, args.task, args.pe, args.steps, args.log_every, args.threads,
                                Path(tmp) / f"old-{i}")
                rows["old"].append(rate)
                print(f"  old loop fp32: {rate:8.1f} examples/s", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    paired = [a / f for a, f in zip(rows["auto"], rows["fp32"], strict=True)]
    result = {"load_avg_1m": round(os.getloadavg()[0], 2), "threads": torch.get_num_threads(),
              "auto_precision": chosen, **{f"{k}_examples_per_s": round(v, 1) for k, v in med.items()},
              "auto_vs_fp32": round(statistics.median(paired), 3),  # the median of the rounds' own ratios
              "auto_vs_fp32_of_medians": round(med["auto"] / med["fp32"], 3)}
    if "old" in med:
        result["engine_fp32_vs_old_loop"] = round(med["fp32"] / med["old"], 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
