"""A client of the buffer's output port (blocking, one request at a time)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from labpipe.stream import wire


class BufferError(RuntimeError):
    """The buffer did not answer, or answered an error."""


@dataclass
class Block:
    """Consecutive buffered messages of one data header, by columns: arrays over the
    received frames (no copy). ``values[i]`` has a row per message of
    ``channels[i]``'s shape; ``stamps[i]`` its timestamps in ns; ``present[i]``
    whether each message has data for it."""

    seq: int
    pulse_id: np.ndarray[Any, Any]
    channels: list[wire.Channel]
    values: list[np.ndarray[Any, Any]]
    stamps: list[np.ndarray[Any, Any]]
    present: list[np.ndarray[Any, Any]]

    def __len__(self) -> int:
        return len(self.pulse_id)

    def part(self, start: int, stop: int) -> Block:
        """Messages ``start`` to ``stop`` (excluded) of the block."""
        rows = slice(start, stop)
        return Block(self.seq + start, self.pulse_id[rows], self.channels,
                     [v[rows] for v in self.values], [s[rows] for s in self.stamps],
                     [p[rows] for p in self.present])


class BufferClient:
    """Status and reads from a ``labpipe-buffer`` at ``address``."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout_ms = int(timeout * 1000)
        self._context: zmq.Context[Any] = zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None
        self._header = b""
        self._channels: list[wire.Channel] = []

    def _send(self, body: dict[str, Any]) -> None:
        if self._socket is None:
            self._socket = self._context.socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.address)
        self._socket.send_multipart([b"", json.dumps(body).encode()])

    def _wait(self) -> zmq.Socket[bytes]:
        socket = self._socket
        assert socket is not None
        if not socket.poll(self.timeout_ms):
            # a reply that comes late would answer the next request: start afresh
            self.close()
            raise BufferError(f"the buffer at {self.address} did not answer within"
                              f" {self.timeout_ms / 1000:g} s")
        return socket

    def _request(self, body: dict[str, Any]) -> list[bytes]:
        self._send(body)
        frames = self._wait().recv_multipart()
        return frames[1:] if frames and frames[0] == b"" else frames

    def ask_block(self, from_pulse: int | None = None, from_seq: int | None = None,
                  limit: int = 2000) -> None:
        """Ask for a block of up to ``limit`` messages from a pulse id or a sequence
        number; :meth:`take_block` receives it. Asking for the next block before
        writing this one lets the buffer and the network work meanwhile."""
        body: dict[str, Any] = {"cmd": "block", "max": limit}
        if from_pulse is not None:
            body["from_pulse"] = from_pulse
        else:
            body["from_seq"] = from_seq or 0
        self._send(body)

    def take_block(self) -> tuple[dict[str, Any], Block | None]:
        """The reply to :meth:`ask_block`: its JSON (``oldest_pulse``, ``oldest_seq``,
        ``seq``, ``next_seq``) and the block (None when no message was there)."""
        # zero-copy: the arrays are views of the frames as they were received
        frames = self._wait().recv_multipart(copy=False)
        if frames and not len(frames[0]):
            frames = frames[1:]
        meta = json.loads(frames[0].bytes)
        if "count" not in meta:
            raise BufferError(str(meta.get("status")))
        count = int(meta["count"])
        if not count:
            return meta, None
        header = meta["data_header"].encode()
        if header != self._header:
            self._channels = wire.parse_data_header(header)
            self._header = header
        if len(frames) != 4 + 3 * len(self._channels):
            raise BufferError(f"a block of {len(frames)} frames for"
                              f" {len(self._channels)} channels")
        pulse_id = np.frombuffer(frames[1].buffer, np.int64)  # then seconds, ns
        values, stamps, present = [], [], []
        for index, channel in enumerate(self._channels):
            value, stamp, there = frames[4 + 3 * index: 7 + 3 * index]
            values.append(np.frombuffer(value.buffer, channel.dtype.newbyteorder("<"))
                          .reshape(count, *channel.shape))
            pair = np.frombuffer(stamp.buffer, np.int64).reshape(count, 2)
            stamps.append(pair[:, 0] * 1_000_000_000 + pair[:, 1])
            present.append(np.frombuffer(there.buffer, bool))
        return meta, Block(int(meta["seq"]), pulse_id, self._channels, values, stamps,
                           present)

    def block(self, from_pulse: int | None = None, from_seq: int | None = None,
              limit: int = 2000) -> tuple[dict[str, Any], Block | None]:
        """:meth:`ask_block` and :meth:`take_block` in one."""
        self.ask_block(from_pulse, from_seq, limit)
        return self.take_block()

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
