"""Writing and reading checkpoints of a run: RUN/checkpoints/step-NNNNNNNN/ (weights + trainer state) and
index.json (layout: `tinyformer.train.rundir`), and the `Checkpointer` that decides when a run saves and
collects what it saves.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir, atomic_write
from tinyformer.model import io as model_io
from tinyformer.train import rundir
from tinyformer.train.config import TrainConfig
from tinyformer.train.distributed import DistInfo, all_reduce_max, barrier
from tinyformer.train.trainer_state import DamagedState, Stateful, TrainState

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
    keep_last: int = 2,
) -> Path:
    """Write weights (via tinyformer.model.io.save_model) and trainer state for `step`; make it the index's
    latest; prune. `model` must be the plain module. The best is recorded after its evaluation (`record_score`)."""
    from safetensors.torch import save

    ckpts = Path(run_dir) / rundir.CHECKPOINTS
    name = rundir.step_name(step)
    tensors: dict[str, torch.Tensor] = {}
    document = {"format": STATE_FORMAT, "version": STATE_VERSION, "state": encode_state(trainer_state, tensors)}
    with atomic_dir(ckpts / name, force=True) as tmp:
        model_io.save_model(model, tmp)
        with atomic_write(tmp / rundir.STATE_TENSORS_FILE, "wb") as f:
            f.write(save(tensors, metadata={"format": "pt"}))
        with atomic_write(tmp / rundir.STATE_FILE) as f:
            json.dump(document, f)
    index = rundir.read_index(run_dir)
    index["latest"] = name
    record_score(run_dir, name, None, keep_last, index)
    return ckpts / name


def record_score(run_dir: str | Path, name: str, score: float | None, keep_last: int,
                 index: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make checkpoint `name` the best when `score` beats the recorded best (lower is better), write
    index.json atomically and prune; returns the index."""
    ckpts = Path(run_dir) / rundir.CHECKPOINTS
    index = rundir.read_index(run_dir) if index is None else index
    best = index.get("best_score")
    if best is not None and not math.isfinite(best):  # never a best nothing can beat
        best = None
    if score is not None and math.isfinite(score) and (best is None or score < best):
        index["best"], index["best_score"] = name, float(score)
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


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint, read as JSON + safetensors (never unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / rundir.STATE_FILE
    if not path.is_file():
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
    model_io.load_state(model, Path(ckpt_dir) / rundir.WEIGHTS_FILE)


class Checkpointer:
    """When a run saves, what it saves, and its index. A step is due every `train.ckpt_every` steps and at the
    last step of an invocation (`due`); `save(step, last_step=..., force=...)` also saves when the caller must
    (an evaluation or a signal follows). What is saved is the trainer's Stateful pieces, collected into one
    state: `train_state`'s entries at the top, each of `pieces` under its name, and `constants` (model config,
    context, result settings) beside them; `load` gives each piece its part back. After an evaluation,
    `record(step, score)` makes the checkpoint the best when it is and writes the outcome into its state."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, train_state: TrainState, pieces: dict[str, Stateful],
                 constants: dict[str, Any], model: Callable[[], torch.nn.Module | None], info: DistInfo,
                 device: torch.device) -> None:
        self.run_dir, self.cfg, self.train_state, self.pieces = run_dir, cfg, train_state, pieces
        self.constants, self.model, self.info, self.device = constants, model, info, device
        self.last_saved: Path | None = None  # the newest checkpoint this run wrote or resumed from

    def due(self, step: int, last_step: bool = False) -> bool:
        """Whether `step` is saved on its own account: every ckpt_every steps, and the last step."""
        return last_step or bool(self.cfg.ckpt_every and step % self.cfg.ckpt_every == 0)

    def save(self, step: int, *, last_step: bool = False, force: bool = False) -> bool:
        """Save `step` when it is due (or `force`); every process takes part. Returns whether it saved."""
        if not (force or self.due(step, last_step)):
            return False
        parts = {name: piece.state_dict() for name, piece in self.pieces.items()}  # collectives, in order
        model = self.model()
        broken = model is not None and not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
        if self.info.enabled:
            broken = all_reduce_max([float(broken)], self.info, self.device)[0] > 0
        if broken:  # never a checkpoint nothing can continue from
            raise self.diverged(step, "its weights hold NaN or infinite values")
        if self.info.is_main:
            state = {**self.train_state.state_dict(), **parts, **self.constants}
            self.last_saved = save_checkpoint(self.run_dir, step, model, state, keep_last=self.cfg.keep_last)
        barrier(self.info)
        return True

    def load(self, state: dict[str, Any], where: Path) -> None:
        """Give every piece its part of `state`, read from checkpoint `where`; a damaged or foreign state is
        one line, never a traceback."""
        try:
            for name, piece in self.pieces.items():
                piece.load_state_dict(state.get(name))
            self.train_state.load_state_dict(state)
            if rundir.step_name(self.train_state.step) != where.name:
                raise ValueError(f"step {self.train_state.step} does not fit {where.name}")
        except DamagedState as exc:
            raise TinyformerError(f"{where / rundir.STATE_TENSORS_FILE}: {exc}; the checkpoint is damaged: to "
                                  f"resume from the previous checkpoint delete {where}") from None
        except TinyformerError:
            raise
        except Exception as exc:
            raise TinyformerError(
                f"checkpoint state of {where} does not fit this run ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'bad value'}); it is corrupt or from another run"
            ) from None
        self.last_saved = where

    def record(self, step: int, score: float | None) -> None:
        """After the evaluation of a saved step (or the end of a run): the best checkpoint in index.json,
        then the outcome (best, status) in the step's state."""
        if self.info.is_main and self.last_saved is not None and self.last_saved.name == rundir.step_name(step):
            index = record_score(self.run_dir, self.last_saved.name, score, self.cfg.keep_last)
            self.train_state.best_checkpoint = index.get("best")
            update_state(self.last_saved, self.train_state.outcome())
        barrier(self.info)

    def begin(self, fell_back: bool) -> None:
        """Before the first step (the main process): a new run drops a stale index (naming checkpoints that
        never completed, it must not outrank this run's scores); a resume that fell back to an older
        checkpoint than the index names points the index at it again."""
        if self.last_saved is None:
            (self.run_dir / rundir.CHECKPOINTS / rundir.INDEX_FILE).unlink(missing_ok=True)
        elif fell_back:
            self.repair_index()

    def repair_index(self) -> None:
        """After a resume that fell back to the newest complete checkpoint: point index.json at it again (and
        at the best checkpoint its state remembers, when that still exists)."""
        index: dict[str, Any] = {"latest": self.last_saved.name}
        best, score = self.train_state.best_checkpoint, self.train_state.best_score
        if best and rundir.is_complete(self.run_dir / rundir.CHECKPOINTS / best) and score is not None:
            index.update(best=best, best_score=score)
        with atomic_write(self.run_dir / rundir.CHECKPOINTS / rundir.INDEX_FILE) as f:
            json.dump(index, f, indent=1)

    def diverged(self, step: int, what: str, named: int | None = None) -> TinyformerError:
        """The one line after a divergence (the weights of `step` broke; `named`: the step to name): how to go
        on from the last good checkpoint with a lower rate. A resume may not change train.lr (it decides the
        result), so its weights start a new run_dir (train.init_from)."""
        before = [p for p in rundir.step_dirs(self.run_dir) if rundir.is_complete(p) and p.name < rundir.step_name(step)]
        good = next((p for p in before if p.name == self.train_state.best_checkpoint), before[-1] if before else None)
        lower = f"train.lr={self.cfg.lr / 10:g}"
        if self.cfg.optimizer == "muon":
            lower += f" train.muon_lr={self.cfg.muon_lr / 10:g}"
        if good is None or "task.name" in self.constants.get("settings", {}):  # the lab starts runs from scratch
            how = (f"start again in a new run_dir with a lower learning rate ({lower}) or a longer train.warmup"
                   + (f" (the last good checkpoint is {good})" if good else ""))
        else:
            how = (f"restart from the last good checkpoint with a lower learning rate: the same command (without "
                   f"--resume) with train.init_from={good} {lower} run_dir=NEW_RUN_DIR (its weights, a fresh "
                   f"optimizer), or raise train.warmup")
        return TinyformerError(f"training diverged at step {step if named is None else named} ({what}); {how}")
