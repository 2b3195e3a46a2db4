"""Position schemes as objects: `SCHEMES`, the one table of every `model.position` and the properties the rest
of tinyformer asks of it (`scheme(name)` looks one up), and the small pure functions the schemes are made of:
sinusoidal tables, RoPE (rotate-half layout), ALiBi slopes and biases. Learned and Abacus positions are the
model's `embed_positions` table (Abacus ids come with the batch: `tinyformer.batch.run_positions`); FIRE's
and coupled-relative's learned biases are the model's `position_bias` module (tinyformer.model.fire,
tinyformer.model.coupled_bias); NoPE is nothing. Adding a scheme
is its functions, one entry in SCHEMES, and tests (tests/unit/model/test_position_schemes.py).

torch is imported inside the functions, so that reading the table (config validation, the lab's scheme names,
the CLI's help) does not pay for importing torch.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tinyformer.errors import TinyformerError
from tinyformer.model.coupled_bias import coupled_bias_module
from tinyformer.model.fire import fire_module

if TYPE_CHECKING:
    import torch
    from torch import nn

# what a scheme's position ids count (`tinyformer.tasks.task_positions` turns each into a function of the ids)
SEQUENCE = "sequence"  # 0, 1, 2, ... over the tokens: counted by the model unless the caller gives them
SYMBOL_RUNS = "symbol_runs"  # each digit's index inside its number: only the caller knows them
COUPLED = "coupled"  # the task's alignment: tokens that must meet share one id (only the task knows it)


@dataclass(frozen=True)
class Scheme:
    """One position scheme: what it adds to the model, what its callers must do, where it exports.

    The hooks take the `ModelConfig` as `cfg`; a scheme without a hook does nothing at that point.
    """

    name: str  # the `model.position` value
    summary: str  # a few words for help texts
    has_table: bool = False  # a learned position-embedding table `embed_positions` of model.n_positions rows
    # the lab trains it at random offsets into its table, so every position up to the longest eval is seen
    trained_at_random_offsets: bool = False
    ids: str = SEQUENCE  # what its position ids count: SEQUENCE, SYMBOL_RUNS or COUPLED
    # (position_ids [B, T], cfg) -> vectors [B, T, d_model] added to the token embeddings
    embedding: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
    # cfg -> float32 slopes [n_heads] of an additive attention bias -slope * |pos_q - pos_k|
    attention_slopes: Callable[[Any], torch.Tensor] | None = None
    # cfg -> the model's `position_bias` module, (query_pos [B, Tq], key_pos [B, Tk]) -> learned additive
    # attention bias [B, H, Tq, Tk], computed once per forward pass and shared by every layer
    bias_module: Callable[[Any], nn.Module] | None = None
    # (position_ids [B, T], cfg) -> (cos, sin) [B, T, head_dim] that rotate queries and keys
    rotation: Callable[[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]] | None = None
    hf_family: str | None = None  # the HF export family that carries it (gpt2, llama, mpt); None: no export
    aliases: tuple[str, ...] = ()  # other names the lab takes for it (`--pe ape`: the papers' name)
    label: str = ""  # the name reports and result folders use; default `name`

    @property
    def needs_caller_ids(self) -> bool:
        """A forward pass without `position_ids` is refused: the model cannot count these ids itself."""
        return self.ids != SEQUENCE

    @property
    def biases_attention(self) -> bool:
        """An additive bias on the attention scores, fixed (ALiBi's slopes) or learned (`bias_module`)."""
        return self.attention_slopes is not None or self.bias_module is not None

    @property
    def learns_bias(self) -> bool:
        """Its attention bias has parameters of its own (the model's `position_bias`)."""
        return self.bias_module is not None

    @property
    def rotates(self) -> bool:
        return self.rotation is not None

    @property
    def relative(self) -> bool:
        """Nothing absolute is added: only distances reach attention, so shifting every id changes nothing
        (for FIRE while the ids stay below its threshold L: past it, a distance counts relative to the query's
        position, its progressive interpolation)."""
        return not self.has_table and self.embedding is None

    @property
    def limits_context(self) -> bool:
        """Its ids grow with the context and end with its table: no input longer than model.n_positions."""
        return self.has_table and self.ids == SEQUENCE

    @property
    def report_name(self) -> str:
        return self.label or self.name


# ---------------------------------------------------------------------------- the functions


def sinusoidal_embedding(position_ids: torch.Tensor, d_model: int) -> torch.Tensor:
    """Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)). Shape [..., d]."""
    import torch

    half = torch.arange(0, d_model, 2, dtype=torch.float32, device=position_ids.device)
    inv_freq = 1.0 / (10000.0 ** (half / d_model))
    angles = position_ids.float().unsqueeze(-1) * inv_freq  # [..., ceil(d/2)]
    pe = torch.zeros(*position_ids.shape, d_model, device=position_ids.device)
    pe[..., 0::2] = torch.sin(angles)
    pe[..., 1::2] = torch.cos(angles[..., : d_model // 2])
    return pe


def scaled_sinusoidal(position_ids: torch.Tensor, cfg: Any) -> torch.Tensor:
    """The sinusoidal table divided by sqrt(d): Vaswani et al.'s sqrt(d) * embedding + table up to one factor,
    which the first block's norm removes, and token embeddings keep their init and learning rate. Unscaled,
    the table drowned the std-0.02 tokens and the model learned only unigrams."""
    return sinusoidal_embedding(position_ids, cfg.d_model) * cfg.d_model**-0.5


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float = 10000.0, scaling: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [B, T, head_dim] for the rotate-half layout (HF Llama's), computed in float32.

    Linear scaling (position interpolation) divides the positions by `scaling`, as HF's "linear" rope type.
    """
    import torch

    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    inv_freq = inv_freq.to(position_ids.device) / scaling
    angles = position_ids.float().unsqueeze(-1) * inv_freq  # [B, T, head_dim/2]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def rope_tables(position_ids: torch.Tensor, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE's cos and sin for a model: its head size, `rope_theta` and `rope_scaling`."""
    return rope_cos_sin(position_ids, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    import torch

    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys [B, H, T, D] by their positions; cos/sin are [B, T, D]."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    return x * cos + rotate_half(x) * sin


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Press et al. (2022): a geometric sequence starting at 2^(-8/n) with that same ratio for n a power of two;
    otherwise the slopes of the closest smaller power of two, followed by every other slope of twice that count.
    """
    import torch

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two_slopes(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two_slopes(closest) + power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def model_alibi_slopes(cfg: Any) -> torch.Tensor:
    """ALiBi's slopes for a model's heads (float32 even in a bf16 model)."""
    return alibi_slopes(cfg.n_heads)


def alibi_bias(slopes: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
    """Additive attention bias -slope * |pos_q - pos_k|, shape [B, H, Tq, Tk], from positions [B, Tq], [B, Tk]."""
    distance = (query_pos.unsqueeze(-1) - key_pos.unsqueeze(-2)).abs().float()  # [B, Tq, Tk]
    return -slopes.to(distance.device).view(1, -1, 1, 1) * distance.unsqueeze(1)


# ---------------------------------------------------------------------------- the table

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("learned", "learned absolute", has_table=True, trained_at_random_offsets=True, hf_family="gpt2",
               aliases=("ape",), label="ape"),
        Scheme("sinusoidal", "fixed sinusoidal absolute", embedding=scaled_sinusoidal),
        Scheme("rope", "rotary", rotation=rope_tables, hf_family="llama"),
        Scheme("alibi", "linear attention biases", attention_slopes=model_alibi_slopes,
               hf_family="mpt"),
        Scheme("nope", "no position information"),
        Scheme("fire", "learned functional relative biases", bias_module=fire_module),
        Scheme("abacus", "each digit's index inside its number", has_table=True,
               trained_at_random_offsets=True, ids=SYMBOL_RUNS),
        Scheme("coupled", "aligned tokens share one learned position id (position coupling)", has_table=True,
               trained_at_random_offsets=True, ids=COUPLED),
        Scheme("coupled-relative", "a learned attention bias of the clipped difference of coupled ids",
               bias_module=coupled_bias_module, ids=COUPLED),
    )
}
# every name the lab takes (`--pe`), a scheme's aliases before its own name: ape, learned, sinusoidal, ...
LAB_NAMES: dict[str, Scheme] = {name: s for s in SCHEMES.values() for name in (*s.aliases, s.name)}
RELATIVE = tuple(s.name for s in SCHEMES.values() if s.relative)  # rope, alibi, nope, fire


def scheme(name: str, aliases: bool = False) -> Scheme:
    """The scheme a `model.position` value names (with `aliases`, also a name the lab takes, such as `ape`);
    a one-line error with the closest valid name otherwise."""
    names = LAB_NAMES if aliases else SCHEMES
    found = names.get(name) if isinstance(name, str) else None
    if found is None:
        near = difflib.get_close_matches(str(name), names, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        what, valid = ("position scheme", "valid schemes") if aliases else ("position", "valid values")
        raise TinyformerError(f"unknown {what} {name!r}; {hint}{valid}: {', '.join(names)}")
    return found
