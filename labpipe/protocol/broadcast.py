"""Broadcasts: one-way messages from the master to whoever listens on a channel.

The broadcast port (default 1067) carries named channels; ARTIQ's are ``log`` (tuples
``(levelno, source, created_time, "logger.name:message")``) and ``ccb`` (dicts
``{"service": str, "args": list, "kwargs": dict}``).

Contract:

- The client sends ``ARTIQ broadcast`` then the channel name, one line each; any name is
  accepted. A wrong banner closes the connection. Then the server sends one PYON line
  per message broadcast on that channel; the client sends nothing more.
- ``Broadcaster.broadcast(channel, obj)`` encodes obj once (only if someone listens on
  the channel; an object PYON cannot encode raises TypeError) and queues the line for
  every receiver of the channel. It never blocks. Called from a thread other than the
  one running the event loop, it hands the encoded line to the loop thread-safely.
- Each receiver has a bounded queue (``queue_limit`` messages, ``queue_bytes`` bytes);
  a receiver that falls behind is disconnected, never buffered without bound.
- ``Receiver(channel, notify_cb, disconnect_cb=None)``: ``await connect(host, port)``,
  ``await close()``; ``notify_cb(obj)`` (a callable or a list of them) per message;
  ``disconnect_cb()`` when the connection ends other than by ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from typing import Any, Callable

from . import pyon
from .server import AsyncioServer, read_line
from .sync import DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_LIMIT, LineClient, Outbox

__all__ = ["Broadcaster", "Receiver"]

logger = logging.getLogger(__name__)

BANNER = "ARTIQ broadcast"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Broadcaster(AsyncioServer):
    """Serves the broadcast port; see the module docstring."""

    handshake_lines = 2  # the banner, then the name line

    def __init__(self, queue_limit: int = DEFAULT_QUEUE_LIMIT, *,
                 queue_bytes: int = DEFAULT_QUEUE_BYTES, **kwargs: Any):
        super().__init__(**kwargs)
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self._outboxes: dict[str, set[Outbox]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, host: str | list[str] = "127.0.0.1", port: int = 0,
                    ssl: _ssl.SSLContext | None = None) -> None:
        """Start listening (TLS with ``ssl``, a server SSLContext)."""
        self._loop = asyncio.get_running_loop()
        await super().start(host, port, ssl=ssl)

    def receiver_count(self, channel: str) -> int:
        """How many receivers listen on channel now."""
        return len(self._outboxes.get(channel, ()))

    def backlogs(self, channel: str) -> list[tuple[int, int]]:
        """(messages, bytes) waiting for each current receiver of channel."""
        return [outbox.backlog for outbox in self._outboxes.get(channel, ())]

    def broadcast(self, channel: str, obj: Any) -> None:
        """Send obj to every receiver of channel (no-op while nobody listens)."""
        if not self._outboxes.get(channel):
            return
        line = (pyon.encode(obj) + "\n").encode("ascii")
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self._deliver(channel, line)
            return
        try:
            loop.call_soon_threadsafe(self._deliver, channel, line)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more

    def _deliver(self, channel: str, line: bytes) -> None:
        for outbox in list(self._outboxes.get(channel, ())):
            outbox.put(line)

    async def _handle_connection_cr(self, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
        if await read_line(reader) != BANNER:
            return
        channel = await read_line(reader)
        if channel is None:
            return
        outbox = Outbox(writer, self.queue_limit, self.queue_bytes,
                        f"broadcast receiver of {channel!r}")
        self._outboxes.setdefault(channel, set()).add(outbox)
        try:
            await outbox.serve(reader)
        finally:
            outboxes = self._outboxes[channel]
            outboxes.discard(outbox)
            if not outboxes:
                del self._outboxes[channel]


class Receiver(LineClient):
    """Receives the messages of one broadcast channel; see the module docstring."""

    _banner = BANNER

    def __init__(self, channel: str,
                 notify_cb: Callable[[Any], None] | list[Callable[[Any], None]],
                 disconnect_cb: Callable[[], None] | None = None):
        super().__init__(channel, disconnect_cb)
        self.channel = channel
        self.notify_cbs = list(notify_cb) if isinstance(notify_cb, list) else [notify_cb]

    async def connect(self, host: str, port: int,
                      ssl: _ssl.SSLContext | None = None) -> None:
        """Connect and start receiving (``ssl``: a client SSLContext for a TLS master)."""
        await self._connect(host, port, ssl=ssl)

    def _handle(self, text: str) -> None:
        obj = pyon.decode(text, pyon.RECEIVE_LIMITS)
        for cb in self.notify_cbs:
            cb(obj)
