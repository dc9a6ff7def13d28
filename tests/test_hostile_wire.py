"""Hostile input on the wire against real servers and a real master.

Each test sends what no honest client would, then checks three things: the refusal is
one line naming what was wrong, another client's call still answers within 1 s (a
liveness bound, not a speed test), and the process's RSS and open descriptors come
back near where they were.
"""

import asyncio
import contextlib
import logging
import os
import socket
import time

import pytest

from labpipe.master.params import PyonValue
from labpipe.protocol import pyon
from labpipe.protocol.rpc import AsyncClient
from labpipe.protocol.server import ConnectionLimits
from labpipe.protocol.sync import Notifier, Publisher, Subscriber

from conftest import running_master, wait_until

HOST = "127.0.0.1"
LIVENESS = 1.0  # seconds another client's call may take under attack


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def master_client(lab, **options):
    """A real master and an AsyncClient on its schedule target."""
    async with running_master(lab, **options) as master:
        client = AsyncClient()
        await client.connect_rpc(HOST, master.port("control"), "schedule")
        try:
            yield master, client
        finally:
            client.close_rpc()


async def assert_live(client):
    async with asyncio.timeout(LIVENESS):
        assert isinstance(await client.get_status(), dict)


def raw_rpc(port, target="schedule"):
    """A blocking socket past the RPC handshake, and a reader of reply lines."""
    sock = socket.create_connection((HOST, port), timeout=10)
    f = sock.makefile("rb")
    sock.sendall(b"ARTIQ pc_rpc\n")
    f.readline()
    sock.sendall(f"{target} pyon_v2\n".encode())
    f.readline()
    return sock, f


HOSTILE_REQUESTS = {
    "fraction bomb": (b'{"action":"call","name":"get_status","args":[{"__jsonclass__": '
                      b'["Fraction", ["1e10000000"]]}],"kwargs":{}}', "Fraction"),
    "complex bomb": (b'{"action":"call","name":"get_status","args":[{"__jsonclass__": '
                     b'["complex", ["1e10000000"]]}],"kwargs":{}}', "complex"),
    "long integer": (b'{"action":"call","name":"get_status","args":[' + b"7" * 100_000
                     + b'],"kwargs":{}}', "integer"),
    "deep list": (b'{"action":"call","name":"get_status","args":[' + b"[" * 500 + b"]" * 500
                  + b'],"kwargs":{}}', "nested"),
    "very deep list": (b'{"action":"call","name":"get_status","args":[' + b"[" * 100_000
                       + b"]" * 100_000 + b'],"kwargs":{}}', "nested"),
    "array bomb": (b'{"action":"call","name":"get_status","args":[{"__jsonclass__":["nparray",'
                   b'[[100000,100000,100000],"<f8",""]]}],"kwargs":{}}', "numpy array"),
    "object array": (b'{"action":"call","name":"get_status","args":[{"__jsonclass__":["nparray",'
                     b'[[1],"|O","AAAAAAAAAAA="]]}],"kwargs":{}}', "dtype"),
    "set args": (b'{"action":"call","name":"get_status","args":{"__jsonclass__":["set",[[1]]]},'
                 b'"kwargs":{}}', "'args' must be a tuple or a list"),
}


@pytest.mark.parametrize("name", HOSTILE_REQUESTS)
async def test_hostile_request_refused_in_one_line_and_master_stays_live(lab, name):
    line, what = HOSTILE_REQUESTS[name]

    async def main():
        async with master_client(lab) as (master, client):
            await assert_live(client)
            rss = rss_bytes()
            sock, f = await asyncio.to_thread(raw_rpc, master.port("control"))
            try:
                for _ in range(3):
                    sent = asyncio.to_thread(lambda: (sock.sendall(line + b"\n"), f.readline())[1])
                    reply_task = asyncio.ensure_future(sent)
                    await assert_live(client)  # while the hostile line is being handled
                    reply = pyon.decode(await reply_task)
                    assert reply["status"] == "failed"
                    message = reply["exception"]["message"]
                    assert what in message, message
                    assert "\n" not in message and len(message) < 300
                    assert "too large to convert" not in message
            finally:
                f.close()
                sock.close()
            await assert_live(client)
            assert rss_bytes() - rss < 64 * 1024 * 1024
    await main()


