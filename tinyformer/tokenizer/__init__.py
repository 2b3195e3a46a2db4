"""Byte-level BPE tokenizer: train (`train_bpe`), encode/decode (`Tokenizer`), save/load, CLI `tinyformer tokenizer`."""

from tinyformer.tokenizer.pretokenize import GPT2_PATTERN, GPT4_PATTERN, O200K_PATTERN
from tinyformer.tokenizer.tokenizer import Tokenizer
from tinyformer.tokenizer.train import train_bpe

__all__ = ["GPT2_PATTERN", "GPT4_PATTERN", "O200K_PATTERN", "Tokenizer", "train_bpe"]
