"""The run directory: the one format every kind of run writes and every verb (`eval`, `sample`, `export`,
`attention`, `plot`) reads. This module alone knows its layout:

    RUN/config.yaml            the resolved RunConfig (model, train, data | task, eval)
    RUN/metrics.jsonl          one JSON record per line: kind train | eval
    RUN/summary.json           the run's outcome (status, step, final metrics; a task run's accuracy per bin)
    RUN/checkpoints/step-N/    model.safetensors + model.json + trainer_state.pt
    RUN/checkpoints/index.json latest, best (and the score that made it best)
    RUN/tokenizer/             a language-model run's tokenizer (a task run's vocabulary is its task)
    RUN/samples.txt, RUN/plots/
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tinyformer.errors import TinyformerError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.txt"
CHECKPOINTS = "checkpoints"
INDEX_FILE = "index.json"
TOKENIZER_DIR = "tokenizer"
PLOTS_DIR = "plots"
STATE_FILE = "trainer_state.pt"
WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model.json"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def read_index(run_dir: str | os.PathLike) -> dict[str, Any]:
    """RUN/checkpoints/index.json, or {} when the run has no checkpoint yet."""
    path = Path(run_dir) / CHECKPOINTS / INDEX_FILE
    if not path.exists():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise TinyformerError(f"{path} is corrupt; delete it to rebuild from the step-* directories") from None
    if not isinstance(index, dict) or any(not isinstance(index.get(k) or "", str) for k in ("latest", "best")):
        raise TinyformerError(f"{path} is not a checkpoint index; delete it to rebuild from the step-* directories")
    return index


def is_complete(ckpt: Path) -> bool:
    return (ckpt / STATE_FILE).is_file() and (ckpt / WEIGHTS_FILE).is_file()


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The directory of the run's latest complete checkpoint, or None."""
    ckpts = Path(run_dir) / CHECKPOINTS
    index = read_index(run_dir)
    if index.get("latest") and is_complete(ckpts / index["latest"]):
        return ckpts / index["latest"]
    done = sorted(p for p in ckpts.glob("step-*") if is_complete(p)) if ckpts.is_dir() else []
    return done[-1] if done else None


def prepare(run_dir: Path) -> None:
    """Create the run directory and make sure it can be written, before any work starts."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise TinyformerError(f"cannot write to run_dir {run_dir}: {exc.strerror}; choose a writable run_dir") from None


def run_dir_of(path: Path) -> Path | None:
    """The run a path belongs to: the path itself (a run dir), RUN for RUN/checkpoints[/step-N], else None."""
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / CHECKPOINTS).is_dir():
            return candidate
    return path if (path / CONFIG_FILE).is_file() else None


def resolve_checkpoint(path: str | os.PathLike, which: str | None = None) -> Path:
    """The checkpoint directory meant by `path`: a checkpoint dir itself, a run dir, or a run's checkpoints/.
    `which`: latest | best | None (best when the run recorded one, else latest)."""
    if which not in (None, "latest", "best"):
        raise TinyformerError(f"which must be 'latest' or 'best', got {which!r}")
    path = Path(path)
    if not path.exists():
        raise TinyformerError(f"checkpoint or run directory {path} does not exist; check the path")
    if path.is_file():
        if path.name not in (WEIGHTS_FILE, MODEL_CONFIG_FILE):
            raise TinyformerError(f"{path} is a file; pass a run directory or a checkpoint directory")
        path = path.parent
    if (path / WEIGHTS_FILE).exists() or (path / MODEL_CONFIG_FILE).exists():
        return path
    run = path.parent if path.name == CHECKPOINTS else path
    if not (run / CHECKPOINTS).is_dir():
        if (run / "model" / WEIGHTS_FILE).is_file() and (run / "results.json").is_file():
            raise TinyformerError(f"{run} is a lab run written by an older tinyformer (model/ + results.json); "
                                  "re-run it with this version to get a checkpoints/ directory")
        raise TinyformerError(
            f"{path} is neither a checkpoint directory (with {WEIGHTS_FILE}) nor a run directory (with {CHECKPOINTS}/)"
        )
    index = read_index(run)
    if not index:
        raise TinyformerError(f"{run} has no {CHECKPOINTS}/{INDEX_FILE}: the run has not saved a checkpoint yet; "
                              "train it first or wait for its first checkpoint")
    name = index.get(which or ("best" if index.get("best") else "latest"))
    if not name:
        hint = " (no evaluation was recorded; use --which latest)" if which == "best" else ""
        raise TinyformerError(f"{run / CHECKPOINTS / INDEX_FILE} names no {which!r} checkpoint{hint}")
    ckpt = run / CHECKPOINTS / name
    if not ckpt.is_dir():
        raise TinyformerError(f"the {which or 'chosen'} checkpoint {ckpt} named in {INDEX_FILE} is missing")
    return ckpt


class Run:
    """A run directory opened for reading: its config, checkpoints, tokenizer or task, metrics and summary.
    `config` is None for a bare checkpoint directory (weights without a run around them)."""

    def __init__(self, path: str | os.PathLike, which: str | None = None) -> None:
        from tinyformer.train.config import load_run_config

        self.given = Path(path)
        self.checkpoint = resolve_checkpoint(self.given, which)
        self.path = run_dir_of(self.checkpoint) or run_dir_of(self.given)
        self.config = None
        if self.path is not None and (self.path / CONFIG_FILE).is_file():
            try:
                self.config = load_run_config(self.path / CONFIG_FILE)
            except TinyformerError as exc:
                raise TinyformerError(f"run {self.path}: {exc}") from None

    @property
    def kind(self) -> str | None:
        """'lm', 'task', or None for a bare checkpoint."""
        return self.config.kind if self.config is not None else None

    @property
    def name(self) -> str:
        return (self.path or self.checkpoint).name

    def load_model(self, device: Any = "cpu"):
        from tinyformer.model.io import load_model

        return load_model(self.checkpoint).to(device).eval()

    def tokenizer(self):
        """The run's tokenizer (RUN/tokenizer), or None when it has none."""
        return read_tokenizer(self.path) if self.path is not None else None

    def task_setup(self):
        """The lab's TaskSetup of a task run (its task, bins, eval sets, position ids)."""
        if self.kind != "task":
            raise TinyformerError(f"{self.given} is not a task run")
        from tinyformer.lab.setup import TaskSetup

        return TaskSetup(self.config)

    def summary(self) -> dict[str, Any]:
        return read_summary(self.path or self.given)


def load_model(path: str | os.PathLike, which: str | None = None, device: Any = "cpu"):
    """The model of a run (its best checkpoint when it has one, else the latest) or of a checkpoint dir."""
    return Run(path, which).load_model(device)


def read_tokenizer(run_dir: str | os.PathLike):
    """RUN/tokenizer as a Tokenizer, or None when the run has none."""
    path = Path(run_dir) / TOKENIZER_DIR
    if not path.is_dir():
        return None
    from tinyformer.tokenizer import Tokenizer

    return Tokenizer.load(path)


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise TinyformerError(f"{path} is not valid JSON; the run directory is damaged") from None


def write_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    import math

    from tinyformer.fileio import atomic_write

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    with atomic_write(Path(run_dir) / SUMMARY_FILE) as f:
        f.write(json.dumps(clean(summary)) + "\n")
