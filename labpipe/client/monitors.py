"""Monitors that survive the master: streams that reconnect by themselves.

``reconnecting(open_stream, where, say)`` yields what ``open_stream()`` yields
(``open_stream`` connects, or raises ``Unreachable``); when the master ends the stream
(it stopped, crashed or restarted), it says so through ``say``, waits (0.5 s, then
twice as long each time up to 10 s) and opens the stream again, and says when it is
connected again. A notifier starts again with its whole content (its ``init``),
so a watch shows the master's new state at once. Only a first connection that fails is
an error (``Unreachable``, exit code 4): a monitor never starts against nothing.

``Feeds`` runs several such streams in threads and hands their items to one loop (a
watch of the schedule also follows the held pipelines and the interactive requests);
a feed marked optional that cannot start (an ARTIQ master has no ``pipelines``
notifier) is left out quietly.
"""

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from labpipe.client.connection import Lost, Unreachable

__all__ = ["reconnecting", "Feeds", "BACKOFF"]

T = TypeVar("T")

#: Seconds between reconnection attempts: the first, the factor, the longest.
BACKOFF = (0.5, 2.0, 10.0)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.removeprefix("cannot reach ")


def reconnecting(open_stream: Callable[[], Iterator[T]], where: str,
                 say: Callable[[str], None] | None,
                 sleep: Callable[[float], None] = time.sleep) -> Iterator[T]:
    """See the module docstring. ``say``: where notices go (None: nowhere)."""
    first, factor, longest = BACKOFF
    delay = first
    ever_connected = False
    lost_since: float | None = None
    while True:
        try:
            stream = open_stream()  # connected, or Unreachable
            if lost_since is not None:
                if say:
                    say(f"reconnected to the master at {where} "
                        f"(after {time.monotonic() - lost_since:.0f} s)")
                lost_since = None
                delay = first
            for item in stream:
                ever_connected = True
                yield item
            raise Lost(f"the master at {where} closed the connection")
        except (Lost, Unreachable, OSError, EOFError) as exc:
            if isinstance(exc, Lost):
                ever_connected = True  # the stream had been established
            if not ever_connected:
                raise
            if say:
                if lost_since is None:
                    say(f"lost the master at {where} ({_reason(exc)}); reconnecting "
                        f"(next try in {delay:g} s)")
                else:
                    say(f"still no master at {where}; next try in {delay:g} s")
            if lost_since is None:
                lost_since = time.monotonic()
            sleep(delay)
            delay = min(delay * factor, longest)


class Feeds:
    """Items of several reconnecting streams, in one queue: ``(name, item)``."""

    def __init__(self) -> None:
        #: held while a stream changes its content in place, and while it is drawn
        self.lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, Any, BaseException | None]] = queue.Queue()
        self._optional: set[str] = set()

    def add(self, name: str, stream: Iterator[Any], optional: bool = False) -> None:
        """Follow stream in a thread (a daemon: it ends with the program)."""
        if optional:
            self._optional.add(name)
        threading.Thread(target=self._follow, args=(name, stream), daemon=True,
                         name=f"feed-{name}").start()

    def _follow(self, name: str, stream: Iterator[Any]) -> None:
        try:
            for item in stream:
                self._queue.put((name, item, None))
        except BaseException as exc:  # handed to the reading loop
            self._queue.put((name, None, exc))

    def get(self, timeout: float | None = None) -> tuple[str, Any] | None:
        """The next item (None after timeout); a required feed's error is raised here."""
        while True:
            try:
                name, item, error = self._queue.get(timeout=timeout)
            except queue.Empty:
                return None
            if error is None:
                return name, item
            if name not in self._optional:
                raise error

    def pending(self) -> bool:
        """Whether more items are waiting."""
        return not self._queue.empty()
