"""The client's own outcomes that are not the master's answers, with their exit codes
(``main.py`` maps every outcome to one)."""

__all__ = ["UsageError", "RunNotCompleted", "EXIT_USAGE", "EXIT_REFUSED",
           "EXIT_UNREACHABLE", "EXIT_NOT_COMPLETED", "EXIT_INTERRUPTED", "EXIT_BUG"]

EXIT_BUG = 1            # a local error: a bug in the client (traceback with -v)
EXIT_NOT_COMPLETED = 1  # ``wait``: the run ended other than completed; ``call``: failed
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), except for monitors, which it ends


class UsageError(Exception):
    """The command line is wrong (exit code 2)."""


class RunNotCompleted(Exception):
    """``wait``: the run ended other than completed; ``call``: the function failed
    (exit code 1)."""
