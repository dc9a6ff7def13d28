"""The worker's end of the master-worker pipe.

Messages are dicts with an ``action`` key, pickled over a multiprocessing ``Connection``
(the pipe is private to the master and its own child; nothing from the network crosses
it). The child sends *lists* of messages: a sender thread takes everything queued since
its last send and ships it as one batch, so that a loop setting a dataset thousands of
times costs one pipe write per batch instead of one per update, while a lone message
still leaves at once. Messages from one thread keep their order.

Three kinds of child messages:

- one-way (``log``, ``update_dataset``, ``ccb_issue``, ``set_progress``): no reply;
- requests (``"request": True``): the master replies ``{"status": "ok", "data": x}`` or
  ``{"status": "failed", "message": str}``; one request at a time (a lock);
- stage outcomes (``completed``, ``paused``, ``terminated``, ``exception``).

The master sends commands (``build``, ``prepare``, ``run``, ``resume``, ``analyze``,
``validate``, ``terminate``) and replies. A ``terminate`` can arrive at any time,
even while the child waits for a reply: the child then exits at once.
"""

import os
import queue
import threading

__all__ = ["ChildChannel", "RequestFailed"]


class RequestFailed(Exception):
    """The master refused a request of the worker; the message says why."""


class _Flush:
    def __init__(self):
        self.done = threading.Event()


class ChildChannel:
    """The worker process's side of the pipe: batched sends, requests, commands."""

    MAX_BATCH = 4096

    def __init__(self, conn):
        self._conn = conn
        self._outbox = queue.SimpleQueue()
        self._request_lock = threading.Lock()
        self._sender = threading.Thread(target=self._send_loop, name="labpipe-ipc-sender",
                                        daemon=True)
        self._sender.start()

    def send(self, msg: dict):
        """Queue a message; it leaves in order with the next batch (thread-safe)."""
        self._outbox.put(msg)

    def flush(self):
        """Return once everything queued before this call has been written to the pipe."""
        marker = _Flush()
        self._outbox.put(marker)
        marker.done.wait()

    def request(self, action: str, **kwargs):
        """Ask the master something and wait for its reply (thread-safe, one at a time)."""
        with self._request_lock:
            self.send({"action": action, "request": True, **kwargs})
            reply = self.recv_command()
        if reply.get("status") == "ok":
            return reply.get("data")
        raise RequestFailed(reply.get("message", "the master refused the request"))

    def recv_command(self) -> dict:
        """Receive the next message from the master; a ``terminate`` exits at once."""
        try:
            msg = self._conn.recv()
        except (EOFError, OSError):
            os._exit(1)  # the master is gone: nobody is left to report to
        if msg.get("action") == "terminate":
            self.close()
            os._exit(0)
        return msg

    def close(self):
        """Send what is queued and stop the sender thread."""
        self._outbox.put(None)
        self._sender.join(timeout=5)

    def _send_loop(self):
        while True:
            item = self._outbox.get()
            batch, markers, stop = [], [], False
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
