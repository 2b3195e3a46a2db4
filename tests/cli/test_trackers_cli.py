"""train.loggers end to end: TensorBoard, wandb (offline) and trackio (a local store) each get what metrics.jsonl
gets, at the same steps, and a resumed run continues its tracker runs. Each tracker's files are read back
with an independent reader: TensorBoard's EventAccumulator, the .wandb records through wandb's protobuf
schema, trackio's SQLite tables."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import struct
import sys
from pathlib import Path

import pytest

pytest.importorskip("wandb")
pytest.importorskip("trackio")
pytest.importorskip("tensorboard")

STOP, STEPS = 3, 6  # the first invocation stops at STOP, the resume trains on to STEPS
TRACKED = ["train.loggers=[tensorboard,wandb,trackio]", "train.tracker_project=tinytest", f"train.max_steps={STEPS}",
           "train.eval_every=3"]


def expected(run: Path) -> dict[int, dict[str, float]]:
    """What each tracker must hold: metrics.jsonl's numbers as KIND/KEY, by step."""
    out: dict[int, dict[str, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        values = out.setdefault(record["step"], {})
        for key, value in record.items():
            if key not in ("step", "kind") and isinstance(value, (int, float)) and math.isfinite(value):
                values[f"{record['kind']}/{key}"] = value
    return out


# ------------------------------------------------------------ independent readers of each tracker's files


def tensorboard_values(run: Path) -> dict[int, dict[str, float]]:
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(run / "tb")).Reload()
    out: dict[int, dict[str, float]] = {}
    for name in mux.Runs():
        for tag in mux.GetAccumulator(name).Tags()["scalars"]:
            for event in mux.Scalars(name, tag):
                values = out.setdefault(event.step, {})
                assert tag not in values, f"step {event.step} has {tag} twice"
                values[tag] = event.value
    return out


def wandb_records(path: Path):
    """The protobuf records of a .wandb file: a 7-byte header, then 32 KiB blocks of chunks (checksum, length,
    type: full, first, middle, last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, parts = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def wandb_values(run: Path) -> tuple[set[str], dict[int, dict[str, float]], dict, dict]:
    """(the run ids, the history by step, the config of the first start, the last summary update)."""
    ids, history, config, summary = set(), {}, {}, {}
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):  # named by start time: in order
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
                config = config or {i.key: json.loads(i.value_json) for i in record.run.config.update}
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                step = row.pop("_step")
                assert step not in history, f"wandb has step {step} twice"
                history[step] = {k: v for k, v in row.items() if not k.startswith("_")}
            elif kind == "summary":
                summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.summary.update if not (i.key or i.nested_key[0]).startswith("_")})
    return ids, history, config, summary


def trackio_values(store: Path) -> tuple[set[str], dict[int, dict[str, float]], dict]:
    """(the run ids, the metrics by step with the summary row left out, the summary) of the tinytest project."""
    with sqlite3.connect(store / "tinytest.db") as db:
        rows = db.execute("SELECT run_id, step, metrics FROM metrics ORDER BY id").fetchall()
    ids, out, summary = set(), {}, {}
    for run_id, step, text in rows:
        ids.add(run_id)
        metrics = {k: v for k, v in json.loads(text).items() if k != "timestamp"}
        if any(k.startswith("summary/") for k in metrics):
            summary.update(metrics)
            continue
        values = out.setdefault(step, {})
        assert not set(values) & set(metrics), f"trackio has {set(values) & set(metrics)} twice at step {step}"
        values.update(metrics)
    return ids, out, summary


def assert_same(got: dict[int, dict[str, float]], want: dict[int, dict[str, float]], exact: bool = True) -> None:
    assert sorted(got) == sorted(want)
    for step, values in want.items():
        assert set(got[step]) == set(values), step
        for key, value in values.items():
            assert got[step][key] == (value if exact else pytest.approx(value, rel=1e-6)), (step, key)


# ------------------------------------------------------------ one run, stopped and resumed, with all three


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, cli_process, tiny_lm_run):
    """A run with all three trackers, stopped at step STOP and resumed to STEPS in a second process."""
    root = tmp_path_factory.mktemp("trackers")
    run, store = root / "run", root / "trackio"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TRACKIO_DIR": str(store),
           "WANDB_CONFIG_DIR": str(root / "wandb-config"), "WANDB_CACHE_DIR": str(root / "wandb-cache"),
           "WANDB_DATA_DIR": str(root / "wandb-data")}
    first = cli_process(*tiny_lm_run.args(run, *TRACKED, f"train.stop_at_step={STOP}"), check=True, env=env)
    ids = json.loads((run / "trackers.json").read_text())
    first_metrics = (run / "metrics.jsonl").read_text()
    second = cli_process(*tiny_lm_run.args(run, *TRACKED), check=True, env=env)
    return {"run": run, "store": store, "ids": ids, "first_metrics": first_metrics, "outputs": (first, second)}


def test_each_tracker_gets_what_metrics_jsonl_gets_across_a_resume(tracked):
    run = tracked["run"]
    want = expected(run)
    assert sorted(want) == list(range(1, STEPS + 1)) and "eval/val_loss" in want[STOP] and "eval/val_loss" in want[STEPS]
    assert_same(tensorboard_values(run), want, exact=False)  # TensorBoard keeps float32
    _, history, _, _ = wandb_values(run)
    assert_same(history, want)
    _, logged, _ = trackio_values(tracked["store"])
    assert_same(logged, want)
    for proc in tracked["outputs"]:
        assert "tinyformer: warning" not in proc.stderr, proc.stderr


def test_a_resumed_run_continues_the_same_tracker_runs(tracked):
    run, kept = tracked["run"], tracked["ids"]
    assert json.loads((run / "trackers.json").read_text()) == kept  # the resume kept the id
    wandb_ids, _, _, _ = wandb_values(run)
    assert wandb_ids == {kept["id"]}
    assert len(list(run.glob("wandb/offline-run-*"))) == 2  # one per invocation, both the same run
    trackio_ids, _, _ = trackio_values(tracked["store"])
    assert len(trackio_ids) == 1


def test_trackers_get_the_config_and_the_summary(tracked):
    run = tracked["run"]
    summary = json.loads((run / "summary.json").read_text())
    _, _, config, wandb_summary = wandb_values(run)
    assert config["train"]["loggers"] == ["tensorboard", "wandb", "trackio"]
    assert config["model"]["d_model"] == 16
    assert wandb_summary["status"] == summary["status"] == "finished"
    assert wandb_summary["best_val_loss"] == summary["best_val_loss"]
    _, _, trackio_summary = trackio_values(tracked["store"])
    assert trackio_summary["summary/best_val_loss"] == summary["best_val_loss"]
    with sqlite3.connect(tracked["store"] / "tinytest.db") as db:
        (saved,), = db.execute("SELECT config FROM configs").fetchall()
    assert json.loads(saved)["train"]["max_steps"] == STEPS


# ------------------------------------------------------------ a tracker that fails, one that is not there


def _raise(exc: Exception):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize("method, exc", [("start", ImportError("no module named tensorboard.compat")),
                                         ("log", RuntimeError("disk quota exceeded"))])
def test_a_failing_tracker_is_one_warning_and_the_run_goes_on(train_lm, records, tmp_path, monkeypatch, method, exc):
    from tinyformer.train import trackers

    plain = tmp_path / "plain"
    train_lm(plain, "train.max_steps=4", "train.eval_every=2")
    monkeypatch.setattr(trackers.TensorBoard, method, _raise(exc))  # fault injection into the real tracker
    run = tmp_path / "tracked"
    result = train_lm(run, "train.max_steps=4", "train.eval_every=2", "train.loggers=[tensorboard]")
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "tracker tensorboard" in warnings[0] and str(exc) in warnings[0], result.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert records(run, timing=False) == records(plain, timing=False)  # metrics.jsonl complete and the same
    assert f"tracker tensorboard ({method})" in (run / "errors.log").read_text()


@pytest.mark.parametrize("name", ["wandb", "trackio", "tensorboard"])
def test_a_tracker_that_is_not_installed_is_refused_before_anything_is_written(train_lm, one_line_error, tmp_path,
                                                                               monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # `import NAME` now fails, as without the package
    run = tmp_path / "run"
    result = train_lm(run, f"train.loggers=[{name}]", check=False)
    one_line_error(result, "train.loggers", f"pip install 'tinyformer[{name}]'")
    assert not run.exists()


def test_a_lab_runs_accuracy_per_bin_reaches_the_tracker(tiny_task_run, tmp_path):
    run = tmp_path / "task"
    tiny_task_run(run, **{"train.loggers": ["tensorboard"]})
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert evals and all(set(r["accuracy"]) == {"1-8", "9-16"} for r in evals)
    got = tensorboard_values(run)
    for record in evals:
        for length_bin, accuracy in record["accuracy"].items():
            assert got[record["step"]][f"eval/accuracy/{length_bin}"] == pytest.approx(accuracy, rel=1e-6)


def test_only_the_main_process_tracks(cli_process, tiny_lm_run, tmp_path):
    run = tmp_path / "two"
    cli_process(*tiny_lm_run.args(run, "train.max_steps=4", "train.eval_every=2", "train.parallel=ddp",
                                  "train.loggers=[tensorboard]"), torchrun=True, check=True)
    assert len(list((run / "tb").iterdir())) == 1  # one writer: a second process would add its own event file
    assert_same(tensorboard_values(run), expected(run), exact=False)


def test_a_run_that_crashes_finishes_its_tracker_runs_as_failed(train_lm, tmp_path, monkeypatch):
    # an error mid-run (here a fault injected into the third step) must not leave a wandb run open ("running"
    # forever on the server): the run is finished with exit code 1, and TensorBoard's file is closed
    from tinyformer.train.trainer import Trainer

    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "wc",
                       "WANDB_CACHE_DIR": tmp_path / "wk", "WANDB_DATA_DIR": tmp_path / "wd"}.items():
        monkeypatch.setenv(key, str(value))
    step = Trainer.train_step
    calls = []

    def third_step_fails(self, lr):
        calls.append(lr)
        if len(calls) == 3:
            raise RuntimeError("injected fault")
        return step(self, lr)

    monkeypatch.setattr(Trainer, "train_step", third_step_fails)
    run = tmp_path / "run"
    result = train_lm(run, "train.max_steps=6", "train.eval_every=2", "train.loggers=[tensorboard,wandb]",
                      check=False)
    assert result.returncode != 0 and "injected fault" in (result.stderr + result.stdout)
    (path,) = run.glob("wandb/offline-run-*/run-*.wandb")
    exits = [r.exit.exit_code for r in wandb_records(path) if r.WhichOneof("record_type") == "exit"]
    assert exits == [1]
    assert tensorboard_values(run)[2]["train/train_loss"] == json.loads(
        (run / "metrics.jsonl").read_text().splitlines()[1])["train_loss"]
