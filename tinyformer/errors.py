"""The one exception type for mistakes a user can make; the CLI prints it as one line and exits non-zero."""


class TinyformerError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it, in one line."""

    exit_code = 2
