"""Checkpoints of a run: RUN/checkpoints/step-NNNNNNNN/ (weights + trainer_state.pt) and index.json.

A checkpoint directory is built under a temporary name and renamed into place, then index.json is
replaced atomically, and only then are old checkpoints pruned: at any instant `latest` names a complete
checkpoint. The last `keep_last` checkpoints and the best one (lowest validation loss) are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir, atomic_write

STATE_FILE = "trainer_state.pt"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def read_index(run_dir: str | Path) -> dict[str, Any]:
    """RUN/checkpoints/index.json, or {} when the run has no checkpoint yet."""
    path = Path(run_dir) / "checkpoints" / "index.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise TinyformerError(f"{path} is corrupt; delete it to rebuild from the step-* directories") from None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The directory of the run's latest complete checkpoint, or None."""
    ckpts = Path(run_dir) / "checkpoints"
    index = read_index(run_dir)
    if index.get("latest") and (ckpts / index["latest"] / STATE_FILE).exists():
        return ckpts / index["latest"]
    done = sorted(p for p in ckpts.glob("step-*") if (p / STATE_FILE).exists()) if ckpts.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    *,
    val_loss: float | None = None,
    keep_last: int = 2,
) -> Path:
    """Write weights (via tinyformer.model.io.save_model) and trainer state for `step`; update the index
    (latest, and best when `val_loss` beats it); prune. `model` must be the plain, unwrapped module."""
    from tinyformer.model.io import save_model

    ckpts = Path(run_dir) / "checkpoints"
    name = step_name(step)
    with atomic_dir(ckpts / name, force=True) as tmp:
        save_model(model, tmp)
        with atomic_write(tmp / STATE_FILE, "wb") as f:
            torch.save(trainer_state, f)
    index = read_index(run_dir)
    index["latest"] = name
    best = index.get("best_val_loss")
    if val_loss is not None and (best is None or val_loss < best):
        index["best"], index["best_val_loss"] = name, float(val_loss)
    with atomic_write(ckpts / "index.json") as f:
        json.dump(index, f, indent=1)
    prune_checkpoints(ckpts, keep_last, keep={index.get("best"), name})
    return ckpts / name


def prune_checkpoints(ckpts: Path, keep_last: int, keep: set[str | None]) -> None:
    """Delete step-* directories except the newest `keep_last` and those named in `keep`."""
    steps = sorted(p.name for p in ckpts.glob("step-*") if p.is_dir())
    survivors = set(steps[-keep_last:] if keep_last > 0 else []) | {k for k in keep if k}
    for name in steps:
        if name not in survivors:
            shutil.rmtree(ckpts / name, ignore_errors=True)


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise TinyformerError(f"checkpoint {ckpt_dir} has no {STATE_FILE}; it cannot be resumed") from None
    except Exception as exc:  # a truncated or foreign file: say so in one line
        raise TinyformerError(f"checkpoint state {path} is unreadable ({type(exc).__name__}); it is corrupt") from None
