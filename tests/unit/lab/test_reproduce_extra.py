"""Our extra columns of `lengen reproduce` (presets/published_extra.yaml): their settings, the rows a
coupling scheme skips, and the protocol stamp that keeps a directory of ape/rope runs valid."""

from __future__ import annotations

import json
import shutil

import pytest

from tinyformer.errors import TinyformerError
from tinyformer.lab import reproduce
from tinyformer.lab.setup import TaskSetup
from tinyformer.train import config as train_config

EXTRA = ["rope-rand", "alibi-rand", "fire", "coupled-relative"]
LLAMA_SHAPE = ("model.preset", "model.norm_eps", "model.d_ff", "model.scale_residual_init", "train.schedule",
               "train.lr", "model.d_model", "model.n_layers", "train.max_steps")


@pytest.mark.parametrize("scale", ["cpu", "full"])
def test_the_extra_columns_are_the_rope_column_with_their_own_positions(scale):
    jobs, skips = reproduce.columns(scale, "unused", schemes=["rope", *EXTRA], seeds=[0])
    runs = {(j.row, j.scheme): j.cfg for j in jobs}
    protocol = reproduce.load_protocol(scale)
    rows = list(protocol["rows"])
    # coupled-relative runs only where the task couples positions: UF; every other row is skipped with why
    assert sorted(row for row, s in runs if s == "coupled-relative") == ["UF"]
    assert [(s.row, s.scheme) for s in skips] == [(r, "coupled-relative") for r in rows if r != "UF"]
    assert all("has no position coupling rule" in s.reason for s in skips)
    want = {"rope-rand": ("rope", True), "alibi-rand": ("alibi", True), "fire": ("fire", False),
            "coupled-relative": ("coupled-relative", False)}
    for (row, name), cfg in runs.items():
        if name == "rope":
            continue
        assert (cfg.model.position, cfg.task.random_positions) == want[name], (row, name)
        rope = reproduce.run_settings(protocol, scale, row, "rope", 0)
        ours = reproduce.run_settings(protocol, scale, row, name, 0)
        assert {k: ours.get(k) for k in LLAMA_SHAPE} == {k: rope[k] for k in LLAMA_SHAPE}, (row, name)
        # RoPE's theta and scaling belong to the rope columns only
        assert ("model.rope_theta" in ours) == (name == "rope-rand")
        setup = TaskSetup(cfg)  # every setting is a valid lab run: the model and its positions build
        setup.model_config()
        if cfg.task.random_positions:  # L_max: the longest evaluated input's positions
            assert setup.random_positions_to == setup.positions_needed
    assert runs[("UF", "rope-rand")].run_dir is not None and runs[("UF", "rope-rand")].run_dir.endswith(
        "runs/UF/rope-rand/seed-0")


def test_an_unknown_column_lists_every_valid_one():
    with pytest.raises(TinyformerError) as err:
        reproduce.plan("cpu", "x", schemes=["alibi"])
    assert str(err.value) == ("the published protocol defines no scheme 'alibi'; it has: ape, rope; our extra "
                              "columns (presets/published_extra.yaml): rope-rand, alibi-rand, fire, coupled-relative")
    assert reproduce.scheme_names() == ["ape", "rope", *EXTRA]


def test_a_directory_of_ape_rope_runs_takes_extra_columns_later_and_refuses_a_changed_extra_preset(
        tmp_path, monkeypatch):
    results = tmp_path / "res"
    reproduce.check_results_dir(results, "cpu", {}, ["ape", "rope"])
    stamp = json.loads((results / "protocol.json").read_text())
    assert sorted(stamp) == ["overrides", "preset_sha256", "protocol", "scale"]  # as before the extra columns
    reproduce.check_results_dir(results, "cpu", {}, ["fire"])  # accepted: the extra file's hash is added
    with_extra = json.loads((results / "protocol.json").read_text())
    assert {k: v for k, v in with_extra.items() if k != reproduce.EXTRA_KEY} == stamp
    assert len(with_extra[reproduce.EXTRA_KEY]) == 64
    reproduce.check_results_dir(results, "cpu", {}, ["ape"])
    reproduce.check_results_dir(results, "cpu", {}, ["rope-rand"])
    # the extra preset edited: extra columns are refused, the published ones still run
    presets = tmp_path / "presets"
    shutil.copytree(train_config.PRESET_DIR, presets)
    extra = presets / "published_extra.yaml"
    extra.write_text(extra.read_text().replace("model.position: fire", "model.position: nope"))
    monkeypatch.setattr(train_config, "PRESET_DIR", presets)
    with pytest.raises(TinyformerError, match="holds extra columns made with another presets/published_extra.yaml"):
        reproduce.check_results_dir(results, "cpu", {}, ["fire"])
    reproduce.check_results_dir(results, "cpu", {}, ["ape", "rope"])
    assert json.loads((results / "protocol.json").read_text()) == with_extra
    # a directory whose published preset differs is refused whatever the columns
    published = presets / "published.yaml"
    published.write_text(published.read_text().replace("train.max_steps: 30000", "train.max_steps: 30001"))
    with pytest.raises(TinyformerError, match="another preset_sha256"):
        reproduce.check_results_dir(results, "cpu", {}, ["ape"])
