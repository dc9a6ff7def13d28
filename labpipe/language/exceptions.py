"""Exceptions that experiment code raises or catches.

- ``TerminationRequested``: raised by ``scheduler.pause()`` when the run was asked to
  stop; let it propagate and the run ends cleanly.
- ``CancelledArgsError``: raised by ``interactive()`` when the user cancels the request.
- ``ArgumentError`` (a ``ValueError``): an argument value was refused. Argument
  processors raise it without a name; the argument manager re-raises it with the name
  of the argument, so that the message reads ``argument 'n': 12 is above the maximum 10``.
- ``DefaultMissing``: an argument processor was asked for a default it does not have.
- ``UnknownArgumentsError``: arguments were submitted that the experiment never asked for.

All of them survive pickling with their message intact (the worker sends them across
processes).
"""

from collections.abc import Iterable
from typing import Any

__all__ = ["TerminationRequested", "CancelledArgsError", "ArgumentError",
           "DefaultMissing", "UnknownArgumentsError"]


class TerminationRequested(Exception):
    """Raised by ``scheduler.pause()`` when the termination of the run was requested."""


class CancelledArgsError(Exception):
    """Raised by ``HasEnvironment.interactive()`` when the request for interactive
    arguments was cancelled."""


class ArgumentError(ValueError):
    """An argument value was refused.

    ``reason`` says what is wrong with the value, ``key`` is the name of the argument
    when known; the message is ``argument 'KEY': REASON`` (or just the reason).
    """

    def __init__(self, reason: str, key: str | None = None):
        self.reason = reason
        self.key = key
        super().__init__(reason if key is None else f"argument {key!r}: {reason}")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return type(self), (self.reason, self.key)


class DefaultMissing(ArgumentError):
    """An argument processor has no default value to give."""

    def __init__(self, reason: str = "no value was submitted and it has no default",
                 key: str | None = None):
        super().__init__(reason, key)


class UnknownArgumentsError(ArgumentError):
    """Arguments were submitted that the experiment did not request.

    ``unknown`` and ``valid`` are the sorted names of the submitted-but-unknown and of
    the requested arguments.
    """

    def __init__(self, unknown: Iterable[str], valid: Iterable[str]):
        self.unknown = sorted(unknown)
        self.valid = sorted(valid)
        listed = ", ".join(repr(k) for k in self.valid) or "none"
        super().__init__(
            f"unknown argument(s) {', '.join(repr(k) for k in self.unknown)}; "
            f"this experiment takes: {listed}")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return type(self), (self.unknown, self.valid)
