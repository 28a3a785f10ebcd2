"""The exception for failures a user can fix, such as bad params, data or sources."""


class StageError(Exception):
    """A failure whose message states what went wrong, on which value, and what to do next.

    Stage scripts print the message without a traceback and exit with status 1.
    """
