"""Logging across processes: the logging port and the ``log`` broadcast.

Controllers and other peers push their log records to the master's logging port
(default 1066); the master re-emits them locally and broadcasts every record to
clients. The format is sipyco's (``LogForwarder`` with ``MultilineFormatter``), so a
real ARTIQ controller or ctlmgr can log to a labpipe master, and labpipe's forwarder to
an ARTIQ master.

The logging port (``LogServer``):

- The client sends ``ARTIQ logging``, then lines. A one-line record is
  ``SOURCE:LEVELNAME:LOGGER:MESSAGE``; a record of N > 1 lines is
  ``SOURCE:LEVELNAME<N>:LOGGER:FIRST LINE`` followed by N-1 raw continuation lines
  with no prefix at all (a traceback's lines as they are), joined with ``\\n``.
  SOURCE is what precedes the first ``:``; LEVELNAME is one of ``LEVELS`` (CRITICAL,
  ERROR, WARN, WARNING, INFO, DEBUG, TRACE = 5); LOGGER contains no ``:``.
- A line that is not a record is a *print* record: level INFO, logger name ``print``,
  the text after the first ``:`` its message (the whole line when it has no ``:``).
- Bounds, so that no peer can make the master hold unbounded memory or wait forever:
  a line longer than ``max_line_length`` bytes is cut (``[truncated]``) and the rest
  of it skipped, the connection stays; a record keeps at most ``max_message_length``
  characters; an announced N is capped at ``max_record_lines`` (the lines after are
  read as new lines), and when the continuation lines of a record stop coming for
  ``continuation_timeout`` seconds the record is emitted as far as it arrived, marked
  ``[incomplete: ...]``, and the next line starts afresh. Invalid UTF-8 is decoded
  with replacement characters. A wrong banner closes the connection.
- Sources: a peer cannot speak as the master or as a run. A claimed source that is
  reserved (``master``, or a run's ``worker(...)``, in any case, with surrounding
  blanks) is shown marked with the peer's address, ``master@127.0.0.1:40522``; an
  empty source (or a line without ``:``) becomes the peer's address. Sources and
  logger names are cut at ``MAX_FIELD_LENGTH`` characters; control characters in a
  source are replaced by U+FFFD. Every record also carries ``peer`` (the address).

Records from other processes (logging peers, and the runs' workers through their pipe)
are emitted by ``emit_remote`` on ONE logger, ``REMOTE_LOGGER`` (``labpipe.remote``),
whatever logger name they carry: the peer's logger name is the record's ``name`` (so a
formatter's ``%(name)s`` and the broadcast's ``name:message`` show it) and its source
the record's ``source``. No logger is ever created from a name a peer chose: a long
dotted name or a million distinct names cost nothing that stays. Set the level of
``labpipe.remote`` to filter peers' records; logging-port records below its effective
level are dropped on arrival.

``LogForwarder(host, port, source)`` is the client side: a ``logging.Handler`` that
formats records (default format: the message, plus its traceback) into such lines,
multi-line records as sipyco sends them. It never blocks its caller: records go to a
bounded queue that a daemon thread sends, connecting lazily; while the server cannot be
reached, records are dropped (counted in ``dropped``) and a reconnection is tried at
most every ``retry_interval`` seconds.

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
import re
import select
import socket
import ssl as _ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from .server import AsyncioServer, read_line

__all__ = ["LogLine", "parse_line", "format_lines", "level_name", "LEVELS", "TRACE",
           "REMOTE_LOGGER", "emit_remote", "LogServer", "LogForwarder",
           "LogBroadcastHandler"]

logger = logging.getLogger(__name__)

BANNER = "ARTIQ logging"
#: sipyco's TRACE level, below DEBUG.
TRACE = 5
logging.addLevelName(TRACE, "TRACE")
#: The level names of the logging port's format, and their levels.
LEVELS = {"CRITICAL": logging.CRITICAL, "ERROR": logging.ERROR, "WARN": logging.WARNING,
          "WARNING": logging.WARNING, "INFO": logging.INFO, "DEBUG": logging.DEBUG,
          "TRACE": TRACE}
#: The one logger that records from other processes are emitted on.
REMOTE_LOGGER = "labpipe.remote"
#: Sources and logger names from other processes are cut at this many characters.
MAX_FIELD_LENGTH = 256

_remote_logger = logging.getLogger(REMOTE_LOGGER)
_RECORD = re.compile(r"(CRITICAL|ERROR|WARNING|WARN|INFO|DEBUG|TRACE)(?:<(\d+)>)?:([^:]*):(.*)",
                     re.DOTALL)
_MAX_COUNT_DIGITS = 9
_RESERVED_SOURCE = re.compile(r"\s*(master\s*|worker\s*\(.*)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class LogLine:
    """One record as carried on the logging port (``lines``: the N it announces)."""
    source: str
    level: int
    name: str
    message: str
    lines: int = 1


def parse_line(line: str) -> LogLine:
    """Parse the first line of a record; a line that is no record is a print record.

    The source is what precedes the first ``:`` (empty when there is none); ``lines``
    is the announced N (1 for a one-line record).
    """
    source, colon, rest = line.partition(":")
    if not colon:
        return LogLine("", logging.INFO, "print", line)
    match = _RECORD.fullmatch(rest)
    if match is None:
        return LogLine(source, logging.INFO, "print", rest)
    levelname, count, name, message = match.groups()
    lines = 1
    if count is not None:
        # a count too long to be true is not converted (nor trusted): the cap applies
        lines = int(count) if len(count) <= _MAX_COUNT_DIGITS else 10 ** _MAX_COUNT_DIGITS
    return LogLine(source, LEVELS[levelname], name, message, max(lines, 1))


def level_name(levelno: int) -> str:
    """The name in ``LEVELS`` for a level number: the highest level not above it."""
    for name in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
        if levelno >= LEVELS[name]:
            return name
    return "TRACE"


def _clean_field(text: str) -> str:
    return text.replace(":", "_").replace("\n", "_").replace("\r", "_")


def format_lines(entry: LogLine) -> str:
    """The lines (each ending in newline) that carry entry on the logging port, as
    sipyco's ``MultilineFormatter`` writes them.

    ``:`` and line breaks in the source and name are replaced by ``_``; the level is
    written as its ``level_name``.
    """
    first, *rest = entry.message.split("\n")
    count = f"<{len(rest) + 1}>" if rest else ""
    head = (f"{_clean_field(entry.source)}:{level_name(entry.level)}{count}:"
            f"{_clean_field(entry.name)}:{first}")
    return "\n".join([head, *rest]) + "\n"


def _bounded(text: str, limit: int = MAX_FIELD_LENGTH) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def peer_label(peername: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a socket's peer name."""
    if isinstance(peername, (tuple, list)) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unknown peer"


