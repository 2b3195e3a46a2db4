"""Writing and reading checkpoints of a run: RUN/checkpoints/step-NNNNNNNN/ (weights + trainer state) and
index.json (layout: `tinyformer.rundir`).

A checkpoint directory is built under a temporary name and renamed into place, then index.json is
replaced atomically, and only then are old checkpoints pruned: at any instant `latest` names a complete
checkpoint. The last `keep_last` checkpoints and the best one (lowest evaluation score) are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tinyformer import rundir
from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir, atomic_write


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    *,
    score: float | None = None,
    keep_last: int = 2,
) -> Path:
    """Write weights (via tinyformer.model.io.save_model) and trainer state for `step`; update the index
    (latest, and best when `score` beats it: lower is better); prune. `model` must be the plain module."""
    from tinyformer.model.io import save_model

    ckpts = Path(run_dir) / rundir.CHECKPOINTS
    name = rundir.step_name(step)
    with atomic_dir(ckpts / name, force=True) as tmp:
        save_model(model, tmp)
        with atomic_write(tmp / rundir.STATE_FILE, "wb") as f:
            torch.save(trainer_state, f)
    index = rundir.read_index(run_dir)
    index["latest"] = name
    best = index.get("best_score", index.get("best_val_loss"))
    if score is not None and (best is None or score < best):
        index["best"], index["best_score"] = name, float(score)
        index.pop("best_val_loss", None)
    with atomic_write(ckpts / rundir.INDEX_FILE) as f:
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
    path = Path(ckpt_dir) / rundir.STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise TinyformerError(f"checkpoint {ckpt_dir} has no {rundir.STATE_FILE}; it cannot be resumed") from None
    except Exception as exc:  # a truncated or foreign file: say so in one line
        raise TinyformerError(f"checkpoint state {path} is unreadable ({type(exc).__name__}); it is corrupt") from None


def load_weights(model: torch.nn.Module, ckpt_dir: Path) -> None:
    from tinyformer.model.io import load_state

    load_state(model, Path(ckpt_dir) / rundir.WEIGHTS_FILE)
