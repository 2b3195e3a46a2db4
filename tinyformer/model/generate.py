"""Batched sampling with a KV cache: greedy at temperature 0, top-k, top-p, stop tokens, seeded generator,
and `vocab_limit` (a model whose vocabulary is padded past its tokenizer's never emits a padding id).

Batches of unequal prompts are left-padded (attention_mask 0 on the left); each row's positions count its
real tokens from 0, so a padded row generates exactly what it would alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from tinyformer.errors import TinyformerError
from tinyformer.model.memory import kv_cache_bytes, require_fits

NextPositions = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top k and outside the smallest set whose probability reaches top_p."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token is always kept)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    vocab_limit: int | None = None,
) -> torch.Tensor:
    """One token per row from last-position logits [B, V]; ids >= `vocab_limit` are never drawn."""
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits = logits[..., :vocab_limit]  # the ids kept are 0..vocab_limit-1, so indices stay ids
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _check_args(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int,
                vocab_limit: int | None = None) -> None:
    if temperature < 0:
        raise TinyformerError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise TinyformerError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise TinyformerError(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise TinyformerError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if vocab_limit is not None and vocab_limit < 1:
        raise TinyformerError(f"vocab_limit must be at least 1, got {vocab_limit}")


@torch.no_grad()
def generate(
    model,
    ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Iterable[int] | None = None,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    next_position_ids: NextPositions | None = None,
    use_cache: bool = True,
    vocab_limit: int | None = None,
) -> torch.Tensor:
    """Prompt ids [B, T] (or [T]) -> [B, T + n] with n <= max_new_tokens new tokens (stops early once every row
    has emitted a stop token; a finished row repeats its stop token).

    attention_mask: [B, T], 0 marks left padding. position_ids: the prompt's positions ([T] or [B, T]);
    next_position_ids(ids, positions) -> [B] gives the position of the token just appended to `ids` (so
    `positions` is one column shorter); default: last position + 1. Abacus callers pass a function that counts
    digits. seed makes sampling reproducible. use_cache=False
    recomputes the whole sequence every step (the reference the cache is tested against). vocab_limit: only
    ids below it are drawn (the tokenizer's size when the model's vocabulary is padded past it).
    """
    _check_args(temperature, top_k, top_p, max_new_tokens, vocab_limit)
    squeeze = ids.dim() == 1
    ids = ids.unsqueeze(0) if squeeze else ids
    device = ids.device
    b, t = ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(ids)
    attention_mask = attention_mask.to(device).long()
    positions = model.resolve_positions(ids, position_ids, attention_mask).expand(b, t).clone()
    cfg = model.config
    if cfg.scheme.has_table and next_position_ids is None:
        last = int(positions.max()) + max_new_tokens - 1
        if last >= cfg.position_table_size:
            raise TinyformerError(
                f"generating {max_new_tokens} tokens reaches position {last}, beyond the {cfg.position} "
                f"position table (0..{cfg.position_table_size - 1}); ask for fewer tokens or a shorter prompt"
            )
    if use_cache:  # refused before the cache is allocated
        require_fits(kv_cache_bytes(cfg, b, t + max_new_tokens), device, f"a KV cache for {b} x "
                     f"{t + max_new_tokens:,} tokens", "ask for fewer new tokens (--max-new-tokens)")
    stop = torch.tensor(sorted(set(stop_tokens or ())), dtype=torch.long, device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)

    was_training = model.training
    model.eval()
    try:
        cache = model.new_kv_cache(b, t + max_new_tokens) if use_cache else None
        step_ids, step_pos, step_mask = ids, positions, attention_mask
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            if cache is None:  # recompute everything
                logits, _ = model(ids, position_ids=positions, attention_mask=attention_mask)
            else:
                logits, _ = model(step_ids, position_ids=step_pos, attention_mask=step_mask, kv_cache=cache)
            token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator, vocab_limit)
            token = torch.where(finished, ids[:, -1], token)
            if stop.numel():
                finished = finished | torch.isin(token, stop)
            ids = torch.cat((ids, token[:, None]), dim=1)
            next_pos = (
                positions[:, -1] + 1 if next_position_ids is None else next_position_ids(ids, positions)
            )
            positions = torch.cat((positions, torch.as_tensor(next_pos, device=device).view(b, 1)), dim=1)
            attention_mask = torch.cat((attention_mask, torch.ones_like(token[:, None])), dim=1)
            step_ids, step_pos, step_mask = ids[:, -1:], positions[:, -1:], attention_mask[:, -1:]
            if bool(finished.all()):
                break
    finally:
        model.train(was_training)
    return ids[0] if squeeze else ids
