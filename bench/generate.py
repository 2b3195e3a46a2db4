"""KV-cache generation against recomputing the whole sequence every step, for 512 new tokens (target: >= 5x).

Both paths are greedy from the same prompt and must produce the same tokens; the ratio is printed per shape.

    .venv/bin/python bench/generate.py [--new-tokens 512] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from tinyformer.model import ModelConfig, Transformer

SHAPES = {
    "gpt2 4x128": ModelConfig.preset(
        "gpt2", vocab_size=10000, n_layers=4, n_heads=4, d_model=128, max_seq_len=1024
    ),
    "llama 4x256 gqa": ModelConfig.preset(
        "llama", vocab_size=10000, n_layers=4, n_heads=8, n_kv_heads=4, d_model=256, max_seq_len=1024
    ),
    "alibi 4x128": ModelConfig(
        vocab_size=10000,
        n_layers=4,
        n_heads=4,
        d_model=128,
        position="alibi",
        bias=False,
        mlp="gelu",
        max_seq_len=1024,
    ),
}


def timed_generate(
    model: Transformer, prompt: torch.Tensor, new_tokens: int, use_cache: bool
) -> tuple[float, torch.Tensor]:
    """Seconds for a greedy generation, and its tokens."""
    cuda = prompt.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"device {args.device} ({torch.get_num_threads()} threads), {args.new_tokens} new tokens after a "
        f"{args.prompt_tokens}-token prompt, batch {args.batch}"
    )
    print("| shape | cached s | recomputed s | speed-up | same tokens |")
    print("|---|---|---|---|---|")
    for name, cfg in SHAPES.items():
        torch.manual_seed(0)
        model = Transformer(cfg).to(args.device).eval()
        prompt = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_tokens), device=args.device)
        model.generate(prompt, 8, temperature=0)  # warm-up
        cached_s, cached = timed_generate(model, prompt, args.new_tokens, use_cache=True)
        full_s, full = timed_generate(model, prompt, args.new_tokens, use_cache=False)
        print(
            f"| {name} | {cached_s:.2f} | {full_s:.2f} | {full_s / cached_s:.1f}x | {torch.equal(cached, full)} |"
        )


if __name__ == "__main__":
    main()
