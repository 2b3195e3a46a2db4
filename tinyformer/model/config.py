"""`ModelConfig`: every architectural switch of the one Transformer, validated at construction, plus presets.

A config that cannot work (heads that do not divide the width, an odd RoPE head size, a typo in a name)
fails here with a one-line `TinyformerError` instead of a shape error deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from tinyformer.config import from_dict as build_dataclass
from tinyformer.errors import TinyformerError
from tinyformer.model.positions import SCHEMES, Scheme
from tinyformer.model.positions import scheme as find_scheme

POSITIONS = tuple(SCHEMES)  # every model.position value; what each one is: tinyformer.model.positions
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "swiglu", "relu2")

# Architecture switches only: sizes come from the defaults or from overrides, so a preset never allocates
# a 7B model by accident. `preset("gpt2", n_layers=12, n_heads=12, d_model=768, vocab_size=50257,
# max_seq_len=1024)` is GPT-2 small.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(
        norm="layernorm", mlp="gelu_tanh", position="learned", bias=True, tie_embeddings=True, norm_eps=1e-5
    ),
    "llama": dict(
        norm="rmsnorm",
        mlp="swiglu",
        position="rope",
        bias=False,
        tie_embeddings=False,
        norm_eps=1e-5,
        rope_theta=10000.0,
    ),
}


def _one_of(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise TinyformerError(f"unknown {what} {value!r}; valid values: {', '.join(valid)}")


@dataclass
class ModelConfig:
    """The whole architecture. `None` in `n_kv_heads`, `d_ff`, `n_positions` means "derive it" (see properties)."""

    vocab_size: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None = n_heads (multi-head); fewer = grouped-query attention
    d_model: int = 128
    d_ff: int | None = None  # None = 4 * d_model (gelu, relu2) or ~8/3 * d_model rounded up to 64 (swiglu)
    max_seq_len: int = 256  # training context; rope/alibi/nope/sinusoidal still run on longer inputs
    n_positions: int | None = None  # size of the learned/abacus position table; None = max_seq_len
    norm: str = "layernorm"  # layernorm | rmsnorm (pre-norm in both cases)
    norm_eps: float = 1e-5
    mlp: str = "gelu_tanh"  # gelu (exact erf) | gelu_tanh (GPT-2's approximation) | swiglu | relu2 (relu(x)**2)
    bias: bool = True  # biases in every linear layer and in LayerNorm
    dropout: float = 0.0
    tie_embeddings: bool = True
    position: str = "learned"  # a name in tinyformer.model.positions.SCHEMES: learned | sinusoidal | rope | ...
    rope_theta: float = 10000.0
    rope_scaling: float = 1.0  # linear position interpolation: positions are divided by this factor
    n_predict: int = 1  # output heads predicting tokens t+1 .. t+n_predict
    init_std: float = 0.02
    # GPT-2's init: o_proj/down_proj drawn with init_std / sqrt(2 * n_layers); false = plain N(0, init_std)
    scale_residual_init: bool = True
    # the speedruns' switches (modded-nanogpt, OLMo-2, Gemma-2), all off by default:
    qk_norm: bool = False  # RMSNorm (learned gain over head_dim, eps norm_eps) on queries and keys, before RoPE
    logit_softcap: float | None = None  # logits = cap * tanh(logits / cap), in every path that makes them
    zero_init_proj: bool = False  # o_proj/down_proj (the residual outputs) start at exactly zero

    def __post_init__(self) -> None:
        find_scheme(self.position)  # a one-line error naming the valid schemes
        _one_of("norm", self.norm, NORMS)
        _one_of("mlp", self.mlp, MLPS)
        for name in ("vocab_size", "n_layers", "n_heads", "d_model", "max_seq_len", "n_predict"):
            if getattr(self, name) < 1:
                raise TinyformerError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("n_kv_heads", "d_ff", "n_positions"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TinyformerError(f"model.{name} must be at least 1 (or null to derive it), got {value}")
        if self.d_model % self.n_heads:
            raise TinyformerError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                "choose d_model as a multiple of n_heads"
            )
        if self.n_heads % self.num_kv_heads:
            raise TinyformerError(
                f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.num_kv_heads}; "
                "each key/value head must serve a whole group of query heads"
            )
        if self.scheme.rotates and self.head_dim % 2:
            raise TinyformerError(
                f"position={self.position!r} rotates pairs of query/key features and needs an even head size, "
                f"but d_model/n_heads = {self.head_dim}; change d_model or n_heads"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise TinyformerError(f"model.dropout must be in [0, 1), got {self.dropout}")
        for name in ("rope_theta", "rope_scaling", "norm_eps", "init_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise TinyformerError(f"model.{name} must be a positive number, got {value}")
        for name in ("qk_norm", "zero_init_proj"):
            if not isinstance(getattr(self, name), bool):
                raise TinyformerError(f"model.{name} must be true or false, got {getattr(self, name)!r}")
        cap = self.logit_softcap
        if cap is not None and (isinstance(cap, bool) or not (math.isfinite(cap) and cap > 0)):
            raise TinyformerError(
                f"model.logit_softcap must be a positive number (for example 30), or null for no cap; got {cap}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def num_kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":  # same parameter count as a 4x GELU MLP, rounded up to a multiple of 64
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model

    @property
    def scheme(self) -> Scheme:
        """What `position` names: ask it (`cfg.scheme.has_table`), never compare the string."""
        return find_scheme(self.position)

    @property
    def position_table_size(self) -> int:
        return self.max_seq_len if self.n_positions is None else self.n_positions

    def resolved(self) -> ModelConfig:
        """A copy with every derived field (n_kv_heads, d_ff, n_positions) written out: compare these."""
        return dataclasses.replace(
            self, n_kv_heads=self.num_kv_heads, d_ff=self.ffn_dim, n_positions=self.position_table_size
        )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named architecture (`gpt2`, `llama`) with field overrides, e.g. `preset("llama", n_kv_heads=2)`."""
        _one_of("model preset", name, tuple(PRESETS))
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict (YAML, model.json); unknown keys name the closest valid key."""
        return build_dataclass(cls, data, "model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
