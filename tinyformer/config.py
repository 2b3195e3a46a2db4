"""One config system: dataclasses, YAML presets and dotted `key=value` overrides, with typo-proof loading.

Every config (model, train, data, task) is a dataclass. `load_config` reads a YAML file, applies
overrides such as `model.n_layers=4`, and builds the dataclass, rejecting unknown keys with the closest
valid names. `to_dict` / `save_config` give back the resolved config for the run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_write

T = TypeVar("T")


def closest_hint(name: str, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    if near:
        return "did you mean " + " or ".join(repr(n) for n in near) + "?"
    return "valid keys: " + ", ".join(valid)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except TinyformerError as exc:
                errors.append(str(exc))
        raise TinyformerError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise TinyformerError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise TinyformerError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise TinyformerError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise TinyformerError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise TinyformerError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise TinyformerError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
        raise TinyformerError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise TinyformerError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads `1e-3` as a string
            except ValueError:
                pass
        raise TinyformerError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TinyformerError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and ill-typed values are one-line errors."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise TinyformerError(f"unknown config key '{full}'; {closest_hint(str(key), fields)}")
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except TinyformerError:
        raise
    except (TypeError, ValueError) as exc:
        raise TinyformerError(f"invalid config{' ' + where if where else ''}: {exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, YAML-friendly dict of a (nested) dataclass; tuples become lists."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if not f.metadata.get("internal")}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["model.n_layers=4", "lr=1e-3"]` -> nested dict; values are parsed as YAML scalars."""
    flat: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise TinyformerError(f"override {item!r} is not of the form key=value (for example model.n_layers=4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise TinyformerError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        flat[key] = value
    return nest_dotted(flat)


def flatten_dotted(d: Mapping[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """The inverse of nest_dotted: `{"model": {"n_layers": 4}}` -> `{"model.n_layers": 4}` (keys joined by sep)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_dotted(v, sep, key + sep))
        else:
            out[key] = v
    return out


def nest_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"model.n_layers": 4, "train.lr": 1e-3}` -> `{"model": {"n_layers": 4}, "train": {"lr": 1e-3}}`."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TinyformerError(f"setting {key!r} conflicts with another setting of {part}")
        node[parts[-1]] = value
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, merging nested mappings key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from a file, with one-line errors for a missing file or bad YAML."""
    path = Path(path)
    if not path.is_file():
        raise TinyformerError(f"config file {path} does not exist; check the path (presets are in configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise TinyformerError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                              f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise TinyformerError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise TinyformerError(f"config file {path} is not valid YAML{at}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TinyformerError(f"config file {path} must hold a mapping of keys to values")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> T:
    """YAML file (optional) + dotted overrides -> dataclass `cls`."""
    data = read_yaml(path) if path else {}
    return from_dict(cls, deep_merge(data, parse_overrides(overrides)))


def save_config(obj: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_write(path) as f:
        yaml.safe_dump(to_dict(obj), f, sort_keys=False)
