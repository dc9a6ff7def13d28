"""A run's console: every line it wrote (print, stdout, stderr, log records), in order.

Each line of a run gets a number (0, 1, 2... per run, in the order the master received
it) and the time it was written. The master keeps the last ``MAX_LINES`` lines (and at
most ``MAX_BYTES`` characters) of each of the last ``MAX_RUNS`` runs in memory, and
publishes every line on the ``console`` broadcast channel, batched: one message per
event-loop turn and run, ``{"rid": int, "first": int, "lines": [[time, text], ...]}``
(the lines numbered ``first``, ``first + 1``...). ``text(rid, since_line=0)`` (the
``console`` RPC target) returns what the buffer still holds from line ``since_line`` on:
``{"rid", "first", "next", "lines"}`` where ``first`` is the number of the first line
returned (greater than ``since_line`` when older lines were dropped from the bound) and
``next`` the number the next line will have. A monitor that reconnects asks for
``text(rid, since_line=next)`` and then follows the broadcast, skipping lines numbered
below what it has shown: nothing twice, nothing lost (within the bound).

A line's text is the print line itself, or ``LEVEL:logger:message`` for a log record
(as in the results file's ``log``; the results file also holds the console with times,
``console/text`` and ``console/time``, written by the worker).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from labpipe.worker.output import console_text_of

__all__ = ["ConsoleBuffers", "ConsoleTarget", "console_text_of", "MAX_LINES", "MAX_BYTES",
           "MAX_RUNS"]

#: Lines kept per run in memory (the oldest are dropped first).
MAX_LINES = 10_000
#: Characters kept per run in memory.
MAX_BYTES = 4 << 20
#: Runs whose console is kept (the oldest run's is dropped first).
MAX_RUNS = 64
#: Lines per broadcast message at most (a larger batch is split).
BATCH_LINES = 2_000


class _RunConsole:
    """One run's bounded line buffer."""

    __slots__ = ("lines", "first", "size", "pending_from", "pending")

    def __init__(self) -> None:
        self.lines: deque[tuple[float, str]] = deque()
        self.first = 0  # the number of lines[0]
        self.size = 0   # characters held
        self.pending_from: int | None = None  # the number of pending[0]
        self.pending: list[list[Any]] = []    # lines not yet broadcast

    @property
    def next(self) -> int:
        return self.first + len(self.lines)


class ConsoleBuffers:
    """The master's console buffers, one per run (see the module docstring).

    ``publish(channel, obj)`` is the broadcaster's ``broadcast``; ``add`` is called in
    the event loop's thread.
    """

    def __init__(self, publish: Callable[[str, Any], None], max_lines: int = MAX_LINES,
                 max_bytes: int = MAX_BYTES, max_runs: int = MAX_RUNS) -> None:
        self._publish = publish
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.max_runs = max_runs
        self._runs: OrderedDict[int, _RunConsole] = OrderedDict()
        self._dirty: set[int] = set()
        self._flush_scheduled = False

    def _run(self, rid: int) -> _RunConsole:
        run = self._runs.get(rid)
        if run is None:
            run = self._runs[rid] = _RunConsole()
            while len(self._runs) > self.max_runs:
                old, _ = self._runs.popitem(last=False)
                self._dirty.discard(old)
        return run

    def add(self, rid: int, created: float, text: str) -> None:
        """Keep one line of run rid and schedule its broadcast."""
        run = self._run(rid)
        if run.pending_from is None:
            run.pending_from = run.next
        run.lines.append((created, text))
        run.pending.append([created, text])
        run.size += len(text)
        while len(run.lines) > self.max_lines or (run.size > self.max_bytes
                                                  and len(run.lines) > 1):
            _, dropped = run.lines.popleft()
            run.size -= len(dropped)
            run.first += 1
        self._dirty.add(rid)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (tests of the buffer alone): at once
                self.flush()

    def flush(self) -> None:
        """Broadcast the lines added since the last flush (one message per run)."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for rid in sorted(dirty):
            run = self._runs.get(rid)
            if run is None or run.pending_from is None:
                continue
            # lines dropped (the bound) before they went out are not sent either
            skip = max(0, run.first - run.pending_from)
            start = run.pending_from + skip
            lines = run.pending[skip:]
            run.pending_from, run.pending = None, []
            for at in range(0, len(lines), BATCH_LINES):
                batch = lines[at:at + BATCH_LINES]
                try:
                    self._publish("console", {"rid": rid, "first": start + at,
                                              "lines": batch})
                except Exception:  # a listener's trouble never stops the run
                    logging.getLogger(__name__).debug("console broadcast failed",
                                                      exc_info=True)

    def text(self, rid: int, since_line: int = 0) -> dict[str, Any]:
        """What the buffer holds of run rid from line since_line on (module docstring)."""
        run = self._runs.get(rid)
        if run is None:
            return {"rid": rid, "first": since_line, "next": since_line, "lines": []}
        start = max(since_line, run.first)
        if start >= run.next:
            return {"rid": rid, "first": run.next, "next": run.next, "lines": []}
        lines = list(run.lines)[start - run.first:]
        return {"rid": rid, "first": start, "next": run.next,
                "lines": [[t, s] for t, s in lines]}

    def rids(self) -> list[int]:
        """The runs whose console is held, oldest first."""
        return list(self._runs)


class ConsoleTarget:
    """The ``console`` RPC target: a run's console lines (``ConsoleBuffers.text``)."""

    def __init__(self, buffers: ConsoleBuffers) -> None:
        self._buffers = buffers

    def text(self, rid: int, since_line: int = 0) -> dict[str, Any]:
        """Run rid's console from line since_line on: ``{"rid", "first", "next",
        "lines": [[time, text], ...]}`` (``first``: the first line's number; ``next``:
        the next line's)."""
        return self._buffers.text(rid, since_line)

    def runs(self) -> list[int]:
        """The RIDs whose console the master holds, oldest first."""
        return self._buffers.rids()
