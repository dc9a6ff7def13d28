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
"""

import asyncio
import socket
import logging
import ssl as _ssl

from .tls import TLSAcceptor

__all__ = ["AsyncioServer", "LineTooLong", "read_line", "MAX_LINE_LENGTH"]

logger = logging.getLogger(__name__)

#: Default bound on one line, in bytes (a 1000x1000 float64 array fits, base64-encoded).
MAX_LINE_LENGTH = 16 * 1024 * 1024


class LineTooLong(Exception):
    """A peer sent a line longer than the server accepts."""


async def read_line(reader: asyncio.StreamReader) -> str | None:
    """Read one line without its newline; None at end of stream.

    Raises LineTooLong when the line exceeds the reader's limit, and
    UnicodeDecodeError when it is not UTF-8.
    """
    try:
        line = await reader.readline()
    except (ValueError, asyncio.LimitOverrunError):
        raise LineTooLong(f"line longer than {reader._limit} bytes") from None
    if not line:
        return None
    if not line.endswith(b"\n"):
        return None  # connection closed mid-line: the partial line is not a message
    return line[:-1].decode("utf-8").rstrip("\r")


class AsyncioServer:
    """Listens on one or several addresses and runs one handler task per connection."""

    def __init__(self, max_line_length: int = MAX_LINE_LENGTH):
        self.max_line_length = max_line_length
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task] = set()
        self.port: int | None = None
        self._tls: TLSAcceptor | None = None

    async def start(self, host: str | list[str] = "127.0.0.1", port: int = 0,
                    ssl: _ssl.SSLContext | None = None):
        """Bind host (an address or a list of them) on port and start serving;
        with ``ssl`` (a server SSLContext) every connection is TLS."""
        if ssl is not None:
            self._tls = TLSAcceptor(ssl, f"{type(self).__name__} on port {port}")
        hosts = [host] if isinstance(host, str) else list(host)
        if not hosts:
            raise ValueError("no address to bind")
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

    async def stop(self):
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

    async def _handle_connection(self, reader, writer):
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            # the TLS upgrade must come before anything reads from the connection
            if self._tls is not None and not await self._tls.accept(writer):
                return
            await self._handle_connection_cr(reader, writer)
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

    async def _handle_connection_cr(self, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter):
        """Serve one connection; subclasses implement their protocol here."""
        raise NotImplementedError
