"""tinyformer.fileio: writes that leave the old file or nothing (never half a file), and outputs that need --force."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyformer.errors import TinyformerError
from tinyformer.fileio import atomic_dir, atomic_write, check_output


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("new partial")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_and_check_output(tmp_path: Path):
    out = tmp_path / "tok"
    with pytest.raises(RuntimeError), atomic_dir(out) as d:
        (d / "a").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out) as d:
        (d / "a").write_text("x")
    assert (out / "a").read_text() == "x"
    with pytest.raises(TinyformerError, match="--force"):
        check_output(out)
    assert check_output(out, force=True) == out
