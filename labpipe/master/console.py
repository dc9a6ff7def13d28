"""A run's console: every line it wrote (print, stdout, stderr, log records), in order.

Each line of a run gets a number (0, 1, 2... per run, in the order the master received
it), the time it was written and its stream: ``stdout``, ``stderr`` (Python-level
writes), ``log`` (a log record) or ``fd`` (written to file descriptor 1 or 2 directly,
one pipe for both: ``labpipe.worker.output``). A line travels as
``[time, text, stream]``. The master keeps the last ``MAX_LINES`` lines (and at most
``MAX_BYTES`` characters) of each of the last ``MAX_RUNS`` runs in memory, and
publishes every line on the ``console`` broadcast channel, batched: one message per
event-loop turn and run, ``{"rid": int, "first": int, "lines": [line, ...]}`` (the
lines numbered ``first``, ``first + 1``...). ``text(rid, since_line=0)`` (the
``console`` RPC target) returns what the buffer still holds from line ``since_line`` on:
``{"rid", "first", "next", "lines"}`` where ``first`` is the number of the first line
returned (greater than ``since_line`` when older lines were dropped from the bound) and
``next`` the number the next line will have. A monitor that reconnects asks for
``text(rid, since_line=next)`` and then follows the broadcast, skipping lines numbered
below what it has shown: nothing twice, nothing lost (within the bound).

The target also answers for runs whose console is no longer in memory (an older run,
or one from before a restart of the master): from the run's results file (its
``console`` group, the last ``MAX_LINES`` lines), or no lines for a run that is still
scheduled or ended without a file. A RID the master has never had (neither scheduled
nor in history) is a ``KeyError`` naming it.

A line's text is the print line itself, or ``LEVEL:logger:message`` for a log record
(as in the results file's ``log``; the results file also holds the console with times
and streams, ``console/text``, ``console/time`` and ``console/stream``, written by the
worker: lines of the ``fd`` stream are not among them).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import h5py

from labpipe.worker.output import console_text_of

__all__ = ["ConsoleBuffers", "ConsoleTarget", "console_text_of", "read_console",
           "MAX_LINES", "MAX_BYTES", "MAX_RUNS", "STREAMS"]

#: Lines kept per run in memory (the oldest are dropped first).
MAX_LINES = 10_000
#: Characters kept per run in memory.
MAX_BYTES = 4 << 20
#: Runs whose console is kept (the oldest run's is dropped first).
MAX_RUNS = 64
#: Lines per broadcast message at most (a larger batch is split).
BATCH_LINES = 2_000
#: Where a line can come from.
STREAMS = ("stdout", "stderr", "log", "fd")

Line = tuple[float, str, str]


class _RunConsole:
    """One run's bounded line buffer."""

    __slots__ = ("lines", "first", "size", "pending_from", "pending")

    def __init__(self) -> None:
        self.lines: deque[Line] = deque()
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

    def add(self, rid: int, created: float, text: str, stream: str = "stdout") -> None:
        """Keep one line of run rid and schedule its broadcast."""
        run = self._run(rid)
        if run.pending_from is None:
            run.pending_from = run.next
        run.lines.append((created, text, stream))
        run.pending.append([created, text, stream])
        run.size += len(text)
        while len(run.lines) > self.max_lines or (run.size > self.max_bytes
                                                  and len(run.lines) > 1):
            dropped = run.lines.popleft()[1]
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
                "lines": [list(line) for line in lines]}

    def rids(self) -> list[int]:
        """The runs whose console is held, oldest first."""
        return list(self._runs)

    def __contains__(self, rid: object) -> bool:
        return rid in self._runs


def read_console(path: str, max_lines: int = MAX_LINES) -> tuple[int, list[list[Any]]]:
    """How many console lines the results file at path holds, and the last max_lines
    of them, ``[time, text, stream]`` (none when it has no console group); ValueError
    naming the file when it cannot be read. A file written before streams were kept
    has them all as ``stdout``."""
    try:
        with h5py.File(path, "r") as f:
            group = f.get("console")
            if not isinstance(group, h5py.Group) or "text" not in group:
                return 0, []
            count = len(group["text"])
            start = max(0, count - max_lines)
            texts = group["text"][start:]
            times = group["time"][start:] if "time" in group else [0.0] * len(texts)
            streams = group["stream"][start:] if "stream" in group else None
            lines = []
            for i, raw in enumerate(texts):
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                if streams is not None:
                    stream = streams[i]
                    stream = (stream.decode("utf-8", "replace") if isinstance(stream, bytes)
                              else str(stream))
                else:
                    stream = "stdout"
                lines.append([float(times[i]), text, stream])
            return count, lines
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the console of the results file "
                         f"({exc})") from None


class ConsoleTarget:
    """The ``console`` RPC target: a run's console lines (``ConsoleBuffers.text``; for
    a run not in memory, see the module docstring).

    ``scheduled(rid)``: whether rid is in the schedule (or ending); ``record(rid)``:
    its history record (KeyError when it has none); ``lab_dir``: what a record's
    relative ``results`` path is relative to. Without them, every RID not in memory
    has no lines.
    """

    def __init__(self, buffers: ConsoleBuffers,
                 scheduled: Callable[[int], bool] | None = None,
                 record: Callable[[int], Awaitable[dict[str, Any]]] | None = None,
                 lab_dir: str = ".") -> None:
        self._buffers = buffers
        self._scheduled = scheduled
        self._record = record
        self._lab_dir = lab_dir

    async def text(self, rid: int, since_line: int = 0) -> dict[str, Any]:
        """Run rid's console from line since_line on: ``{"rid", "first", "next",
        "lines": [[time, text, stream], ...]}`` (``first``: the first line's number;
        ``next``: the next line's). KeyError for a RID the master has never had."""
        buffers = self._buffers
        if rid in buffers or self._scheduled is None or self._record is None \
                or self._scheduled(rid):
            return buffers.text(rid, since_line)
        try:
            record = await self._record(rid)
        except KeyError:
            if rid in buffers or self._scheduled(rid):  # it started meanwhile
                return buffers.text(rid, since_line)
            raise KeyError(f"RID {rid} is not known to the master: it is neither "
                           "scheduled nor in the history") from None
        results = record.get("results")
        if not results:
            return buffers.text(rid, since_line)
        total, lines = await asyncio.to_thread(
            read_console, os.path.join(self._lab_dir, results), buffers.max_lines)
        first = total - len(lines)  # the file's last lines, numbered as in the file
        start = max(since_line, first)
        return {"rid": rid, "first": min(start, total), "next": total,
                "lines": lines[start - first:]}

    def runs(self) -> list[int]:
        """The RIDs whose console the master holds, oldest first."""
        return self._buffers.rids()
