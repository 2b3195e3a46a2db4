"""Abacus position ids for a language model on text: each digit token's index inside its number.

The lab's definition (`tinyformer.batch.run_positions`, `offset_positions`) applied to token files: a token
is a digit when its text is made only of `data.digits` characters (0-9 by default; 0-9a-f for hexadecimal
text); digit tokens get 1, 2, ... inside each run of them, every other token 0; training adds the lab's
random offset per window. A tokenizer that merges digits gives one id per merged token: the index counts
tokens, so digit-level tokenization (no merges across digits) is what the Abacus papers assume.

`model.position=coupled-relative` on text reads the same ids as its coupled ids (the place inside a number is
the only alignment text has: the k-th digits of all numbers share id k), through its relative bias, with no
offsets; `coupled` (a table over them) would be abacus itself and is refused (`coupled_refusal`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from tinyformer.batch import offset_positions, run_positions
from tinyformer.errors import TinyformerError
from tinyformer.model.positions import COUPLED

DEFAULT_DIGITS = "0123456789"


def digit_table(tokenizer, vocab_size: int, digits: str = DEFAULT_DIGITS) -> np.ndarray:
    """[vocab_size] bools: which ids are digit tokens (their text only `digits`); special and padding ids never."""
    allowed = set(digits.encode("ascii"))
    table = np.zeros(vocab_size, dtype=bool)
    specials = set(tokenizer.special_tokens.values())
    for i, token in tokenizer.vocab.items():
        if i < vocab_size and i not in specials:
            table[i] = bool(token) and set(token) <= allowed
    return table


class TextPositions:
    """Position ids of token ids [B, T] (numpy or torch) for `model.position=abacus` on text."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def __call__(self, ids: Any) -> Any:
        if isinstance(ids, torch.Tensor):
            return torch.from_numpy(self(ids.cpu().numpy())).to(ids.device)
        return run_positions(self.table[np.asarray(ids)])

    def next_position(self, ids: torch.Tensor, _positions: torch.Tensor) -> torch.Tensor:
        """For `model.generate`: the position of the token just appended (computed from the whole row)."""
        return self(ids)[:, -1]

    def generate_kwargs(self, prompt: torch.Tensor) -> dict[str, Any]:
        """`position_ids` and `next_position_ids` for `model.generate` from `prompt` [B, T]."""
        return {"position_ids": self(prompt), "next_position_ids": self.next_position}

    def add_to(self, batches: Iterable[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """Evaluation batches with their position ids (no offset: evaluation starts at 0)."""
        for batch in batches:
            yield {**batch, "position_ids": self(batch["ids"])}


def coupled_refusal(model_config) -> str | None:
    """Why a language model cannot train under this scheme, or None. On text the only alignment is the place
    inside a number: the k-th digit of every number shares id k, which are Abacus ids. Read through a table
    (`coupled`) they would train the very model `abacus` trains, so that one is refused naming abacus;
    `coupled-relative` reads them through its clipped relative bias, which no other scheme does."""
    if model_config.scheme.ids != COUPLED or not model_config.scheme.has_table:
        return None
    pe = model_config.position
    return (f"model.position={pe} on text would couple each digit with the digits of the same index in other "
            "numbers, which is model.position=abacus (the same ids, the same learned table): use abacus, or "
            "model.position=coupled-relative for a relative bias over those ids")


def text_positions(model_config, tokenizer, digits: str | None) -> TextPositions | None:
    """The position function of a language model on text: None unless its scheme takes the caller's ids
    (abacus; coupled-relative, whose coupled ids on text are the same digit indices)."""
    if not model_config.scheme.needs_caller_ids:
        return None
    refusal = coupled_refusal(model_config)
    if refusal:
        raise TinyformerError(refusal)
    if tokenizer is None:
        raise TinyformerError(f"model.position={model_config.position} on text needs the tokenizer "
                              "(data.tokenizer) to know which tokens are digits")
    table = digit_table(tokenizer, model_config.vocab_size, digits or DEFAULT_DIGITS)
    if not table.any():
        raise TinyformerError(f"model.position={model_config.position}: no token of the tokenizer is made only "
                              f"of the digits {digits or DEFAULT_DIGITS!r} (data.digits); the text has no numbers to index")
    return TextPositions(table)


class AbacusBatches:
    """A batch source (token-file windows) with Abacus position ids, randomly offset per window during
    training as in the lab, so every position of the table is trained. The offsets are seeded by
    (seed, batch number): the state is the inner source's plus that counter."""

    def __init__(self, source: Any, positions: TextPositions, table_size: int | None, seed: int) -> None:
        """`table_size` None: a scheme without a table (coupled-relative), whose ids are used as counted."""
        self.source, self.positions, self.table_size, self.seed = source, positions, table_size, seed
        self.calls = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch = self.source.next_batch()
        ids = batch["ids"].numpy()
        position_ids = self.positions(ids)
        if self.table_size is None:  # no table to move through: the ids as counted
            return {**batch, "position_ids": torch.from_numpy(position_ids)}
        longest = int(position_ids.max(initial=0))
        if longest >= self.table_size:
            raise TinyformerError(
                f"a number of {longest} digit tokens in the training data does not fit the position table of "
                f"{self.table_size}; raise model.n_positions (or model.max_seq_len) above {longest}"
            )
        rng = np.random.default_rng([self.seed, 7, self.calls])
        self.calls += 1
        real = np.ones_like(ids, dtype=bool)
        position_ids = offset_positions(position_ids, real, self.table_size, rng, members_only=True)
        return {**batch, "position_ids": torch.from_numpy(position_ids)}

    def state_dict(self) -> dict[str, Any]:
        return {**self.source.state_dict(), "abacus_calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        calls = state.get("abacus_calls")
        if not isinstance(calls, int) or isinstance(calls, bool) or calls < 0:
            raise TinyformerError("cannot resume: the checkpoint has no Abacus offset counter; it is corrupt or "
                                  "from a run without model.position=abacus")
        self.source.load_state_dict(state)
        self.calls = calls


def generate_kwargs(positions: TextPositions | None, prompt: torch.Tensor) -> dict[str, Any]:
    """Keyword arguments for `model.generate`: position ids when the model takes Abacus ids, else none."""
    return positions.generate_kwargs(prompt) if positions is not None else {}



def run_positions_of(run, model) -> TextPositions | None:
    """The position function of a language-model run (`rundir.Run`) read back by a verb: its tokenizer and
    data.digits; None unless the model takes Abacus ids."""
    cfg = run.config
    digits = cfg.data.digits if cfg is not None and cfg.data is not None else None
    return text_positions(model.config, run.tokenizer() if model.config.scheme.needs_caller_ids else None, digits)
