"""Training throughput on this machine: tokens/s and MFU of full training steps (forward, backward, AdamW)
for the TinyStories preset shape and the Shakespeare CPU recipe, in fp32 and bf16 autocast.

MFU is measured against float32 and bf16 matmul ceilings (square matmuls) timed in the same run, just
before each measurement, so machine load affects both sides alike. Targets (CPU): fp32 MFU >= 65%, and
the best precision >= 1.3x fp32 tokens/s.

    .venv/bin/python bench/train.py [--steps 20] [--threads N] [--compile] [--shapes tinystories,shakespeare]
"""

from __future__ import annotations

import argparse
import time

import torch

from tinyformer.model import ModelConfig, Transformer
from tinyformer.train.metrics import matmul_ceiling
from tinyformer.train.optim import build_optimizer
from tinyformer.train.runtime import autocast, sdpa_backend

SHAPES = {
    # configs/tinystories.yaml: 4 layers, d_model 256, 8 heads, d_ff 1024, context 256, batch 16, vocab 10000
    "tinystories": (dict(preset="gpt2", vocab_size=10000, n_layers=4, n_heads=8, d_model=256, d_ff=1024,
                         max_seq_len=256), 16),
    # configs/shakespeare-char.yaml: 4 layers, 4 heads, d_model 128, context 64, batch 12, byte vocab
    "shakespeare": (dict(preset="gpt2", vocab_size=256, n_layers=4, n_heads=4, d_model=128, max_seq_len=64,
                         bias=False), 12),
}


def build(shape: str) -> tuple[Transformer, int, int]:
    fields, batch = SHAPES[shape]
    fields = dict(fields)
    cfg = ModelConfig.preset(fields.pop("preset"), **fields)
    torch.manual_seed(0)
    return Transformer(cfg), batch, cfg.max_seq_len


def tokens_per_second(model, batch: int, seq_len: int, precision: str, steps: int, compiled: bool,
                      attention: str = "auto") -> float:
    """Median-of-steps throughput of full optimizer steps (after warm-up)."""
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.1)
    step_model = torch.compile(model) if compiled else model
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len))
    device = torch.device("cpu")
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        with sdpa_backend(attention):
            with autocast(device, precision):
                _, loss = step_model(ids, targets=ids)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 3:  # warm-up: allocation, kernel selection, compilation
            times.append(time.perf_counter() - t0)
    times.sort()
    return batch * seq_len / times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd steps")
    parser.add_argument("--shapes", default="tinystories,shakespeare")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'shape':12} {'precision':9} {'compile':7} {'attention':9} {'tokens/s':>10} {'ceiling GF/s':>12} "
          f"{'MFU':>6} {'MFU vs fp32 ceil':>16}")
    for shape in args.shapes.split(","):
        model, batch, seq_len = build(shape)
        fpt = model.flops_per_token(seq_len)
        results = {}
        variants = [(p, c, a) for c in ([False, True] if args.compile else [False]) for p in ("fp32", "bf16")
                    for a in ("auto", "math")]
        for precision, compiled, attention in variants:
            # ceilings measured right before and right after the steps; the higher one counts, so a
            # burst of load from other processes during one measurement cannot inflate MFU
            before = {p: matmul_ceiling("cpu", p) for p in {"fp32", precision}}
            tps = tokens_per_second(model, batch, seq_len, precision, args.steps, compiled, attention)
            after = {p: matmul_ceiling("cpu", p) for p in {"fp32", precision}}
            fp32_ceiling = max(before["fp32"], after["fp32"])
            ceiling = max(before[precision], after[precision])
            results[(precision, compiled, attention)] = tps
            print(f"{shape:12} {precision:9} {str(compiled):7} {attention:9} {tps:10,.0f} "
                  f"{ceiling / 1e9:12.1f} {tps * fpt / ceiling:6.1%} {tps * fpt / fp32_ceiling:16.1%}")
        fp32 = results[("fp32", False, "auto")]
        best_key = max(results, key=results.get)
        print(f"{shape}: best {best_key[0]}{' compiled' if best_key[1] else ''} {best_key[2]} attention = "
              f"{results[best_key] / fp32:.2f}x "
              f"fp32 eager tokens/s ({fpt / 1e6:.2f} MFLOP/token)")


if __name__ == "__main__":
    main()
