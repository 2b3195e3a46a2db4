"""The one decoder-only Transformer: pre-norm blocks whose norm, MLP, biases, heads and position scheme are
all chosen by `ModelConfig`. Module names follow HF Llama (embed_tokens, q_proj, gate_proj, lm_head), so
exports to HF are mostly renames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tinyformer.batch import IGNORE_INDEX
from tinyformer.errors import TinyformerError
from tinyformer.model.attention import Attention, AttentionMask, KVCache, build_attention_mask
from tinyformer.model.config import ModelConfig
from tinyformer.model.generate import generate as generate_tokens
from tinyformer.model.kernels import gelu_tanh
from tinyformer.model.loss import FUSED_MIN_VOCAB, linear_cross_entropy
from tinyformer.model.norms import make_norm
from tinyformer.model.positions import RELATIVE


def relu2(x: torch.Tensor) -> torch.Tensor:
    """ReLU squared, relu(x)**2 (So et al. 2021, "Primer"; modded-nanogpt's MLP activation)."""
    return F.relu(x).square()


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "relu2": relu2}  # the plain (up -> act -> down) MLPs


class MLP(nn.Module):
    """Plain MLP (up -> gelu / gelu_tanh / relu2 -> down) or SwiGLU (down(silu(gate) * up))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.bias)
        self.activation = ACTIVATIONS.get(cfg.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.activation(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        self.input_layernorm = make_norm(cfg)
        self.self_attn = Attention(cfg, layer_index)
        self.post_attention_layernorm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None = None,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, probs = self.self_attn(self.input_layernorm(x), mask, rope, cache, return_attention)
        x = x + self.dropout(attn)
        x = x + self.dropout(self.mlp(self.post_attention_layernorm(x)))
        return x, probs


def shift_targets(targets: torch.Tensor, k: int) -> torch.Tensor:
    """Targets of head k (predicting token t+k) from next-token targets (targets[:, t] = token t+1):
    head k's target at t is targets[:, t+k-1]; the last k-1 positions have none (-100)."""
    if k == 1:
        return targets
    pad = torch.full_like(targets[:, : k - 1], IGNORE_INDEX)
    return torch.cat((targets[:, k - 1 :], pad), dim=1)[:, : targets.shape[1]]


def target_counts(targets: torch.Tensor, n_predict: int) -> torch.Tensor:
    """Counted targets of each output head in a batch [n_predict]: the `target_counts` of its parts."""
    return torch.stack([(shift_targets(targets, k) != IGNORE_INDEX).sum() for k in range(1, n_predict + 1)])


