"""FIRE against ALiBi: training steps (forward, backward, AdamW) of the same small model with model.position=alibi
and model.position=fire, on one thread in float32, the two taking turns a block of steps at a time so that load
from other processes weighs on both alike. Prints each one's median step time, the ratio fire / alibi and the
load average before and after. Position ids come as the lab's batches carry them ([batch, seq]) unless
`--ids counted`.

    .venv/bin/python bench/fire.py [--steps 5] [--rounds 6] [--batch 32] [--seq 128] [--ids rows|counted]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time

import torch

from tinyformer.model import ModelConfig, Transformer
from tinyformer.train.optim import build_optimizer

SCHEMES = ("alibi", "fire")


def make(position: str, seq: int) -> tuple[Transformer, torch.optim.Optimizer]:
    """The lab's model shape (tinyformer/presets/lengen.yaml: gpt2 preset, 2 layers, 4 heads, d_model 64)."""
    torch.manual_seed(0)
    cfg = ModelConfig.preset("gpt2", vocab_size=32, n_layers=2, n_heads=4, d_model=64, max_seq_len=seq,
                             position=position, dropout=0.0)
    model = Transformer(cfg).train()
    return model, build_optimizer(model, lr=1e-3, weight_decay=0.01)


def step(model: Transformer, opt: torch.optim.Optimizer, ids: torch.Tensor, position_ids: torch.Tensor | None) -> float:
    start = time.perf_counter()
    _, loss = model(ids[:, :-1], ids[:, 1:], position_ids=position_ids, return_logits=False)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="steps per block")
    p.add_argument("--rounds", type=int, default=6, help="blocks of each scheme, taking turns")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--ids", choices=("rows", "counted"), default="rows",
                   help="rows: position ids [batch, seq] as the lab's batches carry them (default); counted: none "
                   "given, the model counts one row [1, seq] for all")
    args = p.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    ids = torch.randint(0, 32, (args.batch, args.seq + 1), generator=torch.Generator().manual_seed(0))
    position_ids = torch.arange(args.seq).expand(args.batch, args.seq) if args.ids == "rows" else None
    runs = {name: make(name, args.seq) for name in SCHEMES}
    times: dict[str, list[float]] = {name: [] for name in SCHEMES}
    for name in SCHEMES:  # warm-up, not timed
        step(*runs[name], ids, position_ids)
    for _ in range(args.rounds):
        for name in SCHEMES:
            times[name] += [step(*runs[name], ids, position_ids) for _ in range(args.steps)]
    load_after = os.getloadavg()
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, 1 thread, "
          f"float32, batch {args.batch} x {args.seq} tokens, 2 layers, 4 heads, d_model 64, "
          f"{args.rounds} rounds of {args.steps} steps each, position ids {args.ids}")
    for name in SCHEMES:
        print(f"{name:6s} median step {median[name] * 1e3:7.1f} ms  (min {min(times[name]) * 1e3:.1f}, "
              f"max {max(times[name]) * 1e3:.1f})")
    print(f"fire / alibi: {median['fire'] / median['alibi']:.2f}x")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


if __name__ == "__main__":
    main()
