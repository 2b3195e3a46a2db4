"""One configurable decoder-only Transformer: every position scheme, KV-cache generation, HF export/import."""

from tinyformer.model.config import ModelConfig
from tinyformer.model.transformer import Transformer

__all__ = ["ModelConfig", "Transformer"]