async def idle_connections(port, count, sources):
    """count connections that never send a byte, spread over the source addresses."""
    conns = []
    for i in range(count):
        conns.append(await asyncio.open_connection(
            HOST, port, local_addr=(sources[i % len(sources)], 0)))
    return conns


async def close_all(conns):
    for _, writer in conns:
        writer.close()
    for _, writer in conns:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_500_idle_connections_do_not_stop_other_clients_and_are_dropped(lab):
    async def main():
        limits = ConnectionLimits(handshake_timeout=3.0)
        async with master_client(lab, connection_limits=limits) as (master, client):
            await assert_live(client)
            fds, rss = open_fds(), rss_bytes()
            sources = [f"127.0.0.{n}" for n in range(2, 12)]  # 50 per address, under 64
            port = master.port("control")
            conns = await idle_connections(port, 500, sources)
            server = master.servers["control"][0]
            await wait_until(lambda: server.connection_count() >= 501)
            await assert_live(client)
            # a fresh client completes its handshake and calls while the 500 wait
            fresh = AsyncClient()
            async with asyncio.timeout(LIVENESS):
                await fresh.connect_rpc(HOST, port, "schedule")
                await fresh.get_status()
            fresh.close_rpc()
            # every idle one is closed by the server after the handshake timeout
            async with asyncio.timeout(limits.handshake_timeout + 10):
                for reader, _ in conns:
                    assert await reader.read() == b""
            await close_all(conns)
            await wait_until(lambda: server.connection_count() == 1)
            await assert_live(client)
            await wait_until(lambda: open_fds() <= fds + 5)
            assert rss_bytes() - rss < 64 * 1024 * 1024
    await main()


async def test_per_peer_and_total_limits_refuse_with_rate_limited_log(lab, caplog):
    async def main():
        limits = ConnectionLimits(handshake_timeout=30.0, max_per_peer=8, max_total=20)
        async with master_client(lab, connection_limits=limits) as (master, client):
            port = master.port("control")
            server = master.servers["control"][0]
            held = await idle_connections(port, 8, ["127.0.0.2"])
            await wait_until(lambda: server.connection_count("127.0.0.2") == 8)
            with caplog.at_level(logging.WARNING, logger="labpipe.protocol.server"):
                over = await idle_connections(port, 40, ["127.0.0.2"])
                async with asyncio.timeout(10):
                    for reader, _ in over:  # each closed at once, long before the timeout
                        assert await reader.read() == b""
                await assert_live(client)  # another peer still works
                others = await idle_connections(port, 11, ["127.0.0.3", "127.0.0.3", "127.0.0.5"])
                await wait_until(lambda: server.connection_count() == limits.max_total)
                total_over = await idle_connections(port, 5, ["127.0.0.4"])
                async with asyncio.timeout(10):
                    for reader, _ in total_over:
                        assert await reader.read() == b""
            refusals = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
            assert 1 <= len(refusals) <= 2, refusals  # not one line per refused connection
            assert "that peer holds 8 connections" in refusals[0]
            assert all("\n" not in m for m in refusals)
            await close_all(held + over + others + total_over)
            await wait_until(lambda: server.connection_count() == 1)
            await assert_live(client)
    await main()


async def test_handshake_timeout_on_every_port_and_slow_banner_still_served(lab):
    async def main():
        limits = ConnectionLimits(handshake_timeout=1.5)
        async with master_client(lab, connection_limits=limits) as (master, client):
            for channel in ["control", "notify", "logging", "broadcast"]:
                reader, writer = await asyncio.open_connection(HOST, master.port(channel))
                if channel != "logging":  # banner only: the name line never comes
                    banner = {"control": b"ARTIQ pc_rpc\n", "notify": b"ARTIQ sync_struct\n",
                              "broadcast": b"ARTIQ broadcast\n"}[channel]
                    writer.write(banner)
                async with asyncio.timeout(10):
                    while await reader.read(65536):
                        pass  # the control port answers the banner first
                writer.close()
            # a subscriber past its handshake is not dropped by the timeout: it still
            # gets a mod made after the timeout has passed
            received = []
            sub = Subscriber("datasets", lambda s: s, received.append)
            await sub.connect(HOST, master.port("notify"))
            await wait_until(lambda: received)
            past_timeout = time.monotonic() + limits.handshake_timeout + 0.5
            await wait_until(lambda: time.monotonic() > past_timeout)
            await master.dataset_db.set("after_timeout", 1)
            await wait_until(lambda: "after_timeout" in sub.target)
            await sub.close()
            await assert_live(client)
    await main()


