"""The worker's end of the master-worker pipe.

Messages are those of ``messages.py``, encoded there, pickled over a multiprocessing
``Connection`` (the pipe is private to the master and its own child; nothing from the
network crosses it). The child sends *lists* of messages: a sender thread takes
everything queued since its last send and ships it as one batch, so that a loop setting
a dataset thousands of times costs one pipe write per batch instead of one per update,
while a lone message still leaves at once. Messages from one thread keep their order.

The master sends single messages: a command, or the answer to the one request under
way (requests are one at a time: a lock). A ``Terminate`` can arrive at any time, even
while the child waits for an answer: the child then exits at once.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from labpipe.worker.messages import (TO_WORKER, MalformedMessage, Message, Refused, Reply,
                                     Request, Terminate, decode, encode, tag_of)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["ChildChannel", "RequestFailed"]

R = TypeVar("R")


class RequestFailed(Exception):
    """The master refused a request of the worker; the message says why."""


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


class ChildChannel:
    """The worker process's side of the pipe: batched sends, requests, commands."""

    MAX_BATCH = 4096

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | _Flush | None] = \
            queue.SimpleQueue()
        self._request_lock = threading.Lock()
        self._sender = threading.Thread(target=self._send_loop, name="labpipe-ipc-sender",
                                        daemon=True)
        self._sender.start()

    def send(self, msg: Message) -> None:
        """Queue a message; it leaves in order with the next batch (thread-safe)."""
        self._outbox.put(encode(msg))

    def flush(self) -> None:
        """Return once everything queued before this call has been written to the pipe."""
        marker = _Flush()
        self._outbox.put(marker)
        marker.done.wait()

    def request(self, request: Request[R]) -> R:
        """Ask the master something and wait for its reply (thread-safe, one at a
        time). Raises RequestFailed when the master refused it."""
        with self._request_lock:
            self.send(request)
            try:
                answer = self.recv_command()
            except MalformedMessage as e:
                raise RequestFailed(f"the master's answer to {tag_of(request)!r}: {e}") \
                    from None
        if isinstance(answer, Reply):
            return answer.data
        if isinstance(answer, Refused):
            raise RequestFailed(answer.message)
        raise RequestFailed(f"the master answered {tag_of(request)!r} with "
                            f"{tag_of(answer)!r}")

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a message from the master is there to receive (within timeout s)."""
        try:
            return self._conn.poll(timeout)
        except (EOFError, OSError):
            return True  # recv_command then exits: the master is gone

    def recv_command(self) -> Message:
        """Receive the next message from the master (a command or an answer); a
        ``Terminate`` exits at once. Raises MalformedMessage for anything else."""
        try:
            wire = self._conn.recv()
        except (EOFError, OSError):
            os._exit(1)  # the master is gone: nobody is left to report to
        msg = decode(wire, TO_WORKER)
        if isinstance(msg, Terminate):
            self.close()
            os._exit(0)
        return msg

    def close(self) -> None:
        """Send what is queued and stop the sender thread."""
        self._outbox.put(None)
        self._sender.join(timeout=5)

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            batch: list[tuple[Any, ...]] = []
            markers: list[_Flush] = []
            stop = False
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, _Flush):
                    markers.append(item)
                else:
                    batch.append(item)
                if stop or len(batch) >= self.MAX_BATCH:
                    break
                try:
                    item = self._outbox.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self._conn.send(batch)
                except (OSError, ValueError):
                    os._exit(1)  # the pipe is broken: the master is gone
            for marker in markers:
                marker.done.set()
            if stop:
                return
