"""The TCP server base shared by the RPC, sync, broadcast and logging servers.

Every labpipe channel is line based: the client opens with a fixed ASCII banner line,
then both sides exchange lines of UTF-8 text ending in ``\\n``. This module gives each
server the same lifecycle and the same defences:

- ``start(host, port)`` binds one address or a list of them (all on the same port; port
  0 picks a free one, readable afterwards as ``server.port``); ``stop()`` closes the
  listeners and cancels every connection task, awaiting them.
- Lines are bounded: a line longer than ``max_line_length`` raises ``LineTooLong`` from
  ``read_line`` and the subclass closes that one connection; nothing else is affected.
- A connection handler that raises is logged and its connection closed; the server
  keeps serving.
- ``start(..., ssl=context)`` (a ``tls.server_context``) makes every connection mutual
  TLS from its first byte: the handshake comes before the banner, and a refused peer is
  logged and closed by ``tls.TLSAcceptor`` before the subclass sees it.
- Connections are bounded (``ConnectionLimits``, the ``limits`` argument): a client
  must complete its handshake (the banner, and the name line that follows it on the
  control, notify and broadcast ports: ``handshake_lines``) within
  ``handshake_timeout`` seconds or it is dropped; a peer address may hold at most
  ``max_per_peer`` connections and the server ``max_total``; a connection over a
  bound is closed at once. Refusals and timeouts are logged in one warning line at
  most every ``log_interval`` seconds, counting those not logged.
- When the process runs out of file descriptors (EMFILE), asyncio's accept loop
  pauses and retries by itself; its error report is logged once per
  ``log_interval`` as one line instead of a traceback per attempt.
"""

import asyncio
import contextvars
import logging
import socket
import ssl as _ssl
import time
from dataclasses import dataclass
from typing import Any

from .tls import TLSAcceptor

__all__ = ["AsyncioServer", "LineTooLong", "read_line", "MAX_LINE_LENGTH",
           "ConnectionLimits", "DEFAULT_CONNECTION_LIMITS"]

logger = logging.getLogger(__name__)

#: Default bound on one line, in bytes (a 1000x1000 float64 array fits, base64-encoded).
MAX_LINE_LENGTH = 16 * 1024 * 1024