def peer_source(claimed: str, peer: str) -> str:
    """The source a record from peer claiming source ``claimed`` is shown with.

    Reserved sources (``master``, ``worker(...)``) are marked ``claimed@peer``; an empty
    one becomes peer; the others are kept (cut, control characters replaced).
    """
    if not claimed:
        return peer
    source = _printable(_bounded(claimed))
    if _RESERVED_SOURCE.fullmatch(source):
        return f"{source}@{peer}"
    return source


def emit_remote(source: str, level: int, name: str, message: str, *,
                created: float | None = None, peer: str | None = None,
                check_level: bool = True) -> None:
    """Emit a record from another process on ``REMOTE_LOGGER``, carrying ``name`` as
    its logger name and ``source`` (and ``peer`` when given) as fields.

    With check_level, a record below the remote logger's effective level is dropped
    (records of runs are not: their own ``log_level`` filtered them already).
    """
    try:
        level = int(level)
    except (TypeError, ValueError):
        level = logging.INFO
    if check_level and not _remote_logger.isEnabledFor(level):
        return
    extra = {"source": source}
    if peer is not None:
        extra["peer"] = peer
    record = _remote_logger.makeRecord(_bounded(str(name)), level, "(remote)", 0,
                                       message, (), None, extra=extra)
    if created is not None:
        record.created = created
    _remote_logger.handle(record)


class _Record:
    """A multi-line record being assembled, with bounded lines and characters."""

    def __init__(self, entry: LogLine, source: str, max_lines: int, max_length: int):
        self.entry = entry
        self.source = source
        self.expected = min(entry.lines, max_lines)  # lines this record takes
        self.max_length = max_length
        self.parts = [entry.message[:max_length]]
        self.received = 1
        self.length = len(self.parts[0])
        self.truncated = len(entry.message) > max_length

    @property
    def complete(self) -> bool:
        return self.received >= self.expected

    def add(self, text: str) -> None:
        self.received += 1
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
        if self.truncated:
            message += " [truncated]"
        if not self.complete:
            message += (f"\n[incomplete: {self.received} of {self.entry.lines} lines "
                        "arrived]")
        elif self.entry.lines > self.expected:
            message += (f"\n[cut: {self.entry.lines} lines announced, "
                        f"{self.expected} kept]")
        return message


