"""Runs per hour of the lab's executor on this machine: N one-thread worker processes against one run after
another, on the same small runs (the CPU-scale reproduction's UR rows, a fixed step budget), in one script run.

    python bench/lengen_executor.py [--runs 8] [--steps 400] [--workers 2]

Each measurement trains fresh run directories; the runs are deterministic, so both passes must give the
same accuracies (checked). Prints runs/hour for both and the ratio, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    from tinyformer.lab import reproduce
    from tinyformer.lab.executor import LocalExecutor, one_thread
    from tinyformer.lab.run import train_task

    overrides = {"train.max_steps": args.steps, "eval.stop_accuracy": 2.0, "train.progress": False,
                 "train.eval_every": args.steps}
    seeds = list(range(args.runs // 2))
    print(f"load {os.getloadavg()[0]:.2f}; {args.runs} runs (UR x ape/rope x {len(seeds)} seeds, CPU scale, "
          f"{args.steps} steps each); {args.workers} workers vs one after another", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, workers in (("one after another", 1), (f"{args.workers} workers", args.workers)):
            jobs = reproduce.plan("cpu", Path(tmp) / name.replace(" ", "-"), rows=["UR"], seeds=seeds,
                                  overrides=overrides)
            start = time.perf_counter()
            out = dict(LocalExecutor(workers).map(train_task, [one_thread(j.cfg) for j in jobs]))
            seconds = time.perf_counter() - start
            results[name] = {"seconds": round(seconds, 1), "runs_per_hour": round(len(jobs) * 3600 / seconds, 1),
                             "accuracy": [out[i]["accuracy"] for i in range(len(jobs))]}
            print(f"  {name:>18}: {seconds:6.1f} s, {results[name]['runs_per_hour']:7.1f} runs/hour", flush=True)
    serial, parallel = results.values()
    assert serial["accuracy"] == parallel["accuracy"], "the executor changed a result"
    print(json.dumps({"load_avg_1m": round(os.getloadavg()[0], 2), "workers": args.workers,
                      "runs": args.runs, "steps": args.steps,
                      "runs_per_hour_serial": serial["runs_per_hour"],
                      "runs_per_hour_workers": parallel["runs_per_hour"],
                      "speedup": round(parallel["runs_per_hour"] / serial["runs_per_hour"], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
