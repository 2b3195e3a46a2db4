"""`LengenConfig`: everything one length-generalization run needs, and the mapping of scheme names."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field

from tinyformer.errors import TinyformerError

# --pe name -> the model's `position`; "ape" is the name the length-generalization papers use
PE_SCHEMES = {
    "ape": "learned",
    "learned": "learned",
    "sinusoidal": "sinusoidal",
    "rope": "rope",
    "alibi": "alibi",
    "nope": "nope",
    "abacus": "abacus",
}
# schemes with a position table: trained at random offsets so every position up to the longest eval is seen
TABLE_SCHEMES = ("learned", "abacus")


def model_position(pe: str) -> str:
    """The model's position scheme for a `--pe` name, or a one-line error listing the valid names."""
    if pe not in PE_SCHEMES:
        near = difflib.get_close_matches(pe, PE_SCHEMES, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise TinyformerError(f"unknown position scheme {pe!r}; {hint}valid schemes: {', '.join(PE_SCHEMES)}")
    return PE_SCHEMES[pe]


@dataclass
class LengenConfig:
    """One run: task, position scheme, model size, optimization, lengths and evaluation."""

    task: str = "UR"
    pe: str = "rope"
    # model (GPT-2-shaped by default: LayerNorm, GELU, biases; the position scheme is `pe`)
    layers: int = 2
    heads: int = 4
    d_model: int = 64
    d_ff: int | None = None
    arch: str = "gpt2"  # a tinyformer.model preset: gpt2 | llama
    n_predict: int = 1  # output heads (multi-token prediction); > 1 also reports accuracy decoding k at a time
    rope_theta: float = 10000.0
    rope_scaling: float = 1.0  # linear scaling (position interpolation) factor
    max_positions: int | None = None  # learned/abacus table size; None = the longest evaluated input
    random_offset: bool | None = None  # None = on for learned/abacus positions, off otherwise
    # optimization
    lr: float = 1e-3
    min_lr: float | None = None  # None = lr / 10
    schedule: str = "cosine"
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_size: int = 64
    steps: int = 30000
    seed: int = 0
    # lengths and evaluation
    train_lengths: str = "1-50"
    eval_bins: list[str] = field(default_factory=lambda: ["1-50", "51-100", "101-150"])
    eval_examples: int = 2000
    eval_every: int = 500
    eval_batch_size: int = 256
    eval_seed: int = 0  # fixed across runs, so every run is scored on the same examples
    stop_accuracy: float = 1.0  # stop once the training-range bin reaches it
    greedy: bool = True  # free-running greedy accuracy at the final evaluation
    greedy_examples: int | None = None  # per bin; None = all
    log_every: int = 100
    device: str = "auto"  # auto | cpu | cuda | mps
    threads: int | None = None  # torch CPU threads; None = torch's default (tiny models often do best with 1)

    def __post_init__(self) -> None:
        model_position(self.pe)
        for name in ("layers", "heads", "d_model", "batch_size", "steps", "eval_examples", "eval_every",
                     "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise TinyformerError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise TinyformerError(f"lr must be positive, got {self.lr}")
        if not self.eval_bins:
            raise TinyformerError("eval_bins is empty; give at least one length bin such as 1-50")

    @property
    def position(self) -> str:
        return model_position(self.pe)

    @property
    def uses_random_offset(self) -> bool:
        return self.position in TABLE_SCHEMES if self.random_offset is None else self.random_offset

    def replace(self, **changes) -> LengenConfig:
        return dataclasses.replace(self, **changes)
