"""Experiment trackers beside RUN/metrics.jsonl: `train.loggers=[tensorboard,wandb,trackio]`.

Each tracker gets what metrics.jsonl gets, at the same steps (a record's values under `KIND/KEY`, nested
values such as a lab run's accuracy per bin as `eval/accuracy/1-50`), the run's config (RUN/config.yaml) at
the start and its summary (summary.json) at the end. Only the main process tracks. One id per run, kept in
RUN/trackers.json, lets a resumed run continue the same tracker runs (wandb's id, trackio's run name). A
tracker that fails while the run trains is one warning on stderr (its traceback in RUN/errors.log) and is
switched off; the run and its metrics.jsonl go on. A tracker that is not installed is refused before the run
starts (`check_installed`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any

from tinyformer.config import flatten_dotted, read_yaml
from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write
from tinyformer.train import rundir

TRACKERS_FILE = "trackers.json"  # in the run directory: the id and name its tracker runs continue under


class Tracker:
    """One experiment tracker: start(run_dir, config, run id, name) / log(step, values) / summary(values) /
    finish(failed). `start` is given the run's id (the same on every resume) and a display name; `failed`: the
    run ended by an error (wandb marks its run crashed)."""

    name = ""
    module = ""  # the package `check_installed` looks for

    def __init__(self, project: str) -> None:
        self.project = project

    def start(self, run_dir: Path, config: dict[str, Any], run_id: str, name: str) -> None:
        raise NotImplementedError

    def log(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def summary(self, values: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self, failed: bool = False) -> None:
        raise NotImplementedError


class TensorBoard(Tracker):
    """Event files in RUN/tb (a resumed run appends new ones; TensorBoard reads them as one run)."""

    name, module = "tensorboard", "tensorboard"

    def start(self, run_dir: Path, config: dict[str, Any], run_id: str, name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def summary(self, values: dict[str, Any]) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(values, indent=2, default=str) + "\n```")

    def finish(self, failed: bool = False) -> None:
        self.writer.close()


class WandB(Tracker):
    """A Weights & Biases run with the run's id (resume="allow"), its files under RUN/wandb; WANDB_MODE=offline
    keeps it on disk (`wandb sync` uploads it later)."""

    name, module = "wandb", "wandb"

    def start(self, run_dir: Path, config: dict[str, Any], run_id: str, name: str) -> None:
        import wandb

        self.run = wandb.init(project=self.project, name=name, dir=str(run_dir), config=config, id=run_id,
                              resume="allow")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def finish(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Trackio(Tracker):
    """A trackio run named NAME-ID (unique, so resume="allow" continues this run's and no other's), in trackio's
    local store (TRACKIO_DIR, by default ~/.cache/huggingface/trackio). trackio has no summary: it is logged
    at the run's last step as `summary/KEY`."""

    name, module = "trackio", "trackio"

    def start(self, run_dir: Path, config: dict[str, Any], run_id: str, name: str) -> None:
        import trackio

        self.run = trackio.init(project=self.project, name=f"{name}-{run_id}", config=config, resume="allow",
                                auto_log_cpu=False, auto_log_gpu=False, embed=False)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        numbers = scalars({"summary": {k: v for k, v in values.items() if k != "step"}})
        if isinstance(values.get("step"), int) and numbers:
            self.run.log(numbers, step=values["step"])

    def finish(self, failed: bool = False) -> None:
        self.run.finish()


TRACKERS: dict[str, type[Tracker]] = {t.name: t for t in (TensorBoard, WandB, Trackio)}


def check_installed(names: list[str] | tuple[str, ...]) -> None:
    """Refuse (one line, before anything is written) a tracker of `train.loggers` whose package is missing."""
    for name in names:
        if importlib.util.find_spec(TRACKERS[name].module) is None:
            raise TinyformerError(f"train.loggers names {name}, which is not installed; "
                                  f"pip install 'tinyformer[{name}]' (or drop {name} from train.loggers)")


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a record as `PREFIX/KEY` (nested mappings flattened: `eval/accuracy/1-50`)."""
    return {name: value for name, value in flatten_dotted(record, "/", prefix).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class Trackers:
    """The trackers `train.loggers` names, for one run directory; every call is safe: a failing tracker warns
    once and is switched off."""

    def __init__(self, names: list[str] | tuple[str, ...], run_dir: Path, project: str) -> None:
        self.run_dir = Path(run_dir)
        self.active = [TRACKERS[name](project) for name in dict.fromkeys(names)]
        self.started = False

    def start(self, resumed: bool) -> None:
        """Start each tracker: a resumed run under the id RUN/trackers.json keeps, a new one under a new id."""
        if not self.active:
            return
        path = self.run_dir / TRACKERS_FILE
        kept = _read_json(path) if resumed else {}
        run_id, name = kept.get("id") or uuid.uuid4().hex[:8], kept.get("name") or self.run_dir.resolve().name
        if kept.get("id") != run_id:
            with atomic_write(path) as f:
                json.dump({"id": run_id, "name": name}, f)
        config_path = self.run_dir / rundir.CONFIG_FILE
        config = read_yaml(config_path) if config_path.is_file() else {}
        self.started = True
        self._each("start", self.run_dir, config, run_id, name)

    def log(self, record: dict[str, Any]) -> None:
        """A metrics.jsonl record: its values under KIND/KEY at its step."""
        values = scalars({k: v for k, v in record.items() if k not in ("step", "kind")}, f"{record.get('kind', 'train')}/")
        self._each("log", record["step"], values)

    def summary(self, summary: dict[str, Any]) -> None:
        self._each("summary", summary)

    def finish(self, failed: bool = False) -> None:
        """Finish each started tracker (`failed`: the run ended by an error); later calls do nothing."""
        if self.started:
            self._each("finish", failed)
        self.active = []

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.active):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker must never cost the run: warn, switch it off, go on
                self.active.remove(tracker)
                self._warn(tracker, method, exc)

    def _warn(self, tracker: Tracker, method: str, exc: BaseException) -> None:
        where = self.run_dir / rundir.ERRORS_FILE
        with contextlib.suppress(OSError), open(where, "a", encoding="utf-8") as f:
            f.write(f"=== tracker {tracker.name} ({method}) ===\n{''.join(traceback.format_exception(exc))}\n")
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(f"tinyformer: warning: tracker {tracker.name} failed in {method} ({type(exc).__name__}: {message}); "
              f"it is off for the rest of this run, metrics.jsonl goes on (details in {where})",
              file=sys.stderr, flush=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