async def test_unencodable_notifier_content_closes_that_subscriber_with_one_line(caplog):
    async def main():
        poisoned = Notifier({"bad": object()})
        healthy = Notifier({"ok": 1})
        publisher = Publisher({"poisoned": poisoned, "healthy": healthy})
        await publisher.start(HOST, 0)
        try:
            with caplog.at_level(logging.DEBUG):
                for _ in range(3):
                    reader, writer = await asyncio.open_connection(HOST, publisher.port)
                    writer.write(b"ARTIQ sync_struct\npoisoned\n")
                    async with asyncio.timeout(5):
                        assert await reader.read() == b""
                    writer.close()
            lines = [r for r in caplog.records if "cannot encode" in r.getMessage()]
            assert len(lines) == 3
            assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)
            got = []
            sub = Subscriber("healthy", lambda s: s, got.append)
            await sub.connect(HOST, publisher.port)
            await wait_until(lambda: got)
            healthy["ok"] = 2
            await wait_until(lambda: sub.target == {"ok": 2})
            await sub.close()
        finally:
            await publisher.stop()
    await main()


async def test_deepest_accepted_value_reaches_every_subscriber(lab):
    """A value at the door's depth limit (``params.PyonValue``, stricter than what PYON
    decodes) is accepted and can be published to a new subscriber."""
    async def main():
        async with running_master(lab) as master:
            value = "leaf"
            for i in range(PyonValue().max_depth):
                value = [value]
            client = AsyncClient()
            await client.connect_rpc(HOST, master.port("control"), "dataset_db")
            try:
                await client.set("deep", value)
                with pytest.raises(ValueError, match="nested too deep"):
                    await client.set("deeper", [value])
            finally:
                client.close_rpc()
            got = []
            sub = Subscriber("datasets", lambda s: s, got.append)
            await sub.connect(HOST, master.port("notify"))
            await wait_until(lambda: got)
            assert sub.target["deep"][1] == value and "deeper" not in sub.target
            await sub.close()
    await main()


EMFILE_SERVER = r"""
import asyncio, logging, resource, sys
from labpipe.protocol.rpc import Server
from labpipe.protocol.server import ConnectionLimits

class Target:
    def ping(self):
        return "pong"

async def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s:%(name)s:%(message)s")
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
    server = Server({"t": Target()}, limits=ConnectionLimits(
        handshake_timeout=60, max_per_peer=1000, max_total=1000))
    await server.start("127.0.0.1", 0)
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_accept_loop_survives_emfile_with_one_log_line(tmp_path):
    """A server out of file descriptors logs one line, not one per retry, and serves
    again once connections are closed."""
    import subprocess
    import sys
    from labpipe.protocol.rpc import Client

    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER], stdout=subprocess.PIPE,
                                stderr=err, text=True)
    socks = []
    try:
        port = int(proc.stdout.readline())
        for _ in range(80):  # more than the 48 descriptors the server may hold
            s = socket.create_connection((HOST, port), timeout=10)
            s.sendall(b"ARTIQ pc_rpc\n")
            socks.append(s)
        deadline = time.monotonic() + 20
        while "cannot accept" not in errors.read_text():
            assert time.monotonic() < deadline, errors.read_text()
            time.sleep(0.05)
        first = time.monotonic()
        while time.monotonic() < first + 3.5:  # asyncio retries about once a second
            assert proc.poll() is None
            time.sleep(0.1)
        text = errors.read_text()
        assert text.count("cannot accept") == 1, text
        assert "Traceback" not in text and "Too many open files" in text
        for s in socks:
            s.close()
        socks.clear()
        deadline = time.monotonic() + 20
        while True:  # serving again once the descriptors are free
            try:
                with Client(HOST, port, "t", timeout=5) as c:
                    assert c.ping() == "pong"
                break
            except (OSError, ConnectionError):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert proc.poll() is None
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
