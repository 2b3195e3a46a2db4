"""Writing and reading checkpoints of a run: RUN/checkpoints/step-NNNNNNNN/ (weights + trainer state) and
index.json (layout: `tinyformer.train.rundir`).

A checkpoint directory is built under a temporary name and renamed into place, then index.json is
replaced atomically, and only then are old checkpoints pruned: at any instant `latest` names a complete
checkpoint. The last `keep_last` checkpoints and the best one (lowest evaluation score) are kept.

The trainer state is stored without pickle, so loading a checkpoint from anywhere can never run code: its
tensors (optimizer moments, RNG states) go to `trainer_state.safetensors`, everything else (counters, the
batch source's state, Python and NumPy RNG states, settings) to `trainer_state.json`. Tuples, NumPy arrays
and tensors are written as tagged JSON objects and rebuilt as such when read.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir, atomic_write
from tinyformer.train import rundir

STATE_FORMAT = "tinyformer-trainer-state"
STATE_VERSION = 1
_TENSOR, _TUPLE, _ARRAY = "__tensor__", "__tuple__", "__ndarray__"


def encode_state(value: Any, tensors: dict[str, torch.Tensor], where: str = "state") -> Any:
    """`value` as plain JSON: tensors are moved into `tensors` (by their path) and referenced by name."""
    if isinstance(value, torch.Tensor):
        tensors[where] = value.detach().cpu().contiguous().clone()
        return {_TENSOR: where}
    if isinstance(value, np.ndarray):
        return {_ARRAY: value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {_TUPLE: [encode_state(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_state(v, tensors, f"{where}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str) or k in (_TENSOR, _TUPLE, _ARRAY)]
        if bad:
            raise TypeError(f"trainer state {where} has the key {bad[0]!r}; only plain string keys can be stored")
        return {k: encode_state(v, tensors, f"{where}/{k}") for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"trainer state {where} holds a {type(value).__name__}, which a checkpoint cannot store")


def decode_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `encode_state`; a reference to a tensor the file does not hold is a KeyError."""
    if isinstance(value, list):
        return [decode_state(v, tensors) for v in value]
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _TUPLE in value:
            return tuple(decode_state(v, tensors) for v in value[_TUPLE])
        if _ARRAY in value:
            dtype = np.dtype(value[_ARRAY])
            if dtype.kind not in "biuf":  # numbers only: an object array could hold anything
                raise ValueError(f"array of dtype {dtype} in a trainer state")
            return np.asarray(value["data"], dtype=dtype).reshape(value["shape"])
        return {k: decode_state(v, tensors) for k, v in value.items()}
    return value


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
    from safetensors.torch import save

    from tinyformer.model.io import save_model

    ckpts = Path(run_dir) / rundir.CHECKPOINTS
    name = rundir.step_name(step)
    tensors: dict[str, torch.Tensor] = {}
    document = {"format": STATE_FORMAT, "version": STATE_VERSION, "state": encode_state(trainer_state, tensors)}
    with atomic_dir(ckpts / name, force=True) as tmp:
        save_model(model, tmp)
        with atomic_write(tmp / rundir.STATE_TENSORS_FILE, "wb") as f:
            f.write(save(tensors, metadata={"format": "pt"}))
        with atomic_write(tmp / rundir.STATE_FILE) as f:
            json.dump(document, f)
    index = rundir.read_index(run_dir)
    index["latest"] = name
    record_score(run_dir, name, score, keep_last, index)
    return ckpts / name


def record_score(run_dir: str | Path, name: str, score: float | None, keep_last: int,
                 index: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make checkpoint `name` the best when `score` beats the recorded best (lower is better), write
    index.json atomically and prune; returns the index."""
    ckpts = Path(run_dir) / rundir.CHECKPOINTS
    index = rundir.read_index(run_dir) if index is None else index
    best = index.get("best_score", index.get("best_val_loss"))
    if best is not None and not math.isfinite(best):  # a NaN an older version recorded: anything beats it
        best = None
    if score is not None and math.isfinite(score) and (best is None or score < best):
        index["best"], index["best_score"] = name, float(score)
        index.pop("best_val_loss", None)
    with atomic_write(ckpts / rundir.INDEX_FILE) as f:
        json.dump(index, f, indent=1)
    prune_checkpoints(ckpts, keep_last, keep={index.get("best"), index.get("latest"), name})
    return index


def update_state(ckpt_dir: str | Path, changes: dict[str, Any]) -> None:
    """Replace a few plain (tensor-free) fields of a checkpoint's trainer state, atomically: what an
    evaluation decides after the checkpoint of its step was written (best score, status)."""
    path = Path(ckpt_dir) / rundir.STATE_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    document["state"].update(encode_state(changes, {}))
    with atomic_write(path) as f:
        json.dump(document, f)


def prune_checkpoints(ckpts: Path, keep_last: int, keep: set[str | None]) -> None:
    """Delete step-* directories except the newest `keep_last` and those named in `keep`."""
    steps = sorted(p.name for p in ckpts.glob("step-*") if p.is_dir())
    survivors = set(steps[-keep_last:] if keep_last > 0 else []) | {k for k in keep if k}
    for name in steps:
        if name not in survivors:
            shutil.rmtree(ckpts / name, ignore_errors=True)


def read_settings(ckpt_dir: str | Path) -> Any:
    """Only the result settings kept in a checkpoint's state (cheap: no tensors), or None when unreadable
    (loading the whole state then says what is wrong)."""
    try:
        return json.loads((Path(ckpt_dir) / rundir.STATE_FILE).read_text(encoding="utf-8"))["state"]["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint, read as JSON + safetensors (never unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / rundir.STATE_FILE
    if not path.is_file():
        if (ckpt_dir / rundir.OLD_STATE_FILE).exists():
            raise TinyformerError(
                f"checkpoint {ckpt_dir} was written by an older tinyformer ({rundir.OLD_STATE_FILE}, a pickle, is "
                "never loaded); start a new run_dir, or keep its weights with train.init_from=RUN"
            )
        raise TinyformerError(f"checkpoint {ckpt_dir} has no {rundir.STATE_FILE}; it cannot be resumed")
    corrupt = f"checkpoint state {path} is unreadable; it is corrupt (resume from another checkpoint or start a new run_dir)"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        tensors = load_file(str(ckpt_dir / rundir.STATE_TENSORS_FILE), device="cpu")
    except (OSError, ValueError, SafetensorError):
        raise TinyformerError(corrupt) from None
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        raise TinyformerError(corrupt)
    if document.get("version") != STATE_VERSION:
        raise TinyformerError(f"checkpoint state {path} has version {document.get('version')!r}; this tinyformer "
                              f"reads version {STATE_VERSION}: use the tinyformer that wrote it")
    try:
        state = decode_state(document["state"], tensors)
    except (KeyError, TypeError, ValueError):
        raise TinyformerError(corrupt) from None
    if not isinstance(state, dict):
        raise TinyformerError(corrupt)
    return state


def load_weights(model: torch.nn.Module, ckpt_dir: Path) -> None:
    from tinyformer.model.io import load_state

    load_state(model, Path(ckpt_dir) / rundir.WEIGHTS_FILE)
