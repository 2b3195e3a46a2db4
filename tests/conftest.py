"""Shared fixtures: the real-text folder ../shared/data (skipped with a reason where absent), a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny models gain nothing from a second thread, and tests that spawn processes (CLI, DDP) would
# oversubscribe the cores: one thread per process, inherited by every subprocess.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: the project's tests must pass without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-text folder {SHARED_DATA} is absent (it sits beside the project in CI)")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m tinyformer ARGS` in a subprocess, as a user would; returns the completed process."""
    proc = subprocess.run(
        [sys.executable, "-m", "tinyformer", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tinyformer {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli
