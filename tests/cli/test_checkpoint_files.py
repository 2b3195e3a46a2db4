"""What `train`, `eval` and `sample` make of the files of a run directory: no code ever runs from a
checkpoint, a damaged index, damaged weights or optimizer moments and an older format are one line naming the
file and the way on, a diverging run writes no broken checkpoint, and every rename is made durable."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

COMMON = ["train.max_steps=8", "train.eval_every=4", "train.ckpt_every=2", "train.keep_last=10"]


def ckpt_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


@pytest.fixture
def paused(train_lm, tmp_path) -> Path:
    """A run of 8 steps paused at step 2, its own copy for each test."""
    run = tmp_path / "run"
    train_lm(run, *COMMON, "train.stop_at_step=2")
    return run


# ---------------------------------------------------------------- no code from a checkpoint


class Payload:
    """A pickle that creates a file when unpickled: what a planted trainer_state.pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_planted_pickle_never_runs(train_lm, tmp_path, paused, one_line_error):
    marker = tmp_path / "pwned"
    # beside a valid state: resuming reads JSON + safetensors and never touches the pickle
    run = tmp_path / "beside"
    train_lm(run, "train.max_steps=4", "train.stop_at_step=2", "train.eval_every=0")
    torch.save({"step": Payload(marker)}, ckpt_dir(run, 2) / "trainer_state.pt")
    train_lm(run, "train.max_steps=4", "train.eval_every=0")
    assert not marker.exists()
    # disguised as the state files: refused as corrupt, still never unpickled
    for name in ("trainer_state.safetensors", "trainer_state.json"):
        torch.save({"step": Payload(marker)}, ckpt_dir(paused, 2) / name)
        one_line_error(train_lm(paused, *COMMON, check=False), "corrupt")
    assert not marker.exists()


# ---------------------------------------------------------------- damaged files


@pytest.mark.parametrize("index", ["[]", '{"latest": 6}', '{"latest": "../../elsewhere"}', "{not json"])
def test_a_damaged_index_is_one_line_for_train_and_eval(cli, train_lm, tmp_path, paused, one_line_error, index):
    (paused / "checkpoints" / "index.json").write_text(index)
    before = tree(tmp_path)
    one_line_error(train_lm(paused, *COMMON, "--resume", check=False), "index.json")
    one_line_error(cli("eval", "--ckpt", paused), "index.json")
    assert tree(tmp_path) == before


def damage(path: Path, how: str, name: str | None = None) -> None:
    tensors = load_file(path)
    name = name or next(k for k, t in tensors.items() if t.is_floating_point() and t.dim() == 2)
    t = tensors[name]
    tensors[name] = {"nan": t.clone().fill_(float("nan")), "inf": t.clone().fill_(float("inf")),
                     "int32": torch.ones_like(t, dtype=torch.int32)}[how]
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("how", ["nan", "inf", "int32"])
def test_damaged_weights_are_refused_by_eval_sample_and_resume_naming_the_file(cli, train_lm, paused,
                                                                               one_line_error, how):
    weights_file = ckpt_dir(paused, 2) / "model.safetensors"
    damage(weights_file, how)
    for args in (["eval", "--ckpt", paused], ["sample", "--ckpt", paused, "--max-new-tokens", "4"]):
        one_line_error(cli(*args), str(weights_file), "damaged")
    line = one_line_error(train_lm(paused, *COMMON, check=False), str(weights_file), f"delete {ckpt_dir(paused, 2)}")
    assert "train.lr" not in line


def test_damaged_optimizer_moments_are_refused_on_resume_naming_the_file(train_lm, paused, one_line_error):
    state_file = ckpt_dir(paused, 2) / "trainer_state.safetensors"
    name = next(k for k in load_file(state_file) if k.endswith("exp_avg_sq"))
    damage(state_file, "inf", name)
    line = one_line_error(train_lm(paused, *COMMON, check=False), str(state_file), "exp_avg_sq")
    assert "train.lr" not in line


# ---------------------------------------------------------------- divergence


def finite_checkpoints(run: Path) -> list[bool]:
    return [all(torch.isfinite(t).all() for t in load_file(p / "model.safetensors").values())
            for p in sorted((run / "checkpoints").glob("step-*"))]


def test_a_diverging_run_writes_no_broken_checkpoint_and_its_restart_command_works(train_lm, tmp_path,
                                                                                  one_line_error):
    run = tmp_path / "run"
    diverging = ["train.lr=1e4", "train.eval_every=1", "train.ckpt_every=1", "train.max_steps=20"]
    line = one_line_error(train_lm(run, *diverging, check=False), "training diverged")
    assert finite_checkpoints(run) and all(finite_checkpoints(run))
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index.get("best_score") is None or isinstance(index["best_score"], float)
    # the printed way on, followed as written (the same command with the settings it names) until a run ends
    for hop in range(6):
        words = line.split()
        init = next(w for w in words if w.startswith("train.init_from="))
        lower = next(w for w in words if w.startswith("train.lr="))
        assert "run_dir=NEW_RUN_DIR" in words
        restart = tmp_path / f"restart-{hop}"
        proc = train_lm(restart, *diverging, init, lower, check=False)
        if proc.returncode == 0:
            break
        line = one_line_error(proc, "training diverged")
        assert all(finite_checkpoints(restart))
    assert json.loads((restart / "summary.json").read_text())["status"] == "finished"
    assert hop >= 1  # 1e4 and 1e3 both diverge with this model: the suggestion is followed more than once


def test_a_score_that_is_not_finite_never_becomes_the_best(train_lm, tmp_path, one_line_error):
    run = tmp_path / "run"
    one_line_error(train_lm(run, "train.lr=1e5", "train.warmup=1000", "train.eval_every=5", "train.max_steps=1000",
                            check=False), "training diverged")
    index_file = run / "checkpoints" / "index.json"
    if index_file.exists():
        best = json.loads(index_file.read_text()).get("best_score")
        assert best is None or (isinstance(best, float) and best == best)
    assert all(finite_checkpoints(run))


# ---------------------------------------------------------------- durability


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads the path of an fd from /proc")
def test_every_rename_is_followed_by_an_fsync_of_its_directory(train_lm, tmp_path, monkeypatch):
    """A power loss cannot be simulated here: record what is synced, in order, around each rename."""
    events: list[tuple[str, str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(("fsync", kind, os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst, **kw):
        real_replace(src, dst, **kw)
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = tmp_path / "run"
    train_lm(run, "train.max_steps=2", "train.eval_every=2", "train.ckpt_every=1")
    monkeypatch.setattr(os, "fsync", real_fsync)
    monkeypatch.setattr(os, "replace", real_replace)
    renames = [(i, e) for i, e in enumerate(events) if e[0] == "replace"]
    assert any(Path(dst).name == "step-00000002" for _, (_, _, dst) in renames)
    assert any(Path(dst).name == "index.json" for _, (_, _, dst) in renames)
    for i, (_, src, dst) in renames:
        parent = os.path.dirname(dst)
        assert ("fsync", "dir", parent) in events[i + 1:], f"{dst} renamed, its directory never synced after"
        if Path(dst).name.startswith("step-"):  # the step directory's own entries, before it is renamed
            assert ("fsync", "dir", src) in events[:i], f"{src} not synced before its rename"
    # checkpoints/ itself was created by the first checkpoint: the run directory is synced after
    assert ("fsync", "dir", os.path.realpath(run)) in events