async def _read_cut_line(reader: asyncio.StreamReader, limit: int) -> str | None:
    """One line without its newline, cut at limit bytes (the rest of it skipped);
    None at end of stream (a last line without newline is not a line)."""
    try:
        data = await reader.readuntil(b"\n")
        cut = False
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        data = await reader.read(limit)
        cut = True
        while True:  # skip the rest of the line, a buffer at a time
            try:
                await reader.readuntil(b"\n")
                break
            except asyncio.IncompleteReadError:
                return None
            except asyncio.LimitOverrunError:
                await reader.read(limit)
    text = data.rstrip(b"\n").decode("utf-8", "replace").rstrip("\r")
    return text + " [truncated]" if cut else text


class LogServer(AsyncioServer):
    """Receives log lines on the logging port and re-emits them as local records
    (see the module docstring)."""

    def __init__(self, *, max_line_length: int = 64 * 1024,
                 max_message_length: int = 1024 * 1024, max_record_lines: int = 10_000,
                 continuation_timeout: float = 5.0, **kwargs: Any):
        super().__init__(max_line_length=max_line_length, **kwargs)
        self.max_message_length = max_message_length
        self.max_record_lines = max_record_lines
        self.continuation_timeout = continuation_timeout

    @staticmethod
    def _emit(entry: LogLine, source: str, message: str, peer: str) -> None:
        try:
            emit_remote(source, entry.level, entry.name, message, peer=peer)
        except Exception:
            logger.exception("re-emitting a log record from %s failed", peer)

    async def _handle_connection_cr(self, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        if await read_line(reader) != BANNER:
            return
        peer = peer_label(writer.get_extra_info("peername"))
        pending: _Record | None = None
        try:
            while True:
                try:
                    async with asyncio.timeout(
                            None if pending is None else self.continuation_timeout):
                        line = await _read_cut_line(reader, self.max_line_length)
                except TimeoutError:
                    assert pending is not None  # there is no deadline otherwise
                    self._emit(pending.entry, pending.source, pending.message(), peer)
                    pending = None
                    continue
                if line is None:
                    break
                if pending is not None:
                    pending.add(line)
                    if pending.complete:
                        self._emit(pending.entry, pending.source, pending.message(), peer)
                        pending = None
                    continue
                entry = parse_line(line)
                source = peer_source(entry.source, peer)
                if entry.lines > 1 and self.max_record_lines > 1:
                    pending = _Record(entry, source, self.max_record_lines,
                                      self.max_message_length)
                else:
                    message = entry.message
                    if len(message) > self.max_message_length:
                        message = message[:self.max_message_length] + " [truncated]"
                    self._emit(entry, source, message, peer)
        finally:
            if pending is not None:
                self._emit(pending.entry, pending.source, pending.message(), peer)


class LogForwarder(logging.Handler):
    """Sends records to a LogServer over TCP from a daemon thread; see the module docstring."""

    def __init__(self, host: str, port: int, source: str, *, level: int | str = logging.NOTSET,
                 queue_limit: int = 1000, timeout: float = 1.0,
                 retry_interval: float = 2.0, flush_timeout: float = 2.0,
                 ssl: _ssl.SSLContext | None = None) -> None:
        super().__init__(level)
        if not source or ":" in source or "\n" in source or "\r" in source:
            raise ValueError(f"log source {source!r} must be non-empty, without ':' or "
                             "line breaks")
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

    def _reset(self) -> None:
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

    def _run(self) -> None:
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

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class Broadcasting(Protocol):
    """What LogBroadcastHandler sends through (a Broadcaster, normally)."""

    def broadcast(self, channel: str, obj: Any) -> None: ...


class LogBroadcastHandler(logging.Handler):
    """Broadcasts records as ``(levelno, source, created, "name:message")`` tuples.

    broadcaster is anything with ``broadcast(channel, obj)``, normally a Broadcaster.
    The ``"name:message"`` text comes from the handler's formatter (by default
    ``%(name)s:%(message)s``).
    """

    def __init__(self, broadcaster: Broadcasting, channel: str = "log",
                 level: int | str = logging.NOTSET) -> None:
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
