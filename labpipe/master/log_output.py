"""The master's log on its standard error: one write per event-loop turn.

Every record of a run is on the master's stderr (ARTIQ's master shows them too), so a
run printing 100,000 lines a second would cost 100,000 writes a second, one system call
each (Python's stderr is line-buffered). ``TurnBufferedHandler`` collects the lines of
the records logged in the event loop's thread and writes them together once the loop
turn ends (``call_soon``), in order; a record logged where no event loop runs (another
thread, before the master starts, after it stopped) is written at once, after what was
pending. ``flush()`` (and so ``logging.shutdown`` at exit) writes what is pending.

``SecondFormatter`` is ``logging.Formatter`` with the ``asctime`` of a second made
once (``time.strftime`` per record was a tenth of a print line's cost), the same text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TextIO

__all__ = ["TurnBufferedHandler", "SecondFormatter"]


class SecondFormatter(logging.Formatter):
    """A ``logging.Formatter`` (default date format) whose time text is made once per
    second (module docstring)."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime(self.default_time_format,
                                            self.converter(record.created)))
            self._second = cached
        return "%s,%03d" % (cached[1], record.msecs)  # logging's default_msec_format


class TurnBufferedHandler(logging.StreamHandler[TextIO]):
    """A ``StreamHandler`` writing once per event-loop turn (module docstring)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds self.lock here
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_pending()
            super().emit(record)
            return
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # a closed stderr: as logging's handleError, never raise
            pass

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
        super().flush()
