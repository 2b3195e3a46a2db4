"""SIGINT/SIGTERM while a run (or a pool of runs) goes on: the first is recorded so the work in hand can end
cleanly (a run finishes its step and saves; a pool forwards it to its workers), a second gives up at once."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from typing import Any

from tinyformer.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While the `with` body runs, the first SIGINT/SIGTERM sets `signum`; a second raises `Interrupted`
    (exit 128 + that signal). Outside the main thread, where handlers cannot be set, nothing changes."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and self.gives_up():
            raise Interrupted(signum)
        self.signum = signum

    def gives_up(self) -> bool:
        """Whether a signal after the first ends at once."""
        return True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class ForwardedSignals(StopSignals):
    """A pool's parent: the first signal is recorded and `forward()` sends it to every live worker; a second
    signal raises `Interrupted` only once the first was forwarded (before that it just replaces it)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def gives_up(self) -> bool:
        return self.sent > 0

    def forward(self, again: bool = False) -> None:
        """Send the signal to every live worker: once after the first, once more with `again`."""
        if (self.signum is None and not again) or self.sent >= (2 if again else 1):
            return
        self.sent += 1
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, self.signum or signal.SIGINT)
