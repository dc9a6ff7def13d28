"""``labpipe-stream-sim -p PORT``: a simulated bsread source binding a PUSH socket.

Channels: ``SIM:SCALAR<i>`` (float64), ``SIM:WAVEFORM`` (float64), ``SIM:IMAGE``
(uint16, rows x cols); one message per pulse id at ``--rate`` Hz. Pulse ids count up
from ``--start-pulse-id`` (default: the time in units of 1/rate, so a restarted
simulator goes on where it left off). ``--skip-every N`` leaves out every Nth pulse id
(gaps); ``--change-at P`` adds the channel ``SIM:EXTRA`` from pulse id P (a data-header
change). A message no peer takes at once is dropped and counted (PUSH never blocks).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

import numpy as np
import zmq

from labpipe.protocol.ports import tcp_port
from labpipe.stream import wire


def _shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ROWSxCOLS") from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: rows and cols must be positive")
    return rows, cols


class Source:
    """Builds the simulator's messages."""

    def __init__(self, scalars: int, waveform: int, image: tuple[int, int] | None,
                 compression: str = "none") -> None:
        self.compression = compression
        self.base = [wire.Channel(f"SIM:SCALAR{i}", "float64", (1,))
                     for i in range(scalars)]
        if waveform:
            self.base.append(wire.Channel("SIM:WAVEFORM", "float64", (waveform,)))
        if image:
            self.base.append(wire.Channel("SIM:IMAGE", "uint16", image,
                                          compression=compression))
        self.image = (np.arange(image[0] * image[1], dtype=np.uint16).reshape(image)
                      if image else None)
        self.extra = [*self.base, wire.Channel("SIM:EXTRA", "int32", (1,))]
        self._headers = {False: wire.data_header(self.base),
                         True: wire.data_header(self.extra)}
        self._hashes = {key: wire.header_hash(part) for key, part in self._headers.items()}
        self._scalars = np.arange(scalars, dtype=np.float64) / 100

    def message(self, pulse_id: int, extra: bool) -> list[bytes]:
        """The parts of the message of this pulse id: ``SIM:SCALAR<i>`` is pulse id +
        i / 100, ``SIM:WAVEFORM`` pulse id + 0, 1, ..., the image's first pixel the
        pulse id's low 16 bits, ``SIM:EXTRA`` the pulse id."""
        sec, ns = divmod(time.time_ns(), 1_000_000_000)
        # all scalars in one numpy operation, cut into their 8-byte parts
        raw = (self._scalars + pulse_id).tobytes()
        values = [raw[8 * i:8 * i + 8] for i in range(len(self._scalars))]
        for channel in (self.extra if extra else self.base)[len(values):]:
            values.append(self._value(channel, pulse_id))
        return wire.encode(pulse_id, sec, ns, self._headers[extra], values,
                           [(sec, ns)] * len(values), self._hashes[extra])

    def _value(self, channel: wire.Channel, pulse_id: int) -> bytes:
        value: np.ndarray[Any, Any]
        if channel.name == "SIM:IMAGE":
            assert self.image is not None
            value = self.image
            value[0, 0] = pulse_id & 0xFFFF
            return wire.compress(value, channel.compression)
        if channel.name == "SIM:WAVEFORM":
            return (np.arange(channel.shape[0], dtype=np.float64) + pulse_id).tobytes()
        return np.int32(pulse_id).tobytes()  # SIM:EXTRA


def main(argv: list[str] | None = None) -> None:
    """The console script."""
    parser = argparse.ArgumentParser(prog="labpipe-stream-sim",
                                     description="a simulated bsread source")
    parser.add_argument("-p", "--port", type=tcp_port, required=True,
                        help="port to bind the PUSH socket to")
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second")
    parser.add_argument("--image", type=_shape, default=None, metavar="ROWSxCOLS")
    parser.add_argument("--scalars", type=int, default=2)
    parser.add_argument("--waveform", type=int, default=0, metavar="LEN")
    parser.add_argument("--compression", choices=wire.COMPRESSIONS, default="none",
                        help="of the image channel")
    parser.add_argument("--start-pulse-id", type=int, default=None)
    parser.add_argument("--skip-every", type=int, default=0, metavar="N")
    parser.add_argument("--change-at", type=int, default=None, metavar="PULSE_ID")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many messages (0: never)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.scalars < 0 or args.waveform < 0:
        parser.exit(2, "labpipe-stream-sim: --rate must be positive, --scalars and"
                    " --waveform not negative\n")
    try:
        source = Source(args.scalars, args.waveform, args.image, args.compression)
        if args.image and args.compression != "none":
            wire.compress(source.image[:1], args.compression)  # type: ignore[index]
    except wire.WireError as error:
        parser.exit(2, f"labpipe-stream-sim: {error}\n")
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    # a queue of at most ~1 s or 256 MB of messages, whichever is less (PUSH queues
    # in memory what no peer took yet)
    size = sum(len(part) for part in source.message(0, False))
    socket.setsockopt(zmq.SNDHWM, max(10, min(10000, int(args.rate),
                                              (256 << 20) // size)))
    # with --count, what is sent is delivered before the simulator exits
    socket.setsockopt(zmq.LINGER, 5000 if args.count else 0)
    try:
        socket.bind(f"tcp://127.0.0.1:{args.port}")
    except zmq.ZMQError as error:
        parser.exit(1, f"labpipe-stream-sim: port {args.port}: {error}\n")
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    period = 1 / args.rate
    pulse = (args.start_pulse_id if args.start_pulse_id is not None
             else int(time.time() * args.rate))
    print(f"labpipe-stream-sim: sending on tcp://127.0.0.1:{args.port} from pulse id"
          f" {pulse} at {args.rate:g} Hz", flush=True)
    sent = dropped = 0
    next_time = time.monotonic()
    try:
        while not stopping and (not args.count or sent + dropped < args.count):
            if not (args.skip_every and pulse % args.skip_every == 0):
                extra = args.change_at is not None and pulse >= args.change_at
                try:
                    socket.send_multipart(source.message(pulse, extra), zmq.NOBLOCK,
                                          copy=False)
                    sent += 1
                except zmq.Again:
                    dropped += 1
            pulse += 1
            next_time += period
            delay = next_time - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:
                next_time = time.monotonic()  # fell behind a second: do not burst
    finally:
        socket.close()
        context.term()
        print(f"labpipe-stream-sim: sent {sent}, dropped {dropped}", file=sys.stderr,
              flush=True)


if __name__ == "__main__":
    main()
