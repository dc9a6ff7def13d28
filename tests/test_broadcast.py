"""Tests of labpipe.protocol.broadcast: Broadcaster and Receiver."""

import asyncio
import random
import socket
import threading

import pytest

from labpipe.protocol import pyon
from labpipe.protocol.broadcast import Broadcaster, Receiver

from conftest import drain_until_closed, raw_exchange, wait_until

HOST = "127.0.0.1"


class Listener:
    """A Receiver with its messages recorded."""

    def __init__(self, channel):
        self.messages = []
        self.disconnects = 0
        self.receiver = Receiver(channel, self.messages.append, self._disconnected)

    def _disconnected(self):
        self.disconnects += 1


async def listen(broadcaster, *channels):
    """Connect one Listener per channel and wait until the broadcaster counts them."""
    listeners = [Listener(channel) for channel in channels]
    expected = {channel: broadcaster.receiver_count(channel) + channels.count(channel)
                for channel in channels}
    for listener in listeners:
        await listener.receiver.connect(HOST, broadcaster.port)
    await wait_until(lambda: all(broadcaster.receiver_count(c) == n
                                 for c, n in expected.items()))
    return listeners


async def test_several_receivers_and_channel_isolation():
    b = Broadcaster()
    await b.start(HOST, 0)
    log1, log2, ccb = await listen(b, "log", "log", "ccb")
    logs = [(20, "master", 1.5, "a:hello"), (40, "worker(3,Scan)", 2.0, "b:multi\nline")]
    ccbs = [{"service": "create_applet", "args": ["x", "cmd"], "kwargs": {"group": None}}]
    b.broadcast("log", logs[0])
    b.broadcast("ccb", ccbs[0])
    b.broadcast("nobody", "dropped silently")
    b.broadcast("log", logs[1])
    await wait_until(lambda: len(log1.messages) == len(log2.messages) == 2
                     and len(ccb.messages) == 1)
    assert log1.messages == log2.messages == logs
    assert all(type(m) is tuple for m in log1.messages)
    assert ccb.messages == ccbs
    for listener in (log1, log2, ccb):
        await listener.receiver.close()
    await wait_until(lambda: b.receiver_count("log") == b.receiver_count("ccb") == 0)
    assert b._outboxes == {}  # channels without receivers are forgotten
    await b.stop()
    assert log1.disconnects == 0


async def test_unencodable_object_raises_only_when_someone_listens():
    b = Broadcaster()
    await b.start(HOST, 0)
    b.broadcast("log", object())  # nobody listens: nothing is encoded
    (listener,) = await listen(b, "log")
    with pytest.raises(TypeError):
        b.broadcast("log", object())
    b.broadcast("log", "still fine")
    await wait_until(lambda: listener.messages == ["still fine"])
    await listener.receiver.close()
    await b.stop()


async def test_broadcast_from_another_thread():
    b = Broadcaster()
    await b.start(HOST, 0)
    (listener,) = await listen(b, "ccb")
    thread = threading.Thread(target=lambda: [b.broadcast("ccb", i) for i in range(100)])
    thread.start()
    await asyncio.to_thread(thread.join)
    await wait_until(lambda: len(listener.messages) == 100)
    assert listener.messages == list(range(100))
    await listener.receiver.close()
    await b.stop()


async def test_disconnect_cb_when_the_server_stops():
    b = Broadcaster()
    await b.start(HOST, 0)
    (listener,) = await listen(b, "log")
    await b.stop()
    await wait_until(lambda: listener.disconnects == 1)
    await listener.receiver.close()
    assert listener.disconnects == 1


async def test_slow_receiver_is_dropped_and_others_still_receive():
    limit = 20
    b = Broadcaster(queue_limit=limit, queue_bytes=1 << 20)
    await b.start(HOST, 0)
    (good,) = await listen(b, "log")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((HOST, b.port))
    slow.sendall(b"ARTIQ broadcast\nlog\n")  # and never read
    try:
        await wait_until(lambda: b.receiver_count("log") == 2)
        payload = "y" * 10_000
        for i in range(3000):
            b.broadcast("log", (i, payload))
            assert all(n <= limit and size <= 1 << 20 for n, size in b.backlogs("log"))
            if i % 5 == 0:
                await wait_until(lambda: len(good.messages) == i + 1)
            if b.receiver_count("log") == 1:
                break
        else:
            pytest.fail("the slow receiver was never dropped")
        assert await asyncio.to_thread(drain_until_closed, slow)
        b.broadcast("log", "after")
        await wait_until(lambda: good.messages[-1:] == ["after"])
        assert [m[0] for m in good.messages[:-1]] == list(range(i + 1))
    finally:
        slow.close()
    await good.receiver.close()
    await b.stop()


async def test_fuzz_then_serves_a_well_behaved_receiver():
    b = Broadcaster(max_line_length=1024)
    await b.start(HOST, 0)
    (watcher,) = await listen(b, "log")
    rng = random.Random(99)
    payloads = [
        b"",
        b"\n",
        b"ARTIQ sync_struct\nlog\n",
        b"\xff\xfe\n",
        b"ARTIQ broadcast\n\xc3\x28\n",
        b"ARTIQ broadcast\n" + b"c" * 5000 + b"\n",
        b"B" * 5000,
        b"ARTIQ broadcast\nlog",
        b"ARTIQ broadcast\nlog\n" + bytes(rng.randrange(256) for _ in range(5000)),
    ] + [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
         for _ in range(30)]
    for payload in payloads:
        assert await raw_exchange(b.port, payload) == b""
        b.broadcast("log", len(payload))
    await wait_until(lambda: len(watcher.messages) == len(payloads))
    assert watcher.messages == [len(p) for p in payloads]
    assert b.receiver_count("log") == 1
    (fresh,) = await listen(b, "log")
    b.broadcast("log", ("still", "serving"))
    await wait_until(lambda: fresh.messages == [("still", "serving")])
    assert pyon.encode(watcher.messages[-1]) == pyon.encode(("still", "serving"))
    await fresh.receiver.close()
    await watcher.receiver.close()
    await b.stop()
