"""A client of the buffer's output port (blocking, one request at a time)."""

from __future__ import annotations

import json
from typing import Any

import zmq

from labpipe.stream import wire


class BufferError(RuntimeError):
    """The buffer did not answer, or answered an error."""


class BufferClient:
    """Status and reads from a ``labpipe-buffer`` at ``address``."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout_ms = int(timeout * 1000)
        self._context: zmq.Context[Any] = zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None

    def _request(self, body: dict[str, Any]) -> list[bytes]:
        if self._socket is None:
            self._socket = self._context.socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.address)
        self._socket.send_multipart([b"", json.dumps(body).encode()])
        if not self._socket.poll(self.timeout_ms):
            # a reply that comes late would answer the next request: start afresh
            self.close()
            raise BufferError(f"the buffer at {self.address} did not answer within"
                              f" {self.timeout_ms / 1000:g} s")
        frames = self._socket.recv_multipart()
        return frames[1:] if frames and frames[0] == b"" else frames

    def status(self) -> dict[str, Any]:
        """The buffer's status (see :mod:`labpipe.stream.buffer`)."""
        reply = json.loads(self._request({"cmd": "status"})[0])
        if reply.get("state") != "ok":
            raise BufferError(str(reply.get("status")))
        status: dict[str, Any] = reply["status"]
        return status

    def read(self, from_pulse: int | None = None, from_seq: int | None = None,
             limit: int = 100) -> tuple[dict[str, Any], list[list[bytes]]]:
        """Up to ``limit`` messages from a pulse id or a sequence number: the reply's
        JSON (``oldest_pulse``, ``oldest_seq``, ``next_seq``) and each message's parts."""
        body: dict[str, Any] = {"cmd": "read", "max": limit}
        if from_pulse is not None:
            body["from_pulse"] = from_pulse
        else:
            body["from_seq"] = from_seq or 0
        frames = self._request(body)
        meta = json.loads(frames[0])
        if "parts" not in meta:
            raise BufferError(str(meta.get("status")))
        messages: list[list[bytes]] = []
        index = 1
        for count in meta["parts"]:
            messages.append(frames[index:index + count])
            index += count
        return meta, messages

    def last(self, n: int) -> list[wire.Message]:
        """The newest ``n`` messages held, decoded, oldest first."""
        seq = max(0, int(self.status()["next_seq"]) - n)
        _, messages = self.read(from_seq=seq, limit=n)
        decoder = wire.Decoder()
        return [decoder.decode(parts) for parts in messages]

    def close(self) -> None:
        """Close the socket (a later request opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