class LineTooLong(Exception):
    """A peer sent a line longer than the server accepts."""


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds on the connections one server holds (see the module docstring)."""
    #: Seconds a client has to send its handshake lines.
    handshake_timeout: float = 5.0
    #: Connections one peer address may hold at once.
    max_per_peer: int = 64
    #: Connections the server holds at once.
    max_total: int = 512
    #: Least seconds between two refusal log lines.
    log_interval: float = 10.0


DEFAULT_CONNECTION_LIMITS = ConnectionLimits()


class _Handshake:
    """The handshake deadline of one connection; read_line counts its lines."""

    def __init__(self, deadline: asyncio.Timeout, lines: int):
        self.deadline = deadline
        self.remaining = lines

    def line_read(self) -> None:
        if self.remaining > 0:
            self.remaining -= 1
            if self.remaining == 0:
                self.deadline.reschedule(None)


_HANDSHAKE: contextvars.ContextVar[_Handshake | None] = contextvars.ContextVar(
    "labpipe_handshake", default=None)


class _RateLimitedWarning:
    """Logs at most one warning per interval; counts the occurrences in between."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last = -float("inf")
        self._unlogged = 0

    def __call__(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._unlogged += 1
            return
        suffix = f" ({self._unlogged} more since the last such line)" if self._unlogged else ""
        self._last, self._unlogged = now, 0
        logger.warning(fmt + "%s", *args, suffix)


_accept_error_log = _RateLimitedWarning(DEFAULT_CONNECTION_LIMITS.log_interval)


def _install_accept_error_filter(loop: asyncio.AbstractEventLoop) -> None:
    """Make asyncio's 'out of system resource' accept reports one rate-limited line.

    The loop pauses accepting and retries on its own (about once a second per
    listener); everything else goes to the previous exception handler unchanged.
    """
    previous = loop.get_exception_handler()
    if getattr(previous, "_labpipe_accept_filter", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message", "").startswith("socket.accept() out of system resource"):
            exc = context.get("exception")
            _accept_error_log("cannot accept connections: %s; retrying",
                              getattr(exc, "strerror", None) or exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)
    handler._labpipe_accept_filter = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


async def read_line(reader: asyncio.StreamReader) -> str | None:
    """Read one line without its newline; None at end of stream.

    Raises LineTooLong when the line exceeds the reader's limit, and
    UnicodeDecodeError when it is not UTF-8.
    """
    try:
        line = await reader.readline()
    except (ValueError, asyncio.LimitOverrunError):
        # asyncio keeps the limit in a private attribute, which typeshed does not declare
        limit = reader._limit  # type: ignore[attr-defined]
        raise LineTooLong(f"line longer than {limit} bytes") from None
    if not line:
        return None
    if not line.endswith(b"\n"):
        return None  # connection closed mid-line: the partial line is not a message
    handshake = _HANDSHAKE.get()
    if handshake is not None:
        handshake.line_read()
    return line[:-1].decode("utf-8").rstrip("\r")


class _HandlerTimeout(Exception):
    """A TimeoutError the handler raised after its handshake (a bug, not a slow peer)."""


class AsyncioServer:
    """Listens on one or several addresses and runs one handler task per connection."""

    #: Lines of the client's handshake (banner, name): the handshake timeout ends after them.
    handshake_lines = 1

    def __init__(self, max_line_length: int = MAX_LINE_LENGTH,
                 limits: ConnectionLimits | None = None):
        self.max_line_length = max_line_length
        self.limits = limits or DEFAULT_CONNECTION_LIMITS
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task] = set()
        self._per_peer: dict[str, int] = {}
        self._refusal_log = _RateLimitedWarning(self.limits.log_interval)
        self.port: int | None = None
        self._tls: TLSAcceptor | None = None

    def connection_count(self, peer_host: str | None = None) -> int:
        """Connections held now (from peer_host only, when given)."""
        if peer_host is None:
            return sum(self._per_peer.values())
        return self._per_peer.get(peer_host, 0)
    async def start(self, host: str | list[str] = "127.0.0.1", port: int = 0,
                    ssl: _ssl.SSLContext | None = None) -> None:
        """Bind host (an address or a list of them) on port and start serving;
        with ``ssl`` (a server SSLContext) every connection is TLS."""
        if ssl is not None:
            self._tls = TLSAcceptor(ssl, f"{type(self).__name__} on port {port}")
        hosts = [host] if isinstance(host, str) else list(host)
        if not hosts:
            raise ValueError("no address to bind")
        _install_accept_error_filter(asyncio.get_running_loop())
        try:
            for h in hosts:
                try:
                    server = await asyncio.start_server(
                        self._handle_connection, h, port, limit=self.max_line_length)
                except socket.gaierror as e:  # its own text does not name the address
                    raise OSError(f"cannot listen on {h!r}: {e.strerror}") from None
                self._servers.append(server)
                if port == 0:
                    # all addresses share the port the first bind picked
                    port = server.sockets[0].getsockname()[1]
        except BaseException:
            await self.stop()
            raise
        self.port = port
        if self._tls is not None:
            self._tls.where = f"{type(self).__name__} on port {port}"

    async def stop(self) -> None:
        """Stop listening and close every connection; waits until all are closed."""
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._tls is not None:
            self._tls.close()

    def _admit(self, writer: asyncio.StreamWriter) -> str | None:
        """Count a new connection in; its peer host, or None when over a limit."""
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "?"
        name = type(self).__name__
        if sum(self._per_peer.values()) >= self.limits.max_total:
            self._refusal_log("%s on port %s: refused a connection from %s: the server "
                              "holds %d connections (limit)", name, self.port, host,
                              self.limits.max_total)
            return None
        if self._per_peer.get(host, 0) >= self.limits.max_per_peer:
            self._refusal_log("%s on port %s: refused a connection from %s: that peer "
                              "holds %d connections (limit)", name, self.port, host,
                              self.limits.max_per_peer)
            return None
        self._per_peer[host] = self._per_peer.get(host, 0) + 1
        return host

    def _release(self, host: str) -> None:
        left = self._per_peer[host] - 1
        if left:
            self._per_peer[host] = left
        else:
            del self._per_peer[host]

    async def _serve_with_handshake_deadline(self, reader: asyncio.StreamReader,
                                             writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.limits.handshake_timeout) as deadline:
            handshake = _Handshake(deadline, self.handshake_lines)
            _HANDSHAKE.set(handshake)
            try:
                await self._handle_connection_cr(reader, writer)
            except TimeoutError as e:  # the handler's own, not the deadline's
                raise _HandlerTimeout(f"TimeoutError in the handler: {e}") from e
        # the deadline passing surfaces as TimeoutError here, at the block's exit

    async def _handle_connection(self, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        host = self._admit(writer)
        if host is None:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None  # a coroutine run by asyncio.start_server's task
        self._connections.add(task)
        try:
            # the TLS upgrade must come before anything reads from the connection
            if self._tls is not None and not await self._tls.accept(writer):
                return
            await self._serve_with_handshake_deadline(reader, writer)
        except TimeoutError:
            self._refusal_log("%s on port %s: dropped a connection from %s: no handshake "
                              "within %g s", type(self).__name__, self.port, host,
                              self.limits.handshake_timeout)
        except _HandlerTimeout:
            logger.exception("%s: connection handler failed", type(self).__name__)
        except (ConnectionError, LineTooLong, UnicodeDecodeError, asyncio.IncompleteReadError) as e:
            logger.debug("%s: connection closed: %s", type(self).__name__, e)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("%s: connection handler failed", type(self).__name__)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError, OSError):
                pass
            # only now, so that stop() waits until the connection is really closed
            self._connections.discard(task)
            self._release(host)

    async def _handle_connection_cr(self, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        """Serve one connection; subclasses implement their protocol here."""
        raise NotImplementedError
