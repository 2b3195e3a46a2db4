"""One configurable decoder-only Transformer: every position scheme, KV-cache generation, HF export/import.

    from tinyformer.model import ModelConfig, Transformer
    model = Transformer(ModelConfig.preset("llama", vocab_size=512, n_layers=4, d_model=128, n_heads=4))
    logits, loss = model(ids, targets)

Names are imported on first use, so that importing `tinyformer.model.config` (which config loading does)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "tinyformer.model.config",
    "Transformer": "tinyformer.model.transformer",
    "export_hf": "tinyformer.model.hf",
    "import_hf": "tinyformer.model.hf",
    "save_model": "tinyformer.model.io",
    "load_model": "tinyformer.model.io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tinyformer.model' has no attribute {name!r}")
