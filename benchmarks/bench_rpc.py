"""Benchmark the master's RPC (the ``pc_rpc`` control port): round trip and throughput.

Starts ``labpipe-master`` in a temporary lab (ports picked free) and prints each figure
beside its floor (``floors.py``; measured in the same run, the ratio after it):

- RPC round trip: median of 2,000 calls from one blocking client (``rpc.Client``, the
  way ARTIQ's clients call), of ``master_management.get_name`` (the cheapest method:
  the floor of any call) and of ``schedule.get_status`` (idle schedule). Floor: a
  loopback round trip (``floors.loopback_round_trip``).
- calls/s over 4 concurrent connections: 4 client processes, each one blocking
  client calling ``master_management.get_name`` back to back for ``--seconds``; the
  calls all 4 completed, per second. Floor: the same 4 client processes, each sending
  a line of the same size and reading one back, against an echo server process that
  answers every connection from one thread (``selectors``, as the master answers from
  one event loop) without parsing anything.

Every figure is measured ``--repeats`` times (interleaved with its floor); the medians
are printed, the individual runs after them.

Usage: python benchmarks/bench_rpc.py [--seconds S] [--repeats N]  (2 and 3)
"""

import argparse
import multiprocessing
import os
import selectors
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402
from bench_master import master_process_in_temporary_lab  # noqa: E402

from labpipe.protocol.rpc import Client

CONNECTIONS = 4
REQUEST = ('{"action":"call","name":"get_name","args":{"__jsonclass__":["tuple",[[]]]},'
           '"kwargs":{}}\n').encode()
REPLY_SIZE = len(b'{"status":"ok","ret":null}\n')


def round_trips(port: int, target: str, method: str, count: int) -> float:
    """Median wall time of count calls of target.method() from one blocking client."""
    with Client("127.0.0.1", port, target) as client:
        call = getattr(client, method)
        for _ in range(50):  # warm-up
            call()
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rpc_caller(port: int, start: float, stop: float, out: Any) -> None:
    with Client("127.0.0.1", port, "master_management") as client:
        client.get_name()
        while time.time() < start:
            pass
        n = 0
        while time.time() < stop:
            client.get_name()
            n += 1
    out.put(n)


def _echo_caller(port: int, start: float, stop: float, out: Any) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        while time.time() < start:
            pass
        n = 0
        while time.time() < stop:
            conn.sendall(REQUEST)
            # read one line back, as the RPC client does
            while (end := buffer.find(b"\n")) < 0:
                buffer += conn.recv(1 << 16)
            del buffer[:end + 1]
            n += 1
    out.put(n)


def _echo_server(listener: socket.socket) -> None:
    """Answer each line with a line of the reply's size, all connections in one thread."""
    reply = b"x" * (REPLY_SIZE - 1) + b"\n"
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ)
                continue
            peer = key.fileobj
            assert isinstance(peer, socket.socket)
            data = peer.recv(1 << 16)
            if not data:
                sel.unregister(peer)
                peer.close()
                continue
            peer.sendall(reply * data.count(b"\n"))


def calls_per_second(caller: Callable[..., None], port: int, seconds: float) -> float:
    """Calls/s completed by CONNECTIONS client processes running caller for seconds."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5  # all connected and warm before the window opens
    processes = [ctx.Process(target=caller, args=(port, start, start + seconds, out))
                 for _ in range(CONNECTIONS)]
    for p in processes:
        p.start()
    counts = [out.get(timeout=seconds + 30) for _ in processes]
    for p in processes:
        p.join(timeout=10)
    return sum(counts) / seconds


def echo_calls_per_second(seconds: float) -> float:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = multiprocessing.get_context("fork").Process(
            target=_echo_server, args=(listener,), daemon=True)
        server.start()
        try:
            return calls_per_second(_echo_caller, listener.getsockname()[1], seconds)
        finally:
            server.terminate()
            server.join(timeout=10)


def rate(value: float) -> str:
    return f"{value:,.0f} calls/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    floors.header("bench_rpc.py")
    rows: dict[str, list[float]] = {}
    with master_process_in_temporary_lab({}) as (_, ports):
        port = ports["control"]
        for _ in range(args.repeats):
            measured = {
                "loopback": floors.loopback_round_trip(repeats=2000).seconds,
                "get_name": round_trips(port, "master_management", "get_name", 2000),
                "get_status": round_trips(port, "schedule", "get_status", 2000),
                "echo": echo_calls_per_second(args.seconds),
                "calls": calls_per_second(_rpc_caller, port, args.seconds),
            }
            for key, value in measured.items():
                rows.setdefault(key, []).append(value)
    med = {key: statistics.median(values) for key, values in rows.items()}

    def runs(key: str, fmt: Callable[[float], str]) -> str:
        return " (runs: " + ", ".join(fmt(v) for v in rows[key]) + ")"

    loopback = floors.Floor("loopback round trip", med["loopback"])
    print(floors.beside(f"RPC round trip (master_management.get_name), median of "
                        f"{args.repeats} medians of 2,000", med["get_name"], loopback)
          + runs("get_name", floors.duration) + "; floor" + runs("loopback", floors.duration))
    print(floors.beside(f"RPC round trip (schedule.get_status, idle), median of "
                        f"{args.repeats} medians of 2,000", med["get_status"], loopback)
          + runs("get_status", floors.duration))
    # a rate: the floor is the higher figure, so the ratio printed is floor / figure
    echo = floors.Floor(f"{CONNECTIONS} echo clients, one-thread echo server", 1 / med["echo"])
    print(floors.beside(f"calls over {CONNECTIONS} concurrent connections, median of "
                        f"{args.repeats} windows of {args.seconds:g} s", 1 / med["calls"], echo,
                        fmt=lambda s: rate(1 / s))
          + runs("calls", rate) + "; floor" + runs("echo", rate))
    floors.load_average("end")


if __name__ == "__main__":
    main()