class Transformer(nn.Module):
    """Decoder-only language model. `forward(ids, targets, position_ids, attention_mask) -> (logits, loss)`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.scheme.has_table:
            self.embed_positions = nn.Embedding(cfg.position_table_size, cfg.d_model)
        if cfg.scheme.learns_bias:  # FIRE, coupled-relative: one learned attention bias shared by every layer
            self.position_bias = cfg.scheme.bias_module(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        # multi-token prediction (Gloeckle et al., 2024): head k >= 2 is one extra block on the trunk's output,
        # sharing the final norm and the unembedding with head 1
        self.mtp_layers = nn.ModuleList(Block(cfg, cfg.n_layers + i) for i in range(cfg.n_predict - 1))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init_weights)
        if cfg.scale_residual_init:
            residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
            for name, p in self.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    nn.init.normal_(p, mean=0.0, std=residual_std)
        if cfg.zero_init_proj:  # after the draws above, so every other weight is the one it would be without it
            for name, p in self.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    nn.init.zeros_(p)
        if cfg.scheme.learns_bias:
            self.position_bias.reset_parameters()  # its own init, not the std-0.02 of the model's matrices

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    # ---------------------------------------------------------------- positions

    def resolve_positions(
        self,
        ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Position ids [B or 1, T]: the caller's, else counted over real tokens (so left padding starts every
        row at 0), continuing after the cache's last position."""
        b, t = ids.shape
        if position_ids is not None:
            position_ids = torch.as_tensor(position_ids, device=ids.device)
            if position_ids.dim() == 1:
                position_ids = position_ids.unsqueeze(0)
            if position_ids.dim() != 2 or position_ids.shape[-1] != t or position_ids.shape[0] not in (1, b):
                raise TinyformerError(
                    f"position_ids has shape {tuple(position_ids.shape)}, expected [{t}] or [{b}, {t}] like ids"
                )
            return position_ids.long()
        scheme = self.config.scheme
        if scheme.needs_caller_ids:
            raise TinyformerError(f"position={scheme.name!r} needs position_ids from the caller ({scheme.summary}, "
                                  "see tinyformer.batch.run_positions)")
        n_past = kv_cache.length if kv_cache is not None else 0
        if attention_mask is None and n_past == 0:
            return torch.arange(t, device=ids.device).unsqueeze(0)
        real = torch.ones_like(ids) if attention_mask is None else attention_mask.long()
        last = kv_cache.positions[:, n_past - 1 : n_past] if n_past else torch.full_like(ids[:, :1], -1)
        return (last + torch.cumsum(real, dim=-1)).clamp(min=0)

    def _check_table(self, position_ids: torch.Tensor, counted: bool) -> None:
        size = self.config.position_table_size
        if counted:  # 0..T-1: known without reading the tensor (no device sync, no torch.compile graph break)
            lo, hi = 0, position_ids.shape[-1] - 1
        else:
            lo, hi = int(position_ids.min()), int(position_ids.max())
        if lo < 0 or hi >= size:
            raise TinyformerError(
                f"position id {hi if hi >= size else lo} is outside the {self.config.position} position table "
                f"(0..{size - 1}); {self.config.position} positions cannot go beyond model.n_positions "
                f"(default max_seq_len): use shorter inputs, or a relative scheme ({', '.join(RELATIVE)})"
            )

    def embed(self, ids: torch.Tensor, position_ids: torch.Tensor, counted: bool = False) -> torch.Tensor:
        """Token embeddings plus the scheme's absolute position information (its table or its fixed vectors),
        if any. `counted` says position_ids is the plain 0..T-1."""
        scheme = self.config.scheme
        x = self.embed_tokens(ids)
        if scheme.has_table:
            self._check_table(position_ids, counted)
            x = x + self.embed_positions(position_ids)
        elif scheme.embedding is not None:
            x = x + scheme.embedding(position_ids, self.config).to(x.dtype)
        return x

    # ---------------------------------------------------------------- forward

    def _trunk(
        self,
        ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        kv_cache: KVCache | None,
        return_attention: bool,
    ):
        """Embeddings and all layers: (hidden states before the final norm, mask, rope tables, attentions)."""
        cfg, scheme = self.config, self.config.scheme
        b, t = ids.shape
        counted = (
            position_ids is None and attention_mask is None and (kv_cache is None or kv_cache.length == 0)
        )
        position_ids = self.resolve_positions(ids, position_ids, attention_mask, kv_cache)
        valid = attention_mask.bool() if attention_mask is not None else None
        n_past = 0
        if kv_cache is not None:
            n_past = kv_cache.length
            kv_cache.append_tokens(position_ids.expand(b, t), valid)
            key_valid = kv_cache.key_valid[:, : n_past + t] if kv_cache.has_padding else None
            key_pos = kv_cache.positions[:, : n_past + t]
        else:
            key_valid = valid if valid is not None and not bool(valid.all()) else None
            key_pos = position_ids
        slopes = scheme.attention_slopes(cfg) if scheme.attention_slopes is not None else None
        bias = self.position_bias(position_ids, key_pos) if scheme.learns_bias else None
        mask = build_attention_mask(t, n_past, key_valid, slopes, position_ids, key_pos, bias)
        rope = scheme.rotation(position_ids, cfg) if scheme.rotates else None

        x = self.dropout(self.embed(ids, position_ids, counted))
        attentions = []
        for layer in self.layers:
            x, probs = layer(x, mask, rope, kv_cache, return_attention)
            attentions.append(probs)
        if kv_cache is not None:
            kv_cache.advance(t)
        return x, mask, rope, attentions

    def forward(
        self,
        ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        return_attention: bool = False,
        return_logits: bool = True,
        target_counts: torch.Tensor | None = None,
    ):
        """ids [B, T]; targets [B, T] next-token ids (-100 = ignore); position_ids [T] or [B, T];
        attention_mask [B, T] (1 = real token, 0 = padding).

        Returns (logits of head 1 [B, T, V], loss or None); with `return_attention=True` also a list of
        per-layer attention probabilities [B, H, T, T_keys] (computed explicitly, off the SDPA fast path).
        The loss is the mean over the n_predict heads of each head's mean cross-entropy; head k's targets are
        `shift_targets(targets, k)`. Heads with no target at all (T < k) are left out of the mean.
        `return_logits=False` (a training step, which needs only the loss): logits are None, and a vocabulary
        of at least `loss.FUSED_MIN_VOCAB` computes head and loss together a block of rows at a time
        (`tinyformer.model.loss`), never holding all the logits.
        `target_counts` [n_predict] (from `target_counts(...)` of a whole batch): each head's loss is divided
        by these counts instead of this call's own, so the losses of a batch fed in parts (rows, or columns
        after the last target: `tinyformer.batch.split_by_length`) add up to the whole batch's loss.
        """
        x, mask, rope, attentions = self._trunk(ids, position_ids, attention_mask, kv_cache, return_attention)
        fused = targets is not None and not return_logits and self.config.vocab_size >= FUSED_MIN_VOCAB
        logits = None if fused else self.logits(x)
        loss = None
        if targets is not None:
            counts = [None] * self.config.n_predict if target_counts is None else target_counts
            head_losses, has_targets = self._head_loss(x, logits, targets, fused, counts[0])
            for k, head in enumerate(self.mtp_layers, start=2):
                head_x, _ = head(x, mask, rope)
                ce, has = self._head_loss(head_x, None, shift_targets(targets, k), fused, counts[k - 1])
                head_losses, has_targets = head_losses + ce, has_targets + has
            loss = head_losses / has_targets.clamp(min=1)
        if not return_logits:
            logits = None
        if return_attention:
            return logits, loss, attentions
        return logits, loss

    def _head_loss(self, x: torch.Tensor, logits: torch.Tensor | None, targets: torch.Tensor,
                   fused: bool, count: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy over non-ignored targets, 1.0 if there are any else 0.0), without a host sync.
        `x`: the head's hidden states before the final norm; `logits`: their logits if already made;
        `count`: the number of targets to divide by (default: this call's own)."""
        if fused:
            return linear_cross_entropy(self.norm(x), self.lm_head.weight, targets, count, self.config.logit_softcap)
        if logits is None:
            logits = self.logits(x)
        total = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        if count is None:
            count = (targets != IGNORE_INDEX).sum()
        return total / count.clamp(min=1), (count > 0).float()

    @torch.no_grad()
    def head_logits(
        self,
        ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Logits of every output head: element k-1 [B, T, V] predicts token t+k at position t."""
        x, mask, rope, _ = self._trunk(ids, position_ids, attention_mask, None, False)
        heads = [x] + [head(x, mask, rope)[0] for head in self.mtp_layers]
        return [self.logits(h) for h in heads]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Output logits of hidden states before the final norm: lm_head(norm(x)), soft-capped to
        cap * tanh(logits / cap) when `model.logit_softcap` is set."""
        logits = self.lm_head(self.norm(x))
        cap = self.config.logit_softcap
        if cap is not None:
            logits = cap * torch.tanh(logits.float() / cap)  # in float32, as the loss and the fused path are
        return logits

    # ---------------------------------------------------------------- helpers

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count. embeddings=False leaves out the token and position tables and the output head
        (the vocabulary matrices), so tied and untied models count the same body."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if embeddings:
            return total
        total -= self.embed_tokens.weight.numel()
        if hasattr(self, "embed_positions"):
            total -= self.embed_positions.weight.numel()
        if not self.config.tie_embeddings:
            total -= self.lm_head.weight.numel()
        return total

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs (forward + backward) per token at context `seq_len`, the PaLM (Chowdhery et al. 2022,
        app. B) convention: 6 * N + 12 * L * d_model * seq_len, where N counts every weight used in a matmul
        (body + one unembedding per output head; embedding lookups are free) and the second term is QK^T
        and attention-times-V over the full T x T score matrix (not halved for causality)."""
        cfg = self.config
        n_matmul = self.num_params(embeddings=False) + cfg.n_predict * cfg.vocab_size * cfg.d_model
        n_attention_layers = cfg.n_layers + cfg.n_predict - 1
        return 6 * n_matmul + 12 * n_attention_layers * cfg.n_heads * cfg.head_dim * seq_len

    def new_kv_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.embed_tokens.weight
        return KVCache(self.config, batch, max_len, p.device, p.dtype)

    def generate(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens=None,
        seed: int | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Sample continuations with a KV cache; see tinyformer.model.generate.generate."""
        return generate_tokens(
            self,
            ids,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_tokens=stop_tokens,
            seed=seed,
            **kwargs,
        )
