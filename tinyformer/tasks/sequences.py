"""Number-sequence text datasets from a YAML file, for the tokenizer -> token file -> train -> sample pipeline.

Two kinds of rows, every number written in `base` (digits 0-9a-f), optionally reversed (least significant
digit first):
- `sum`: `a b a+b`, with a and b uniform in [min_value, max_value];
- `series`: a recurrence started from `len(mask)` random numbers in [min_value, max_value]; each next
  number is the sum of the previous `len(mask)` numbers where `mask` is 1 (`[1, 1]` is Fibonacci-like),
  `terms` numbers per row.
Columns are joined by `column_delimiter`, rows end with `row_delimiter`; `row_prefix`/`row_suffix` frame a
row, so `column_delimiter: "+"`, `row_prefix: "+"`, `row_suffix: "+"` writes the addition task's `+A+B+C+`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write, check_output
from tinyformer.tasks.addition import to_digits

KINDS = ("sum", "series")


@dataclass
class SequencesConfig:
    """One dataset: what numbers, how many rows, how they are written and where."""

    output: str = "data/sequences.txt"
    kind: str = "sum"  # sum | series
    count: int = 100_000  # rows
    min_value: int = 0
    max_value: int = 9999
    base: int = 10  # 2..16
    reverse: bool = False  # least significant digit first
    column_delimiter: str = " "
    row_delimiter: str = "\n"
    row_prefix: str = ""
    row_suffix: str = ""
    mask: list[int] = field(default_factory=lambda: [1, 1])  # series: which previous numbers are summed
    terms: int = 8  # series: numbers per row
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TinyformerError(f"sequences kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 2 <= self.base <= 16:
            raise TinyformerError(f"sequences base must be between 2 and 16 (digits 0-9a-f), got {self.base}")
        if self.count < 1:
            raise TinyformerError(f"sequences count must be at least 1, got {self.count}")
        if self.min_value < 0 or self.max_value < self.min_value:
            raise TinyformerError(f"number range {self.min_value}..{self.max_value} is empty or negative; "
                                  "use 0 <= min_value <= max_value")
        if not self.row_delimiter or not self.column_delimiter:
            raise TinyformerError("column_delimiter and row_delimiter must not be empty (numbers would run "
                                  "together); use for example \" \" and \"\\n\"")
        if self.kind == "series":
            if not self.mask or set(self.mask) - {0, 1} or 1 not in self.mask:
                raise TinyformerError(f"series mask {self.mask} must be a non-empty list of 0/1 with at least one 1")
            if self.terms <= len(self.mask):
                raise TinyformerError(f"series terms={self.terms} must exceed the {len(self.mask)} starting numbers")
        symbols = set(self.column_delimiter + self.row_delimiter + self.row_prefix + self.row_suffix)
        if symbols & set("0123456789abcdef"[: self.base]):
            raise TinyformerError("delimiters, prefix and suffix must not contain digits of the base; "
                                  "rows could not be read back")


def sum_rows(rng: np.random.Generator, cfg: SequencesConfig) -> list[list[int]]:
    # Python ints throughout: max_value may exceed 64 bits
    span = cfg.max_value - cfg.min_value + 1
    out = []
    for _ in range(cfg.count):
        a = cfg.min_value + int(rng.integers(0, span)) if span < 2**62 else cfg.min_value + _big(rng, span)
        b = cfg.min_value + int(rng.integers(0, span)) if span < 2**62 else cfg.min_value + _big(rng, span)
        out.append([a, b, a + b])
    return out


def _big(rng: np.random.Generator, span: int) -> int:
    """A uniform integer in [0, span) beyond numpy's 64-bit range, by rejection on random bits."""
    bits = span.bit_length()
    while True:
        value = int.from_bytes(rng.bytes((bits + 7) // 8), "little") >> (-bits % 8)
        if value < span:
            return value


def series_rows(rng: np.random.Generator, cfg: SequencesConfig) -> list[list[int]]:
    span = cfg.max_value - cfg.min_value + 1
    width = len(cfg.mask)
    out = []
    for _ in range(cfg.count):
        row = [cfg.min_value + (int(rng.integers(0, span)) if span < 2**62 else _big(rng, span))
               for _ in range(width)]
        while len(row) < cfg.terms:
            row.append(sum(x for x, m in zip(row[-width:], cfg.mask) if m))
        out.append(row)
    return out


def format_number(value: int, base: int, reverse: bool) -> str:
    text = to_digits(value, base)
    return text[::-1] if reverse else text


def render(rows: list[list[int]], cfg: SequencesConfig) -> str:
    """The dataset text: every row framed and delimited as configured, each ending with the row delimiter."""
    lines = (cfg.row_prefix + cfg.column_delimiter.join(format_number(v, cfg.base, cfg.reverse) for v in row)
             + cfg.row_suffix for row in rows)
    return "".join(line + cfg.row_delimiter for line in lines)


def generate_sequences(cfg: SequencesConfig) -> str:
    """The text of the dataset described by `cfg` (fixed by its seed)."""
    rng = np.random.default_rng(cfg.seed)
    rows = sum_rows(rng, cfg) if cfg.kind == "sum" else series_rows(rng, cfg)
    return render(rows, cfg)


def write_sequences(cfg: SequencesConfig, force: bool = False, output: str | Path | None = None) -> Path:
    """Generate and write the dataset atomically; returns its path."""
    path = check_output(output or cfg.output, force)
    text = generate_sequences(cfg)
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)
