"""A controller's stdout and stderr, line by line, as log records.

- A line ``LEVEL:LOGGER:MESSAGE`` (Python logging's default format, what a controller
  that logs to stderr writes; LEVEL one of ``logs.LEVELS``) is a record of that level and
  logger name; any other line is a ``print`` record, INFO on stdout, WARNING on stderr.
- A Python traceback is one record, not twenty: ``Traceback (most recent call last):``
  and the lines after it up to the exception's own line are continuation lines of the
  record before them (the ``logger.exception`` message they follow), or of a new ERROR
  ``print`` record when they follow none; indented lines after a record join it too.
  The record goes to the master as sipyco's multi-line record (``LEVEL<N>:``).
- A record is sent when the next one starts, when the stream ends, or when the stream
  has been quiet for ``quiet`` seconds (so that a lone last line is not held back).
  A record keeps at most ``MAX_RECORD_LINES`` lines; a line longer than ``MAX_LINE``
  bytes is cut (``[truncated]``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from labpipe.protocol.logs import LEVELS

#: Receives (level, logger name, message) for each record.
Sink = Callable[[int, str, str], None]

MAX_LINE = 64 * 1024
MAX_RECORD_LINES = 1000
_TRACEBACK = "Traceback (most recent call last):"
_RECORD = re.compile(r"(%s):([^:]*):(.*)" % "|".join(sorted(LEVELS, key=len, reverse=True)))


class RecordGrouper:
    """Turns the lines of one stream into records given to ``sink``."""

    def __init__(self, sink: Sink, default_level: int):
        self._sink = sink
        self._default_level = default_level
        self._level = 0
        self._name = ""
        self._lines: list[str] = []
        self._in_traceback = False

    def _start(self, level: int, name: str, first: str) -> None:
        self.flush()
        self._level, self._name, self._lines = level, name, [first]

    def _join(self, line: str) -> None:
        if len(self._lines) < MAX_RECORD_LINES:
            self._lines.append(line)

    def feed(self, line: str) -> None:
        """One line of the stream (without its line break)."""
        if line.startswith(_TRACEBACK):
            if not self._lines:
                self._start(logging.ERROR, "print", line)
            else:
                self._join(line)
            self._in_traceback = True
            return
        if self._lines and line[:1].isspace():
            self._join(line)
            return
        if self._in_traceback and self._lines:
            # the exception's own line ends the traceback ("ValueError: ...")
            self._join(line)
            self._in_traceback = False
            return
        match = _RECORD.fullmatch(line)
        if match is not None:
            levelname, name, message = match.groups()
            self._start(LEVELS[levelname], name or "print", message)
        else:
            self._start(self._default_level, "print", line)

    def flush(self) -> None:
        """Send the record held, if any."""
        if self._lines:
            lines, self._lines = self._lines, []
            self._in_traceback = False
            self._sink(self._level, self._name, "\n".join(lines))


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except asyncio.LimitOverrunError:
        head = await reader.read(MAX_LINE)
        while True:  # skip the rest of the line
            try:
                await reader.readuntil(b"\n")
                break
            except asyncio.LimitOverrunError as exc:
                await reader.read(exc.consumed)
            except asyncio.IncompleteReadError:
                break
        return head + b" [truncated]\n"


async def forward(reader: asyncio.StreamReader, sink: Sink, default_level: int,
                  quiet: float = 0.2) -> None:
    """Read reader to its end, giving its records to sink."""
    grouper = RecordGrouper(sink, default_level)
    try:
        pending: asyncio.Task[bytes] | None = None
        while True:
            if pending is None:
                pending = asyncio.ensure_future(_read_line(reader))
            done, _ = await asyncio.wait({pending}, timeout=quiet)
            if not done:
                grouper.flush()
                continue
            data = pending.result()
            pending = None
            if not data:
                break
            text = data.decode("utf-8", "replace").rstrip("\r\n")
            grouper.feed(text[:MAX_LINE])
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        grouper.flush()
