"""The C extension (`_bpe.c`: BPE encoder, merge loop, fast pre-tokenizer) when it is built, else None.

The one place that asks: `pretokenize`, `train`, `tokenizer` and `tiktoken_files` take `_bpe` from here and
fall back to their pure-Python code (`merges`, the regex pre-tokenizer) when it is None; both give the same ids.
"""

try:
    from tinyformer.tokenizer import _bpe
except ImportError:  # no C compiler at install time
    _bpe = None

__all__ = ["_bpe"]
