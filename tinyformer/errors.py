"""The one exception type for mistakes a user can make; the CLI prints it as one line and exits non-zero."""


class TinyformerError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it, in one line."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """A second SIGINT/SIGTERM while a run was already stopping: give up at once. The CLI exits with
    128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a process killed by it would."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
