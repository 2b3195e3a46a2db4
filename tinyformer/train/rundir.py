"""The run directory: the one format every kind of run writes and every verb (`eval`, `sample`, `export`,
`attention`, `plot`) reads. This module alone knows its layout:

    RUN/config.yaml            the resolved RunConfig (model, train, data | task, eval)
    RUN/metrics.jsonl          one JSON record per line: kind train | eval
    RUN/summary.json           the run's outcome (status, step, final metrics; a task run's accuracy per bin)
    RUN/report.md              the same outcome as a report card for people: machine, speed, loss, config
    RUN/checkpoints/step-N/    model.safetensors + model.json + trainer_state.json + trainer_state.safetensors
    RUN/checkpoints/index.json latest, best (and the score that made it best)
    RUN/tokenizer/             a language-model run's tokenizer (a task run's vocabulary is its task)
    RUN/samples.txt, RUN/plots/curves.png, RUN/errors.log (failed evaluations or samples; training went on)

The names of the files inside a checkpoint that hold the model (weights, model config) are the model's own
(`tinyformer.model.io`, below this layer), taken from there. A run's status in summary.json is one of
STATUSES.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write
from tinyformer.model import io as model_io
from tinyformer.tokenizer.tokenizer import Tokenizer
from tinyformer.train.config import load_run_config

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"  # the run's report card for people (tinyformer.train.report)
SAMPLES_FILE = "samples.txt"
CHECKPOINTS = "checkpoints"
INDEX_FILE = "index.json"
TOKENIZER_DIR = "tokenizer"
PLOTS_DIR = "plots"
CURVES_FILE = "curves.png"  # in PLOTS_DIR: the curves the run draws when it ends
ERRORS_FILE = "errors.log"  # tracebacks of evaluations or samples that failed while training went on
STATE_FILE = "trainer_state.json"  # counters, RNG and sampler states, settings: plain JSON
STATE_TENSORS_FILE = "trainer_state.safetensors"  # optimizer and RNG state tensors
WEIGHTS_FILE = model_io.WEIGHTS_FILE  # in a checkpoint: the model's weights and its ModelConfig
MODEL_CONFIG_FILE = model_io.CONFIG_FILE



STEP_NAME = re.compile(r"step-[0-9]{8,}")


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
    def names_a_step(value: Any) -> bool:
        return value is None or (isinstance(value, str) and STEP_NAME.fullmatch(value) is not None)

    if (not isinstance(index, dict) or not all(names_a_step(index.get(k)) for k in ("latest", "best"))
            or isinstance(index.get("best_score"), bool)
            or not isinstance(index.get("best_score", 0.0), (int, float, type(None)))):
        raise TinyformerError(f"{path} is not a checkpoint index; delete it to rebuild from the step-* directories")
    return index


def is_complete(ckpt: Path) -> bool:
    return all((ckpt / name).is_file() for name in (STATE_FILE, STATE_TENSORS_FILE, WEIGHTS_FILE, MODEL_CONFIG_FILE))


def step_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """RUN/checkpoints/step-* directories, oldest first (complete or not)."""
    ckpts = Path(run_dir) / CHECKPOINTS
    return sorted(p for p in ckpts.glob("step-*") if p.is_dir()) if ckpts.is_dir() else []


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The directory of the run's latest complete checkpoint, or None."""
    return resume_point(run_dir)[0]


