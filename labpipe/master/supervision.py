"""Supervised tasks: a component's asyncio tasks, none of whose failures is lost.

``TaskSet(component, logger, on_fatal=None)`` holds the tasks one component of the
master starts (the scheduler's stage loops and background work, the experiment
database's scan loop, the master's own):

- ``spawn(coro, what=None, context=None, fatal=False)`` starts a task and keeps it until
  it ends. An exception it ends with is logged at once on the component's logger, with
  the component, what the task does (default: the coroutine's name) and its context (a
  RID, a pipeline), traceback attached; the task still holds the exception for whoever
  awaits it, and asyncio never reports it again as "never retrieved".
- A *fatal* task is one whose end the component cannot survive: its failure is logged,
  then reported to ``on_fatal(description, exception)`` (the master stops; see
  ``Master``). A fatal task that returns is reported too: it was meant to run for the
  component's life. Every other failure is logged and survived.
- ``await wait()`` waits until every task has ended, tasks spawned meanwhile included;
  ``await cancel()`` cancels them all first. A component's teardown calls one of them, so
  that nothing it started outlives it.

Why not ``asyncio.TaskGroup``: a TaskGroup cancels every task of the group at the first
failure and refuses new tasks from then on, while the master must still stop in order
(runs closed by their workers' escalating close, their ends written to history) when
one of its tasks fails. The master's lifetime is an ``AsyncExitStack``; its tasks are
these sets, each emptied by its component's teardown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["TaskSet", "FatalHandler"]

T = TypeVar("T")

#: Called with the failed task's description and its exception (or a RuntimeError
#: when a fatal task returned).
FatalHandler = Callable[[str, BaseException], None]


class TaskSet:
    """The running tasks of one component; see the module docstring."""

    def __init__(self, component: str, logger: logging.Logger | None = None,
                 on_fatal: FatalHandler | None = None):
        self.component = component
        self.logger = logger or logging.getLogger(__name__)
        self.on_fatal = on_fatal
        self._tasks: dict[asyncio.Task[Any], tuple[str, bool]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks still running."""
        return list(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], what: str | None = None, *,
              context: str | None = None, fatal: bool = False) -> asyncio.Task[T]:
        """Run ``coro`` in a task kept until it ends (see the module docstring)."""
        what = what or f"background task {getattr(coro, '__qualname__', coro)}"
        label = f"{context or self.component}: {what}"
        task = asyncio.create_task(coro, name=label)
        self._tasks[task] = (label, fatal)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        label, fatal = self._tasks.pop(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.logger.error("%s failed", label, exc_info=exc)
        elif fatal:
            exc = RuntimeError(f"{label} ended")
            self.logger.error("%s ended, although it was to run as long as the %s",
                              label, self.component)
        if fatal and exc is not None and self.on_fatal is not None:
            self.on_fatal(label, exc)

    async def wait(self) -> None:
        """Wait until every task has ended (their failures were logged already)."""
        while self._tasks:
            # not gather: a cancelled wait() must not cancel the tasks
            await asyncio.wait(list(self._tasks))

    async def cancel(self) -> None:
        """Cancel every task, and wait until each has ended."""
        while self._tasks:
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(list(self._tasks))
