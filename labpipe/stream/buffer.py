"""``labpipe-buffer STREAM -o PORT -b LENGTH``: the always-on ring of a bsread stream.

It pulls the stream (ZMQ PULL, reconnecting by itself when the source goes and comes
back), keeps the last LENGTH messages in a :class:`~labpipe.stream.ring.Ring`, and
answers on its output port (a ZMQ ROUTER) two JSON requests:

- ``{"cmd": "status"}``: counters, the oldest and newest pulse ids held, the channels;
- ``{"cmd": "read", "from_pulse": P | "from_seq": S, "max": N}``: a first frame of JSON
  ``{"oldest_pulse", "oldest_seq", "next_seq", "parts": [k1, ...]}`` then the parts of up
  to N messages, each a bsread message as sent (values uncompressed). Reading again
  from ``next_seq`` gives the live messages as they arrive.
- ``{"cmd": "block", "from_pulse": P | "from_seq": S, "max": N}``: the same messages
  by columns, for writers: a first frame of JSON ``{"oldest_pulse", "oldest_seq",
  "seq", "count", "next_seq", "data_header"}`` then, for the ``count`` messages from
  ``seq`` on (all of one data header), their pulse ids, seconds and nanoseconds
  (int64 each), then per channel of the data header its values (``count`` rows of
  the channel's type and shape, little-endian), timestamps (``count`` x 2 int64) and
  presence (``count`` bools): one frame each, no per-message encoding.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time
from typing import Any

import zmq

from labpipe.protocol.ports import tcp_port
from labpipe.stream import wire
from labpipe.stream.ring import Ring

# at most this much in one read reply: below glibc's largest mmap threshold (32 MiB),
# so the replies' buffers are reused memory, not fresh pages faulted in each time
READ_BYTES = 16 << 20
DRAIN_SECONDS = 0.05
BIG_MESSAGE = 1 << 20
BIG_PART = 64 << 10


class Buffer:
    """The buffer's state: its ring and its counters."""

    def __init__(self, length: int, analyzer: bool = False) -> None:
        self.ring = Ring(length)
        self.decoder = wire.Decoder()
        self.analyzer = analyzer
        self.received = 0
        self.gaps = 0
        self.late = 0
        self.malformed = 0
        self.last_pulse: int | None = None
        self.last_error = ""

    def take(self, parts: list[bytes]) -> None:
        """One message from the stream: stored, or counted as late or malformed."""
        self.received += 1
        try:
            message = self.decoder.decode(parts, raw=True)
        except wire.WireError as error:
            self.malformed += 1
            self.last_error = str(error)
            self._note(f"malformed message: {error}")
            return
        if self.last_pulse is not None:
            if message.pulse_id <= self.last_pulse:
                self.late += 1
                self._note(f"late message: pulse id {message.pulse_id} after"
                           f" {self.last_pulse}")
                return
            if message.pulse_id > self.last_pulse + 1:
                missing = message.pulse_id - self.last_pulse - 1
                self.gaps += missing
                self._note(f"gap: {missing} pulse id(s) after {self.last_pulse}")
        self.last_pulse = message.pulse_id
        self.ring.put(message)

    def status(self) -> dict[str, Any]:
        """What ``{"cmd": "status"}`` answers."""
        ring = self.ring
        held = ring.count - ring.oldest_seq()
        oldest = int(ring.pulse_id[ring.oldest_seq() % ring.length]) if held else None
        return {"received": self.received, "buffered": held, "length": ring.length,
                "gaps": self.gaps, "late": self.late, "malformed": self.malformed,
                "header_changes": self.decoder.header_changes,
                "oldest_pulse_id": oldest, "newest_pulse_id": self.last_pulse,
                "next_seq": ring.count, "ring_bytes": ring.nbytes(),
                "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                * 1024, "channels": ring.channels(), "last_error": self.last_error}

    def read(self, request: dict[str, Any]) -> list[bytes]:
        """The reply frames to a read request."""
        ring = self.ring
        oldest = ring.oldest_seq()
        if "from_pulse" in request:
            seq = ring.find_pulse(int(request["from_pulse"]))
        else:
            seq = max(int(request.get("from_seq", 0)), oldest)
        limit = int(request.get("max", 100))
        frames: list[bytes] = []
        counts: list[int] = []
        size = 0
        while seq < ring.count and len(counts) < limit and size < READ_BYTES:
            parts = ring.parts(seq)
            frames.extend(parts)
            counts.append(len(parts))
            size += sum(len(p) for p in parts)
            seq += 1
        held = ring.count > oldest
        meta = {"oldest_pulse": int(ring.pulse_id[oldest % ring.length]) if held
                else None, "oldest_seq": oldest, "next_seq": seq, "parts": counts}
        return [json.dumps(meta).encode(), *frames]

    def block(self, request: dict[str, Any]) -> list[Any]:
        """The reply frames to a block request (arrays are copied as they are sent)."""
        ring = self.ring
        if "from_pulse" in request:
            seq = ring.find_pulse(int(request["from_pulse"]))
        else:
            seq = int(request.get("from_seq", 0))
        seq, count, header, arrays = ring.block(seq, int(request.get("max", 100)),
                                                READ_BYTES)
        oldest = ring.oldest_seq()
        held = ring.count > oldest
        meta = {"oldest_pulse": int(ring.pulse_id[oldest % ring.length]) if held
                else None, "oldest_seq": oldest, "seq": seq, "count": count,
                "next_seq": seq + count, "data_header": header.decode()}
        return [json.dumps(meta).encode(), *arrays]

    def _note(self, line: str) -> None:
        if self.analyzer:
            print(f"labpipe-buffer: {line}", file=sys.stderr, flush=True)


def serve(stream: str, port: int, length: int, analyzer: bool = False,
          ready: bool = True) -> None:
    """Run the buffer until SIGTERM or SIGINT."""
    buffer = Buffer(length, analyzer)
    context = zmq.Context()
    source = context.socket(zmq.PULL)
    source.setsockopt(zmq.RCVHWM, 1000)  # bounded: a queue of images is memory too
    source.setsockopt(zmq.LINGER, 0)
    source.connect(stream)
    output = context.socket(zmq.ROUTER)
    output.setsockopt(zmq.LINGER, 0)
    output.bind(f"tcp://127.0.0.1:{port}" if port else "tcp://127.0.0.1:*")
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    poller = zmq.Poller()
    poller.register(source, zmq.POLLIN)
    poller.register(output, zmq.POLLIN)
    if ready:
        print(f"labpipe-buffer: buffering {stream} ({length} messages), serving on"
              f" {output.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    big = False  # the last message was large: receive the next one without copies
    try:
        while not stopping:
            events = dict(poller.poll(200))
            if source in events:
                # drain what is queued before answering readers, the stream first,
                # but for DRAIN_SECONDS at most: a stream as fast as the buffer
                # would otherwise keep every reader waiting
                until = time.monotonic() + DRAIN_SECONDS
                while time.monotonic() < until:
                    try:
                        parts = receive(source, big)
                    except zmq.Again:
                        break
                    buffer.take(parts)
                    big = sum(map(len, parts)) > BIG_MESSAGE
            if output in events:
                while True:
                    try:
                        peer, *request = output.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    output.send_multipart([peer, *answer(buffer, request)])
    finally:
        source.close()
        output.close()
        context.term()


def receive(source: zmq.Socket[bytes], big: bool) -> list[Any]:
    """One message's parts: bytes, or for a large message (``big``) memoryviews of
    its large parts as ZMQ received them (one copy of an image fewer; a part
    received as a frame costs more than as bytes, so small messages stay bytes)."""
    if not big:
        return source.recv_multipart(zmq.NOBLOCK)
    return [frame.buffer if len(frame) > BIG_PART else frame.bytes
            for frame in source.recv_multipart(zmq.NOBLOCK, copy=False)]


def answer(buffer: Buffer, request: list[bytes]) -> list[Any]:
    """The reply to one request on the output port."""
    try:
        body = json.loads(request[-1]) if request else None
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        if body.get("cmd") == "status":
            return [json.dumps({"state": "ok", "status": buffer.status()}).encode()]
        if body.get("cmd") == "read":
            return buffer.read(body)
        if body.get("cmd") == "block":
            return buffer.block(body)
        raise ValueError(f"unknown cmd {body.get('cmd')!r} (status, read, block)")
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        return [json.dumps({"state": "error", "status": f"bad request: {error}"})
                .encode()]


def main(argv: list[str] | None = None) -> None:
    """The console script."""
    parser = argparse.ArgumentParser(prog="labpipe-buffer", description=__doc__
                                     and __doc__.splitlines()[0])
    parser.add_argument("stream", help="stream source, e.g. tcp://127.0.0.1:9999")
    parser.add_argument("-o", "--output_port", type=tcp_port, required=True,
                        help="port to serve buffered and live messages on")
    parser.add_argument("-b", "--buffer_length", type=int, required=True,
                        help="messages to keep")
    parser.add_argument("--analyzer", action="store_true",
                        help="print each gap, late and malformed message on stderr")
    args = parser.parse_args(argv)
    if args.buffer_length < 1:
        parser.exit(2, f"labpipe-buffer: -b {args.buffer_length}: the buffer length"
                    " must be at least 1\n")
    if not args.stream.startswith(("tcp://", "ipc://", "inproc://")):
        parser.exit(2, f"labpipe-buffer: {args.stream}: a stream address is"
                    " tcp://HOST:PORT\n")
    try:
        serve(args.stream, args.output_port, args.buffer_length, args.analyzer)
    except zmq.ZMQError as error:
        parser.exit(1, f"labpipe-buffer: {error}\n")
    except MemoryError:
        parser.exit(1, f"labpipe-buffer: a ring of {args.buffer_length} messages does"
                    " not fit in memory\n")


if __name__ == "__main__":
    main()
