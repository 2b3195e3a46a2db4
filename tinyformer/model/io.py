"""Checkpoint I/O for models: a directory of `model.safetensors` (clean parameter names) + `model.json`
(the ModelConfig). Which checkpoint of a run to use is `tinyformer.train.rundir`'s business, not the model's.
Every load error is a one-line TinyformerError.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tinyformer.config import to_dict
from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write
from tinyformer.model.config import ModelConfig
from tinyformer.model.transformer import Transformer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"


def _state_dict_to_save(model) -> dict:
    """Parameters and persistent buffers, contiguous, the tied output head left out (it is embed_tokens)."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {name: t.detach().contiguous() for name, t in state.items()}


def save_model(model, ckpt_dir: str | os.PathLike) -> Path:
    """Write `model.safetensors` and `model.json` into `ckpt_dir` (created if needed), each atomically."""
    from safetensors.torch import save

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    data = save(_state_dict_to_save(model), metadata={"format": "pt"})
    with atomic_write(ckpt_dir / WEIGHTS_FILE, "wb") as f:
        f.write(data)
    with atomic_write(ckpt_dir / CONFIG_FILE) as f:
        json.dump(to_dict(model.config), f, indent=2)
        f.write("\n")
    return ckpt_dir


def load_config_file(ckpt_dir: Path):
    """The ModelConfig stored in `ckpt_dir/model.json`."""
    path = ckpt_dir / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TinyformerError(f"checkpoint {ckpt_dir} has no {CONFIG_FILE}; it is incomplete") from None
    except (OSError, ValueError):
        raise TinyformerError(f"{path} is not valid JSON; the checkpoint is damaged") from None
    if not isinstance(data, dict):
        raise TinyformerError(f"{path} does not hold a model config object; the checkpoint is damaged")
    return ModelConfig.from_dict(data)


def load_state(model, weights_path: Path, map_location: str = "cpu") -> None:
    """Load `model.safetensors` into `model`, with one-line errors for damage or a config/weights mismatch."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights_path.is_file():
        raise TinyformerError(f"checkpoint {weights_path.parent} has no {WEIGHTS_FILE}; it is incomplete")
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise TinyformerError(
            f"{weights_path} cannot be read ({str(exc).splitlines()[0]}); the file is damaged"
        ) from None
    expected = _state_dict_to_save(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TinyformerError(
            f"{weights_path} does not match its {CONFIG_FILE}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise TinyformerError(
                f"{weights_path}: {name} has shape {tuple(tensor.shape)}, the config needs "
                f"{tuple(expected[name].shape)}; the weights belong to another model"
            )
        damage = (f"holds {tensor.dtype} values where the model keeps {expected[name].dtype}"
                  if tensor.dtype != expected[name].dtype else
                  "holds NaN or infinite values" if tensor.is_floating_point() and not torch.isfinite(tensor).all()
                  else None)
        if damage:
            raise TinyformerError(
                f"{weights_path}: {name} {damage}; the checkpoint is damaged: use an earlier one (the run's "
                f"checkpoints/step-*), or to resume from the previous checkpoint delete {weights_path.parent}"
            )
    model.load_state_dict(state, strict=False)  # strict would demand the tied lm_head.weight


def load_model(ckpt_dir: str | os.PathLike, map_location: str = "cpu"):
    """A Transformer (in eval mode, on `map_location`) from a checkpoint directory."""
    import torch

    ckpt = Path(ckpt_dir)
    if not (ckpt / CONFIG_FILE).is_file() and not (ckpt / WEIGHTS_FILE).is_file():
        raise TinyformerError(f"{ckpt} is not a checkpoint directory (no {CONFIG_FILE}); for a run directory "
                              "use tinyformer.train.rundir.load_model")
    cfg = load_config_file(ckpt)
    with torch.device(map_location):
        model = Transformer(cfg)
    load_state(model, ckpt / WEIGHTS_FILE, map_location)
    return model.eval()
