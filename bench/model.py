"""Training throughput of the Transformer: forward + backward tokens/s and model FLOP utilization (MFU).

MFU = tokens/s * model.flops_per_token(T) / ceiling, where the ceiling is a large torch.matmul timed in
this same run for each dtype (float32, and bfloat16 under autocast), so the ratio is hardware-relative.
Shapes come from the `model:` sections of configs/*.yaml (batch from `train.batch_size`, context from
`train.seq_len` or `model.max_seq_len`), or from built-in recipe shapes when there are no configs.

    .venv/bin/python bench/model.py [--device cpu|cuda] [--steps 5] [--configs configs/*.yaml]
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import torch

from tinyformer.config import read_yaml
from tinyformer.model import ModelConfig, Transformer

# (name, model fields, batch, context) used when configs/ has no YAML files
BUILTIN_SHAPES = [
    (
        "shakespeare-char (gpt2)",
        dict(preset="gpt2", vocab_size=65, n_layers=4, n_heads=4, d_model=128, max_seq_len=64),
        12,
        64,
    ),
    (
        "shakespeare-char (llama)",
        dict(preset="llama", vocab_size=65, n_layers=4, n_heads=4, d_model=128, max_seq_len=64),
        12,
        64,
    ),
    (
        "tinystories (gpt2)",
        dict(preset="gpt2", vocab_size=10000, n_layers=4, n_heads=8, d_model=256, d_ff=1024, max_seq_len=256),
        16,
        256,
    ),
    (
        "tinystories (llama)",
        dict(
            preset="llama", vocab_size=10000, n_layers=4, n_heads=8, d_model=256, d_ff=1024, max_seq_len=256
        ),
        16,
        256,
    ),
]


def model_config(fields: dict) -> ModelConfig:
    fields = dict(fields)
    preset = fields.pop("preset", None)
    return ModelConfig.preset(preset, **fields) if preset else ModelConfig.from_dict(fields)


def shapes_from_configs(paths: list[str]) -> list[tuple[str, dict, int, int]]:
    shapes = []
    for path in sorted(paths):
        data = read_yaml(path)
        if not isinstance(data.get("model"), dict):
            continue
        model = data["model"]
        train = data.get("train") or {}
        batch = int(train.get("batch_size", 16))
        context = int(train.get("seq_len") or model.get("max_seq_len", model_config(model).max_seq_len))
        shapes.append((Path(path).stem, model, batch, context))
    return shapes


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_ceiling(device: str, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Best achieved FLOP/s of an n x n x n matmul in `dtype`."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def train_step_time(
    model: Transformer, batch: int, context: int, device: str, dtype: torch.dtype, steps: int
) -> float:
    """Median seconds of one forward + backward (+ a plain SGD-free zero_grad) at [batch, context]."""
    ids = torch.randint(0, model.config.vocab_size, (batch, context + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    times = []
    for i in range(steps + 2):  # two warm-up steps
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            _, loss = model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--configs", nargs="*", default=None, help="YAML files (default: configs/*.yaml)")
    parser.add_argument("--matmul-size", type=int, default=None, help="default: 2048 on CPU, 8192 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    paths = args.configs if args.configs is not None else glob.glob("configs/*.yaml")
    shapes = shapes_from_configs(paths) or BUILTIN_SHAPES
    n = args.matmul_size or (8192 if device.startswith("cuda") else 2048)
    dtypes = {"float32": torch.float32, "bf16": torch.bfloat16}
    ceilings = {name: matmul_ceiling(device, dt, n) for name, dt in dtypes.items()}
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for name, flops in ceilings.items():
        print(f"matmul ceiling {name} ({n}^3): {flops / 1e9:,.1f} GFLOP/s")
    print()
    print("| shape | params | batch x ctx | dtype | tokens/s | model GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for name, fields, batch, context in shapes:
        cfg = model_config(fields)
        model = Transformer(cfg).to(device).train()
        flops_per_token = model.flops_per_token(context)
        for dtype_name, dtype in dtypes.items():
            seconds = train_step_time(model, batch, context, device, dtype, args.steps)
            tokens_per_s = batch * context / seconds
            achieved = tokens_per_s * flops_per_token
            print(
                f"| {name} | {model.num_params() / 1e6:.2f}M | {batch} x {context} | {dtype_name} | "
                f"{tokens_per_s:,.0f} | {achieved / 1e9:,.1f} | {achieved / ceilings[dtype_name]:.1%} |"
            )


if __name__ == "__main__":
    main()
