"""The one exception type for mistakes a user can make; the CLI prints it as one line and exits non-zero."""


class TinyformerError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it, in one line."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """A SIGINT/SIGTERM that ends the command: a second one while a run was already stopping (give up at
    once), or one that stopped a run of a multi-run command (sweep, best, reproduce, demo: no run starts
    after it). The CLI exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a
    process killed by it would."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
