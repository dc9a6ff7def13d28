"""Argument managers: where ``HasEnvironment.get_argument`` gets its values.

The contract (docs/internals.md): ``get(key, processor, group, tooltip) -> value`` and
``get_interactive(arglist, title) -> {key: value}`` with ``arglist`` a list of
``(key, processor, group, tooltip)``, raising ``CancelledArgsError`` when cancelled.

- ``ProcessArgumentManager(unprocessed_arguments)``: the values submitted with a run.
  Each is checked by its processor; a refused value, or a missing value without a
  default, raises ``ArgumentError`` naming the argument. ``check_unprocessed()`` then
  refuses submitted names the experiment never asked for. It cannot ask users for
  interactive arguments by itself: the worker's subclass overrides ``get_interactive``
  (``describe_arglist`` and ``process_values`` help it).
- ``TraceArgumentManager()``: used when examining an experiment: records every argument
  requested in ``requested_args`` and answers with the defaults.
"""

from typing import Any

from labpipe.language.arguments import ArgumentProcessor
from labpipe.language.exceptions import ArgumentError, DefaultMissing, UnknownArgumentsError

__all__ = ["ProcessArgumentManager", "TraceArgumentManager", "describe_arglist",
           "process_value", "process_values"]


#: ``[(key, processor, group, tooltip), ...]``, what ``get_interactive`` is given.
ArgList = list[tuple[str, ArgumentProcessor, str | None, str | None]]


def _default_or_none(processor: ArgumentProcessor) -> Any:
    try:
        return processor.default()
    except DefaultMissing:
        return None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ArgumentError):
        return exc.reason
    text = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    return f"{text} ({type(exc).__name__})" if text else type(exc).__name__


def process_value(key: str, processor: ArgumentProcessor, values: dict[str, Any]) -> Any:
    """The processed value of argument ``key``: ``values[key]`` checked by the
    processor, or its default when ``key`` is absent. Any refusal is an
    ``ArgumentError`` whose message names the argument."""
    try:
        if key in values:
            return processor.process(values[key])
        return processor.default()
    except DefaultMissing as e:
        raise DefaultMissing(key=key) from e
    except Exception as e:
        raise ArgumentError(_reason(e), key) from e


def describe_arglist(arglist: ArgList) -> list[list[Any]]:
    """``[[key, procdesc, group, tooltip], ...]``: the ``arglist_desc`` of the
    ``interactive_args`` notifier, from ``[(key, processor, group, tooltip), ...]``."""
    return [[key, processor.describe(), group, tooltip]
            for key, processor, group, tooltip in arglist]


def process_values(arglist: ArgList, values: dict[str, Any]) -> dict[str, Any]:
    """``{key: processed value}`` for every argument of ``arglist``, taking values the
    user supplied and defaults for the others; errors name the argument."""
    return {key: process_value(key, processor, values)
            for key, processor, _group, _tooltip in arglist}


class ProcessArgumentManager:
    """Processes the argument values submitted with a run (``expid["arguments"]``)."""

    def __init__(self, unprocessed_arguments: dict[str, Any] | None):
        self.unprocessed_arguments = dict(unprocessed_arguments or {})
        self.requested: list[str] = []

    def get(self, key: str, processor: ArgumentProcessor, group: str | None = None,
            tooltip: str | None = None) -> Any:
        """The processed value of ``key``, or the processor's default when it was not
        submitted; raises ``ArgumentError`` naming the argument."""
        if key not in self.requested:
            self.requested.append(key)
        return process_value(key, processor, self.unprocessed_arguments)

    def check_unprocessed(self) -> None:
        """Raise ``UnknownArgumentsError`` if arguments were submitted that the
        experiment did not request; the message lists them and the valid ones."""
        unknown = set(self.unprocessed_arguments) - set(self.requested)
        if unknown:
            raise UnknownArgumentsError(unknown, self.requested)

    check_unprocessed_arguments = check_unprocessed  # ARTIQ's name

    def get_interactive(self, arglist: ArgList, title: str) -> dict[str, Any]:
        """Not available here: interactive arguments are asked of users through the
        master, which the worker's argument manager does."""
        raise NotImplementedError(
            f"interactive arguments ({title!r}) need a master to ask users; "
            f"this argument manager has none (run the experiment under a labpipe master)")


class TraceArgumentManager:
    """Records the arguments an experiment requests, answering with their defaults.

    ``requested_args`` maps each key, in request order, to ``(processor, group,
    tooltip)``. An argument without a default gets ``None``.
    """

    def __init__(self) -> None:
        self.requested_args: dict[str, tuple[ArgumentProcessor, str | None, str | None]] = {}

    def get(self, key: str, processor: ArgumentProcessor, group: str | None = None,
            tooltip: str | None = None) -> Any:
        """Record the argument; its default (or ``None``)."""
        self.requested_args[key] = (processor, group, tooltip)
        return _default_or_none(processor)

    def get_interactive(self, arglist: ArgList, title: str) -> dict[str, Any]:
        """The defaults (or ``None``) of the requested interactive arguments."""
        return {key: _default_or_none(processor) for key, processor, _g, _t in arglist}
