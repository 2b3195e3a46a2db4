"""tinyformer.config: dataclass configs from YAML and key=value overrides, with typo-proof keys and typed values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tinyformer.config import from_dict, load_config, parse_overrides, save_config, to_dict
from tinyformer.errors import TinyformerError


@dataclasses.dataclass
class Inner:
    n_layers: int = 2
    lr: float = 1e-3
    names: tuple[str, ...] = ("a",)


@dataclasses.dataclass
class Outer:
    model: Inner = dataclasses.field(default_factory=Inner)
    seed: int = 0
    device: str | None = None
    compile: bool = False


def test_unknown_key_names_closest_valid_key():
    with pytest.raises(TinyformerError, match=r"unknown config key 'model.n_layer'.*'n_layers'"):
        from_dict(Outer, {"model": {"n_layer": 3}})


def test_yaml_and_overrides_resolve_with_types(tmp_path: Path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model:\n  n_layers: 3\n  lr: 1e-4\nseed: 5\n")
    cfg = load_config(Outer, cfg_file, ["model.lr=3e-4", "compile=true", "model.names=[x, y]"])
    assert cfg.model.n_layers == 3 and cfg.model.lr == pytest.approx(3e-4) and isinstance(cfg.model.lr, float)
    assert cfg.compile is True and cfg.seed == 5 and cfg.model.names == ("x", "y")
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Outer, tmp_path / "resolved.yaml") == cfg
    assert to_dict(cfg)["model"]["names"] == ["x", "y"]


def test_bad_values_are_one_line_errors(tmp_path: Path):
    with pytest.raises(TinyformerError, match="expected an integer"):
        from_dict(Outer, {"seed": "three"})
    with pytest.raises(TinyformerError, match="key=value"):
        parse_overrides(["model.n_layers"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(TinyformerError, match="not valid YAML"):
        load_config(Outer, bad)
    with pytest.raises(TinyformerError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
