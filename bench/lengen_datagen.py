"""Is the task data generator ever the bottleneck? Examples/s it produces vs examples/s a model consumes.

For every task: examples/s of `TaskStream.next_batch()` (batch 64, lengths 1-50, ready torch tensors) and
examples/s of one training step (forward, backward, AdamW) of a model on the same batches, measured in this
one run. The ratio generator/consumer must stay well above 1: then the generator costs a small fraction
of each step. Run: `.venv/bin/python bench/lengen_datagen.py [--model 4x4x256] [--seconds 2]`.
"""

from __future__ import annotations

import argparse
import time

import torch

from tinyformer.lab.setup import TaskSetup, model_position
from tinyformer.lab.sweep import lab_config
from tinyformer.model import Transformer
from tinyformer.tasks import TaskStream, get_task, task_names
from tinyformer.train.optim import build_optimizer


def rate(fn, seconds: float, per_call: int) -> float:
    """Calls of `fn` for about `seconds` (after one warm-up call), as examples per second."""
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * per_call / (time.perf_counter() - start)


def model_rate(name: str, layers: int, heads: int, d_model: int, args, stream: TaskStream) -> float:
    """Examples/s of full training steps of the consuming model on batches of this task."""
    cfg = lab_config({"task.name": name, "model.position": model_position(args.pe), "model.n_layers": layers,
                      "model.n_heads": heads, "model.d_model": d_model, "eval.examples": 8})
    torch.manual_seed(0)
    model = Transformer(TaskSetup(cfg).model_config()).to(args.device)
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.01)
    batches = [{k: v.to(args.device) for k, v in stream.next_batch().items()} for _ in range(8)]
    counter = [0]

    def step() -> None:
        b = batches[counter[0] % len(batches)]
        counter[0] += 1
        _, loss = model(b["ids"], targets=b["targets"], position_ids=b["position_ids"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    return rate(step, args.seconds, args.batch_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="4x4x256", help="LAYERSxHEADSxD_MODEL of the consuming model")
    ap.add_argument("--pe", default="ape")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--tasks", default=",".join(task_names()))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers, heads, d_model = (int(x) for x in args.model.split("x"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"consumer {args.model} ({args.pe}), batch {args.batch_size}, train lengths 1-50")
    print(f"{'task':>9} {'generator ex/s':>15} {'model ex/s':>11} {'ratio':>7} {'gen share of a step':>20}")
    for name in args.tasks.split(","):
        stream = TaskStream(get_task(name), (1, 50), batch_size=args.batch_size, seed=0)
        gen = rate(stream.next_batch, args.seconds, args.batch_size)
        used = model_rate(name, layers, heads, d_model, args, stream)
        print(f"{name:>9} {gen:>15,.0f} {used:>11,.0f} {gen / used:>7.1f} {used / (gen + used):>19.1%}")


if __name__ == "__main__":
    main()