def resume_point(run_dir: str | os.PathLike) -> tuple[Path | None, str | None]:
    """(the checkpoint a resume continues from, or None; a note when it is not the one index.json names).
    When index.json is missing or names an incomplete checkpoint, the newest complete one is used."""
    run_dir = Path(run_dir)
    steps = step_dirs(run_dir)
    index = read_index(run_dir)
    named = index.get("latest")
    if named and is_complete(run_dir / CHECKPOINTS / named):
        return run_dir / CHECKPOINTS / named, None
    done = [p for p in steps if is_complete(p)]
    if not done:
        if steps:  # only a damaged run has step directories and none complete: never train over it
            raise TinyformerError(
                f"{run_dir} has checkpoints but none is complete ({steps[-1].name} lacks "
                f"{', '.join(n for n in (STATE_FILE, STATE_TENSORS_FILE, WEIGHTS_FILE, MODEL_CONFIG_FILE) if not (steps[-1] / n).is_file())}); "
                f"it cannot be resumed: start a new run_dir, or delete {run_dir / CHECKPOINTS} to start this one over"
            )
        return None, None
    why = f"{INDEX_FILE} names {named}, which is missing or incomplete" if named else f"{INDEX_FILE} is missing"
    return done[-1], f"{why}; resuming from the newest complete checkpoint, {done[-1].name}"


def remove_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete what an interrupted atomic write leaves (`.NAME.*.tmp` files and directories, `.NAME.old`
    directories) in the run directory, its checkpoints/ and plots/; returns what was removed."""
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINTS, run_dir / PLOTS_DIR):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.startswith(".") and (path.name.endswith(".tmp") or path.name.endswith(".old")
                                              or path.name == ".write-test"):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def check_writable(run_dir: Path) -> None:
    """Make sure `run_dir` can be created and written, without creating anything (a start that fails later
    leaves no empty directory behind)."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise TinyformerError(f"run_dir {path} is a file; choose a directory for run_dir")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise TinyformerError(f"cannot create run_dir {path}: {probe} is a file; choose another run_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise TinyformerError(f"cannot write to run_dir {path}: {probe} is not writable; choose a writable run_dir")


def prepare(run_dir: Path) -> None:
    """Create the run directory (once the run has been accepted) and make sure it can be written."""
    check_writable(run_dir)
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
        raise TinyformerError(
            f"{path} is neither a checkpoint directory (with {WEIGHTS_FILE}) nor a run directory (with {CHECKPOINTS}/)"
        )
    index = read_index(run)
    if not index:
        steps = step_dirs(run)
        if steps:  # the index alone is lost: say which directories can still be read
            raise TinyformerError(f"{run} has no {CHECKPOINTS}/{INDEX_FILE}; pass a checkpoint directory such as "
                                  f"{steps[-1]}, or resume the run (which rebuilds the index)")
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
        return model_io.load_model(self.checkpoint).to(device).eval()

    def tokenizer(self):
        """The run's tokenizer (RUN/tokenizer), or None when it has none."""
        return read_tokenizer(self.path) if self.path is not None else None

    def summary(self) -> dict[str, Any]:
        return read_summary(self.path or self.given)


def load_model(path: str | os.PathLike, which: str | None = None, device: Any = "cpu"):
    """The model of a run (its best checkpoint when it has one, else the latest) or of a checkpoint dir."""
    return Run(path, which).load_model(device)


def write_tokenizer(run_dir: str | os.PathLike, tokenizer: Tokenizer) -> None:
    """Save a language-model run's tokenizer as RUN/tokenizer, unless the run has one already."""
    path = Path(run_dir) / TOKENIZER_DIR
    if not path.exists():
        tokenizer.save(path)


def read_tokenizer(run_dir: str | os.PathLike) -> Tokenizer | None:
    """RUN/tokenizer as a Tokenizer, or None when the run has none."""
    path = Path(run_dir) / TOKENIZER_DIR
    if not path.is_dir():
        return None
    return load_tokenizer(path, f"the tokenizer of run {run_dir}")


def load_tokenizer(path: str | os.PathLike, what: str = "tokenizer") -> Tokenizer:
    """A tokenizer directory as a Tokenizer; a damaged file is a one-line error, whatever it holds."""
    try:
        return Tokenizer.load(path)
    except TinyformerError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OSError) as exc:
        raise TinyformerError(f"{what} ({path}) is damaged ({type(exc).__name__}); re-save or re-train it") from None


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise TinyformerError(f"{path} is not valid JSON; the run directory is damaged") from None


def write_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    with atomic_write(Path(run_dir) / SUMMARY_FILE) as f:
        f.write(json.dumps(clean(summary)) + "\n")
