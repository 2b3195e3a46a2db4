"""Shared fixtures: the real-text folder ../shared/data (skipped with a reason where absent), a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Tiny models gain nothing from a second thread, and tests that spawn processes (CLI, DDP) would
# oversubscribe the cores: one thread per process, inherited by every subprocess.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# precision=auto caches its measurements; tests keep theirs out of the user's ~/.cache
os.environ.setdefault("TINYFORMER_CACHE", tempfile.mkdtemp(prefix="tinyformer-test-cache-"))

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


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def main_cli(capsys):
    """`tinyformer ARGS` run in this process (the same entry point as the console script, minus the ~3 s of
    starting Python and importing torch per call); returns returncode / stdout / stderr."""
    import torch

    from tinyformer.cli import main

    threads = torch.get_num_threads()

    def run(*args, check: bool = False) -> Result:
        capsys.readouterr()
        try:
            rc = main([str(a) for a in args])
        finally:
            torch.set_num_threads(threads)  # train.threads=1 must not leak into other tests
        out, err = capsys.readouterr()
        if check and rc != 0:
            raise AssertionError(f"tinyformer {' '.join(map(str, args))} failed:\n{out}\n{err}")
        return Result(rc, out, err)

    return run
