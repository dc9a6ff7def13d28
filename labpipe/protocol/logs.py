"""Logging across processes: the logging port and the ``log`` broadcast.

Workers and controllers push their log records to the master's logging port (default
1066); the master re-emits them locally and broadcasts every record to clients.

The logging port (``LogServer``):

- The client sends ``ARTIQ logging``, then one line per record:
  ``SOURCE:LEVEL:NAME:MESSAGE``. SOURCE (e.g. ``worker(42,Scan)``) is not empty and
  contains no ``:``; LEVEL is a level number (``20``) or name (``INFO``); NAME is the
  logger name and contains no ``:``; MESSAGE is the rest of the line.
- A multi-line message continues on the following lines, each starting with the
  marker ``+`` (``CONTINUATION``), which is removed; the lines are joined with ``\\n``::

      worker(7,Scan):40:scan:run failed
      +Traceback (most recent call last):
      +  ...

  A record is emitted when its next non-continuation line arrives, when the peer has
  been silent for ``flush_delay`` seconds, or when the connection ends. A message is
  cut at ``max_message_length`` characters.
- Each record is re-emitted on ``logging.getLogger(NAME)`` with the level, the message
  and an attribute ``source``. Lines that do not parse (bad format or level, invalid
  UTF-8, a continuation without a record) are skipped: the first on a connection is
  logged at debug level, the others only counted in a debug message when it ends. A
  wrong banner or a line over the server's line limit closes the connection.

``LogForwarder(host, port, source)`` is the client side: a ``logging.Handler`` that
formats records (default format: the message, plus its traceback) into such lines. It
never blocks its caller: records go to a bounded queue that a daemon thread sends,
connecting lazily; while the server cannot be reached, records are dropped (counted in
``dropped``) and a reconnection is tried at most every ``retry_interval`` seconds.

``LogBroadcastHandler(broadcaster, channel="log")`` broadcasts each record as
``(levelno, source, created, "name:message")``, source being the record's ``source``
attribute or ``"master"``. It never raises into the logging call, and a record logged
while it is broadcasting (by the broadcaster itself, say) is not broadcast, so it
cannot loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import ssl as _ssl
import threading
import time
from collections import deque
from dataclasses import dataclass

from .server import AsyncioServer, read_line

__all__ = ["LogLine", "parse_line", "format_lines", "CONTINUATION",
           "LogServer", "LogForwarder", "LogBroadcastHandler"]

logger = logging.getLogger(__name__)

BANNER = "ARTIQ logging"
#: Starts each continuation line of a multi-line message.
CONTINUATION = "+"


@dataclass(frozen=True)
class LogLine:
    """One record as carried on the logging port."""
    source: str
    level: int
    name: str
    message: str


def _parse_level(text: str) -> int | None:
    if text.isascii() and text.isdigit() and len(text) <= 6:
        return int(text)
    return logging.getLevelNamesMapping().get(text)


def parse_line(line: str) -> LogLine | None:
    """Parse a first line ``SOURCE:LEVEL:NAME:MESSAGE``; None if it is not one."""
    parts = line.split(":", 3)
    if len(parts) != 4:
        return None
    source, level, name, message = parts
    if not source or source.startswith(CONTINUATION):
        return None
    levelno = _parse_level(level)
    if levelno is None:
        return None
    return LogLine(source, levelno, name, message)


def _clean_field(text: str) -> str:
    return text.replace(":", "_").replace("\n", "_").replace("\r", "_")


def format_lines(entry: LogLine) -> str:
    """The lines (each ending in newline) that carry entry on the logging port.

    ``:`` and line breaks in the source and name are replaced by ``_``.
    """
    first, *rest = entry.message.split("\n")
    lines = [f"{_clean_field(entry.source)}:{entry.level}:{_clean_field(entry.name)}:{first}"]
    lines.extend(CONTINUATION + part for part in rest)
    return "\n".join(lines) + "\n"


class _Record:
    """A record being assembled from its lines, with a bounded message."""

    def __init__(self, entry: LogLine, max_length: int):
        self.entry = entry
        self.parts = [entry.message[:max_length]]
        self.length = len(self.parts[0])
        self.max_length = max_length
        self.truncated = len(entry.message) > max_length

    def add(self, text: str):
        if self.truncated:
            return
        room = self.max_length - self.length - 1
        if len(text) > room:
            text = text[:max(room, 0)]
            self.truncated = True
        self.parts.append(text)
        self.length += len(text) + 1

    def message(self) -> str:
        message = "\n".join(self.parts)
        return message + " [truncated]" if self.truncated else message


class LogServer(AsyncioServer):
    """Receives log lines on the logging port and re-emits them as local records."""

    def __init__(self, *, flush_delay: float = 0.05,
                 max_message_length: int = 1024 * 1024, **kwargs):
        super().__init__(**kwargs)
        self.flush_delay = flush_delay
        self.max_message_length = max_message_length

    def _emit(self, record: _Record):
        entry = record.entry
        target = logging.getLogger(entry.name)
        if not target.isEnabledFor(entry.level):
            return
        try:
            log_record = target.makeRecord(
                entry.name, entry.level, "(remote)", 0, record.message(), (), None,
                extra={"source": entry.source})
            target.handle(log_record)
        except Exception:
            logger.exception("re-emitting a log record from %s failed", entry.source)

    async def _handle_connection_cr(self, reader, writer):
        if await read_line(reader) != BANNER:
            return
        pending: _Record | None = None
        bad_lines = 0

        def skip(line, why):
            nonlocal bad_lines
            bad_lines += 1
            if bad_lines == 1:
                logger.debug("logging port: skipped a line (%s): %.200r; further bad lines "
                             "on this connection are only counted", why, line)

        try:
            while True:
                try:
                    async with asyncio.timeout(None if pending is None else self.flush_delay):
                        line = await read_line(reader)
                except TimeoutError:
                    self._emit(pending)
                    pending = None
                    continue
                except UnicodeDecodeError:
                    skip(None, "not UTF-8")
                    continue
                if line is None:
                    break
                if line.startswith(CONTINUATION):
                    if pending is None:
                        skip(line, "continuation without a record")
                    else:
                        pending.add(line[len(CONTINUATION):])
                    continue
                if pending is not None:
                    self._emit(pending)
                    pending = None
                entry = parse_line(line)
                if entry is None:
                    skip(line, "not SOURCE:LEVEL:NAME:MESSAGE")
                else:
                    pending = _Record(entry, self.max_message_length)
        finally:
            if pending is not None:
                self._emit(pending)
            if bad_lines > 1:
                logger.debug("logging port: %d bad lines skipped on one connection",
                             bad_lines)


class LogForwarder(logging.Handler):
    """Sends records to a LogServer over TCP from a daemon thread; see the module docstring."""

    def __init__(self, host: str, port: int, source: str, *, level=logging.NOTSET,
                 queue_limit: int = 1000, timeout: float = 1.0,
                 retry_interval: float = 2.0, flush_timeout: float = 2.0,
                 ssl: _ssl.SSLContext | None = None):
        super().__init__(level)
        if not source or ":" in source or "\n" in source or source.startswith(CONTINUATION):
            raise ValueError(f"log source {source!r} must be non-empty, without ':' or "
                             f"line breaks, and not start with {CONTINUATION!r}")
        self.host = host
        self.port = port
        self.source = source
        self.queue_limit = queue_limit
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.flush_timeout = flush_timeout
        #: Client SSLContext (``tls.client_context``) for a TLS server, or None.
        self.ssl = ssl
        #: Records dropped (queue full, server unreachable, connection lost).
        self.dropped = 0
        self._reset()

    def _reset(self):
        """(Re)initialise the sending side; also used in a forked child."""
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._pending: deque[bytes] = deque()
        self._sending = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._next_attempt = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._pid != os.getpid():
                self._reset()  # forked: the parent's thread, socket and lock are not ours
            text = format_lines(LogLine(self.source, record.levelno, record.name,
                                        self.format(record)))
            data = text.encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)
            return
        with self._cond:
            if self._closed:
                return
            if len(self._pending) >= self.queue_limit:
                self.dropped += 1
                return
            self._pending.append(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"LogForwarder({self.source})")
                self._thread.start()
            self._cond.notify()

    def flush(self) -> None:
        """Wait (at most flush_timeout seconds) until queued records are sent or dropped."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._sending,
                                self.flush_timeout)

    def close(self) -> None:
        """Send what is queued (within flush_timeout), then stop the thread and disconnect."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and self._pid == os.getpid():
            thread.join(self.flush_timeout)
        super().close()

    def _run(self):
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._pending or self._closed)
                    if not self._pending:
                        return
                    records = len(self._pending)
                    batch = b"".join(self._pending)
                    self._pending.clear()
                    self._sending = True
                sent = False
                try:
                    sent = self._send(batch)
                finally:
                    with self._cond:
                        if not sent:
                            self.dropped += records
                        self._sending = False
                        self._cond.notify_all()
        finally:
            self._disconnect()

    def _send(self, data: bytes) -> bool:
        # Never log from here: this handler may be attached to the logger we would use.
        sock = self._sock
        if sock is not None and self._peer_closed(sock):
            self._disconnect()
            sock = None
        if sock is None:
            if time.monotonic() < self._next_attempt:
                return False
            try:
                sock = socket.create_connection((self.host, self.port), self.timeout)
                if self.ssl is not None:
                    try:
                        sock = self.ssl.wrap_socket(sock)
                    except BaseException:
                        sock.close()
                        raise
                sock.sendall(f"{BANNER}\n".encode("ascii"))
            except OSError:
                self._next_attempt = time.monotonic() + self.retry_interval
                return False
            self._sock = sock
        try:
            sock.sendall(data)
        except OSError:
            self._disconnect()
            return False
        return True

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        # The server never sends anything: readable means closed or failed.
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable and isinstance(sock, _ssl.SSLSocket):
                return LogForwarder._tls_peer_closed(sock)
            return bool(readable)
        except (OSError, ValueError):
            return True

    @staticmethod
    def _tls_peer_closed(sock: _ssl.SSLSocket) -> bool:
        # TLS records that carry no data (a session ticket) make the socket readable too
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            return sock.recv(1) == b""
        except (_ssl.SSLWantReadError, _ssl.SSLWantWriteError):
            return False
        finally:
            sock.settimeout(timeout)

    def _disconnect(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class LogBroadcastHandler(logging.Handler):
    """Broadcasts records as ``(levelno, source, created, "name:message")`` tuples.

    broadcaster is anything with ``broadcast(channel, obj)``, normally a Broadcaster.
    The ``"name:message"`` text comes from the handler's formatter (by default
    ``%(name)s:%(message)s``).
    """

    def __init__(self, broadcaster, channel: str = "log", level=logging.NOTSET):
        super().__init__(level)
        self.broadcaster = broadcaster
        self.channel = channel
        self.setFormatter(logging.Formatter("%(name)s:%(message)s"))
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return  # logged while broadcasting: do not loop
        self._local.busy = True
        try:
            source = str(getattr(record, "source", "master"))
            self.broadcaster.broadcast(
                self.channel, (record.levelno, source, record.created, self.format(record)))
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False
