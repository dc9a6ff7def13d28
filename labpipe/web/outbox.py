"""The messages waiting to be sent to one browser, bounded in bytes.

A browser that reads slower than the master changes (a phone on a poor link, a tab
in the background while a run sets a large array at 10 Hz) would otherwise make the
web server hold every message for it. Past the bound the outbox drops what it holds
and is closed: the web server then closes that browser's WebSocket, and the page
reconnects and starts again from fresh copies.
"""

import asyncio
from collections import deque


class Outbox:
    """Text messages for one browser: ``put`` never blocks; ``get`` waits."""

    def __init__(self, limit: int):
        #: bytes the queued messages may take (ASCII JSON: one byte a character)
        self.limit = limit
        self.bytes = 0
        self.closed = False
        #: whether it was closed for holding more than ``limit``
        self.overflowed = False
        self._queue: deque[str] = deque()
        self._ready = asyncio.Event()

    def put(self, text: str, bounded: bool = True) -> None:
        """Queue text; with ``bounded``, close and empty the outbox instead when it
        would hold more than ``limit`` bytes (one message of any size is taken into an
        empty outbox). Nothing is queued once closed."""
        if self.closed:
            return
        if bounded and self.bytes and self.bytes + len(text) > self.limit:
            self.overflowed = True
            self._queue.clear()
            self.bytes = 0
            self.close()
            return
        self._queue.append(text)
        self.bytes += len(text)
        self._ready.set()

    def close(self) -> None:
        """No more messages: ``get`` returns what is queued, then None."""
        self.closed = True
        self._ready.set()

    async def get(self) -> str | None:
        """The next message, or None once closed and empty."""
        while not self._queue:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        text = self._queue.popleft()
        self.bytes -= len(text)
        return text
