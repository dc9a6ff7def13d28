"""The request phase of a line-based connection, served from the transport's callbacks.

After its handshake (read with asyncio streams), a connection whose requests are lines
answered one by one in order (the RPC port) is handed to ``serve_lines``: each line is
served from the transport's ``data_received`` and its reply written at once, without a
task wake-up, a future and an extra turn of the event loop per request (about a third
of an RPC round trip before; ``benchmarks/bench_rpc.py``). The contract is that of
reading with ``server.read_line`` and answering each line before reading the next:

- ``serve(line)`` returns the reply line, or an awaitable of it (a coroutine method):
  then reading pauses until the reply is written, so replies stay in request order and
  a slow coroutine holds up only its own connection. It runs in the context of the
  connection's task (its context variables: the peer, the caller).
- A line longer than ``max_line_length`` gets ``too_long(message)``'s reply and the
  connection is closed. A line that is not UTF-8 gets ``not_utf8()``'s reply.
- The peer's end of stream ends the connection once what came before it is answered;
  a partial last line is dropped. A peer that stops reading its replies stops the
  serving of its requests (the transport's write flow control) until it reads again.
- ``serve_lines`` returns when the connection is lost (and the call in progress, if
  any, has ended); cancelled, it cancels the call in progress.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable

__all__ = ["serve_lines"]

logger = logging.getLogger(__name__)

Serve = Callable[[str], "str | Awaitable[str]"]


async def serve_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      serve: Serve, too_long: Callable[[str], str],
                      not_utf8: Callable[[], str], max_line_length: int) -> None:
    """Serve the rest of the connection of reader and writer (see the module docstring)."""
    transport = writer.transport
    if transport.is_closing() or reader.exception() is not None:
        return
    # what the stream read beyond the handshake (a client that did not wait for it)
    stream_buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    buffered = bytes(stream_buffer)
    stream_buffer.clear()
    eof = reader._eof  # type: ignore[attr-defined]
    protocol = _LineRequests(transport, serve, too_long, not_utf8, max_line_length)
    transport.set_protocol(protocol)
    protocol.start(buffered, eof)
    try:
        await protocol.finished
    finally:
        await protocol.abandon()


class _LineRequests(asyncio.Protocol):
    """The protocol of a connection in its request phase (``serve_lines``)."""

    def __init__(self, transport: asyncio.BaseTransport, serve: Serve,
                 too_long: Callable[[str], str], not_utf8: Callable[[], str], limit: int):
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        # the streams' protocol still owns the writer: it hears of the connection's end
        self._stream_protocol = transport.get_protocol()
        self._serve_line = serve
        self._too_long = too_long
        self._not_utf8 = not_utf8
        self._limit = limit
        self._context = contextvars.copy_context()  # the connection task's
        self._over_ssl = transport.get_extra_info("sslcontext") is not None
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline
        self._call: asyncio.Task[str] | None = None
        self._reading = transport.is_reading()  # type: ignore[attr-defined]
        self._write_paused = False
        self._eof = False
        self._lost = False
        self._stopped = False
        #: done when the connection is lost and no call is in progress
        self.finished: asyncio.Future[None] = self._loop.create_future()

    def start(self, buffered: bytes, eof: bool) -> None:
        self._buffer += buffered
        self._eof = eof
        self._serve()

    async def abandon(self) -> None:
        """Stop serving; cancel the call in progress and wait for its end."""
        self._stopped = True
        call = self._call
        if call is not None:
            call.cancel()
            await asyncio.wait([call])

    # --- the transport's callbacks

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._serve()

    def eof_received(self) -> bool:
        self._eof = True
        self._serve()
        # keep the connection open for the replies still due (not possible over TLS)
        return not self._over_ssl

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._serve()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._stream_protocol.connection_lost(exc)  # the writer's wait_closed()
        if self._call is None and not self.finished.done():
            self.finished.set_result(None)

    # --- serving

    def _serve(self) -> None:
        buffer = self._buffer
        while self._call is None and not self._write_paused and not self._stopped:
            end = buffer.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(buffer)
                if len(buffer) > self._limit:
                    self._refuse_too_long()
                    return
                break
            if end > self._limit:
                self._refuse_too_long()
                return
            raw = bytes(buffer[:end])
            del buffer[:end + 1]
            self._scanned = 0
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                reply: str | Awaitable[str] = self._not_utf8()
            else:
                reply = self._context.run(self._serve_line, line.rstrip("\r"))
            if isinstance(reply, str):
                self._write(reply)
            else:
                self._call = self._loop.create_task(_reply_of(reply), context=self._context)
                self._call.add_done_callback(self._call_done, context=contextvars.Context())
        if self._eof and self._call is None and not self._stopped:
            self._stopped = True
            self._transport.close()  # after the replies written
        self._update_reading()

    def _call_done(self, call: asyncio.Task[str]) -> None:
        self._call = None
        if not call.cancelled():
            if call.exception() is not None:  # the reply could not be made: a bug
                logger.error("RPC reply failed; closing the connection",
                             exc_info=call.exception())
                self._stopped = True
                self._transport.close()
            else:
                self._write(call.result())
        if self._lost:
            if not self.finished.done():
                self.finished.set_result(None)
            return
        self._serve()

    def _write(self, reply: str) -> None:
        if not self._lost:
            self._transport.write(reply.encode("utf-8") + b"\n")  # type: ignore[attr-defined]

    def _refuse_too_long(self) -> None:
        # the rest of the line cannot be told from the next request: the connection ends
        self._write(self._too_long(f"line longer than {self._limit} bytes"))
        self._buffer.clear()
        self._stopped = True
        self._transport.close()

    def _update_reading(self) -> None:
        want = (self._call is None and not self._write_paused and not self._stopped
                and not self._lost)
        if want != self._reading and not self._transport.is_closing():
            self._reading = want
            if want:
                self._transport.resume_reading()  # type: ignore[attr-defined]
            else:
                self._transport.pause_reading()  # type: ignore[attr-defined]


async def _reply_of(awaitable: Awaitable[str]) -> str:
    return await awaitable
