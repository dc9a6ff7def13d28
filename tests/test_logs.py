"""Tests of labpipe.protocol.logs: LogServer, LogForwarder, LogBroadcastHandler."""

import asyncio
import contextlib
import logging
import random
import socket
import sys
import threading

import pytest

from labpipe.protocol.broadcast import Broadcaster, Receiver
from labpipe.protocol.logs import (LogBroadcastHandler, LogForwarder, LogLine, LogServer,
                                   format_lines, parse_line)

from conftest import async_test, raw_exchange, wait_until

HOST = "127.0.0.1"


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.NOTSET)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def captured(name):
    """Collect the records reaching logger name (and keep them from going further up)."""
    target = logging.getLogger(name)
    handler = Capture()
    saved = target.level, target.propagate
    target.setLevel(1)
    target.propagate = False
    target.addHandler(handler)
    try:
        yield handler.records
    finally:
        target.removeHandler(handler)
        target.level, target.propagate = saved


def summary(records):
    return [(r.source, r.levelno, r.name, r.getMessage()) for r in records]


# --- the line format --------------------------------------------------------------------

def test_parse_and_format_lines():
    assert parse_line("worker(3,Scan):20:a.b:x: y :z") == LogLine(
        "worker(3,Scan)", 20, "a.b", "x: y :z")
    assert parse_line("ctl:WARNING::") == LogLine("ctl", 30, "", "")
    for bad in ["", "no colons", "a:20:b", ":20:n:m", "+src:20:n:m", "s:LOUD:n:m",
                "s:-5:n:m", "s:1e3:n:m", "s:20x:n:m", "s:\u0663:n:m"]:
        assert parse_line(bad) is None, bad
    entry = LogLine("worker(1,X)", 40, "weird:name\n", "first\nsecond\n+third")
    text = format_lines(entry)
    assert text == ("worker(1,X):40:weird_name_:first\n"
                    "+second\n"
                    "++third\n")


def test_forwarder_refuses_a_source_that_cannot_be_parsed():
    for source in ["", "a:b", "a\nb", "+x"]:
        with pytest.raises(ValueError):
            LogForwarder(HOST, 1, source)


# --- LogServer --------------------------------------------------------------------------

@async_test
async def test_lines_become_records_with_source():
    server = LogServer()
    await server.start(HOST, 0)
    with captured("lptest") as records:
        await raw_exchange(server.port, (
            b"ARTIQ logging\n"
            b"worker(1,Scan):30:lptest.scan:voltage: 3 V\n"
            b"ctlmgr(host):ERROR:lptest:failed\n"
            b"+Traceback (most recent call last):\n"
            b"+  File \"x.py\", line 1\n"
            b"+ValueError: boom\n"
            b"worker(2,Other):5:lptest.low:custom level\n"
            b"worker(2,Other):DEBUG:lptest.low:last, emitted at the end of the stream\n"))
        await wait_until(lambda: len(records) == 4)
    assert summary(records) == [
        ("worker(1,Scan)", 30, "lptest.scan", "voltage: 3 V"),
        ("ctlmgr(host)", 40, "lptest",
         'failed\nTraceback (most recent call last):\n  File "x.py", line 1\n'
         "ValueError: boom"),
        ("worker(2,Other)", 5, "lptest.low", "custom level"),
        ("worker(2,Other)", 10, "lptest.low", "last, emitted at the end of the stream"),
    ]
    assert records[1].levelname == "ERROR"
    await server.stop()


@async_test
async def test_a_pending_record_is_emitted_after_a_silence():
    server = LogServer(flush_delay=0.01)
    await server.start(HOST, 0)
    reader, writer = await asyncio.open_connection(HOST, server.port)
    with captured("lpquiet") as records:
        writer.write(b"ARTIQ logging\nw:INFO:lpquiet:one\n+two\n")
        await wait_until(lambda: records)  # the connection is still open
        assert summary(records) == [("w", 20, "lpquiet", "one\ntwo")]
    writer.close()
    await writer.wait_closed()
    await server.stop()


@async_test
async def test_bad_lines_are_skipped_and_logged_once():
    server = LogServer(max_message_length=100)
    await server.start(HOST, 0)
    with captured("lpbad") as records, captured("labpipe.protocol.logs") as own:
        await raw_exchange(server.port, (
            b"ARTIQ logging\n"
            b"+continuation without a record\n"
            b"no colons at all\n"
            b"w:NOTALEVEL:lpbad:m\n"
            b"\xff\xfe invalid utf-8\n"
            b"w:INFO:lpbad:kept\n"
            b"w:INFO:lpbad:long\n" + b"+" + b"z" * 200 + b"\n+more\n"
            b"w:INFO:lpbad:also kept\n"))
        await wait_until(lambda: len(records) == 3)
        await wait_until(lambda: len(own) == 2)
    assert [r.getMessage() for r in records] == [
        "kept", "long\n" + "z" * 95 + " [truncated]", "also kept"]
    assert all(r.levelno == logging.DEBUG for r in own)
    assert "continuation without a record" in own[0].getMessage()
    assert "4 bad lines" in own[1].getMessage()
    await server.stop()


@async_test
async def test_fuzz_then_serves_a_well_behaved_client():
    server = LogServer(max_line_length=1024)
    await server.start(HOST, 0)
    rng = random.Random(7)
    payloads = [
        b"",
        b"ARTIQ sync_struct\nw:INFO:lpfuzz:wrong banner\n",
        b"\xff\xfe\n",
        b"L" * 5000 + b"\n",
        b"ARTIQ logging\nw:INFO:lpfuzz:" + b"x" * 5000 + b"\n",
        b"ARTIQ logging\n" + b"\x00:\x01:\x02:\x03\n" * 20,
        b"ARTIQ logging\nw:INFO:lpfuzz:partial line, no newline",
    ] + [b"ARTIQ logging\n" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 900)))
         for _ in range(30)]
    with captured("lpfuzz") as records:
        for payload in payloads:
            await raw_exchange(server.port, payload)
        await raw_exchange(server.port, b"ARTIQ logging\nw:INFO:lpfuzz:well behaved\n")
        await wait_until(lambda: [r.getMessage() for r in records] == ["well behaved"])
    await server.stop()


# --- LogForwarder -----------------------------------------------------------------------

def make_record(name, level, msg, exc_info=None):
    return logging.LogRecord(name, level, __file__, 1, msg, (), exc_info)


@async_test
async def test_forwarder_round_trip():
    server = LogServer()
    await server.start(HOST, 0)
    forwarder = LogForwarder(HOST, server.port, "worker(5,Fit)")
    try:
        raise ValueError("bad fit")
    except ValueError:
        exc_info = sys.exc_info()
    with captured("lpfwd") as records:
        forwarder.handle(make_record("lpfwd.fit", logging.INFO, "chi2: 1.2"))
        forwarder.handle(make_record("lpfwd", logging.ERROR, "fit failed", exc_info))
        forwarder.handle(make_record("lpfwd.fit", logging.DEBUG, "é ✓"))
        await asyncio.to_thread(forwarder.close)  # sends what is queued, then disconnects
        await wait_until(lambda: len(records) == 3)
    assert summary(records)[0] == ("worker(5,Fit)", 20, "lpfwd.fit", "chi2: 1.2")
    source, level, name, message = summary(records)[1]
    assert (source, level, name) == ("worker(5,Fit)", 40, "lpfwd")
    assert message.startswith("fit failed\nTraceback (most recent call last):\n")
    assert message.endswith("ValueError: bad fit")
    assert summary(records)[2] == ("worker(5,Fit)", 10, "lpfwd.fit", "é ✓")
    assert forwarder.dropped == 0
    await server.stop()


@async_test
async def test_forwarder_drops_while_the_server_is_down_and_reconnects():
    server = LogServer()
    await server.start(HOST, 0)
    port = server.port
    forwarder = LogForwarder(HOST, port, "w", retry_interval=0.02)
    with captured("lpre") as records:
        forwarder.handle(make_record("lpre", logging.INFO, "first"))
        await wait_until(lambda: len(records) == 1)
        await server.stop()
        for i in range(200):
            forwarder.handle(make_record("lpre", logging.INFO, f"lost {i}"))
        await asyncio.to_thread(forwarder.flush)
        assert forwarder.dropped > 0
        server = LogServer()
        await server.start(HOST, port)

        async def delivered():
            while not any(r.getMessage() == "back" for r in records):
                forwarder.handle(make_record("lpre", logging.INFO, "back"))
                await asyncio.sleep(0.01)
        async with asyncio.timeout(5):
            await delivered()
    await asyncio.to_thread(forwarder.close)
    await server.stop()


def test_forwarder_queue_is_bounded():
    forwarder = LogForwarder(HOST, 1, "w", queue_limit=10)
    release = threading.Event()
    batches = []

    def stuck_send(data):  # a network that does not move until the test releases it
        batches.append(data)
        release.wait()
        return True

    def log_all():
        for i in range(1000):
            forwarder.handle(make_record("lpq", logging.INFO, str(i)))

    forwarder._send = stuck_send
    caller = threading.Thread(target=log_all)
    try:
        caller.start()
        caller.join(10)  # a caller waiting for the stuck network would hang here
        assert not caller.is_alive(), "handle() waited for the network"
    finally:
        release.set()
    forwarder.close()
    sent = b"".join(batches).count(b"\n")
    assert sent + forwarder.dropped == 1000
    assert sent <= 2 * 10  # one batch in the sender's hands, one queue


def test_forwarder_drops_when_it_cannot_connect():
    with socket.socket() as sock:  # a port where nobody listens
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    forwarder = LogForwarder(HOST, port, "w", queue_limit=10)
    for i in range(1000):
        forwarder.handle(make_record("lpq", logging.INFO, str(i)))
    forwarder.close()
    # at most one queue-full batch was in the sender's hands; all the rest were refused
    assert forwarder.dropped == 1000


# --- LogBroadcastHandler ----------------------------------------------------------------

@async_test
async def test_broadcast_handler_to_receiver():
    broadcaster = Broadcaster()
    await broadcaster.start(HOST, 0)
    messages = []
    receiver = Receiver("log", messages.append)
    await receiver.connect(HOST, broadcaster.port)
    await wait_until(lambda: broadcaster.receiver_count("log") == 1)
    handler = LogBroadcastHandler(broadcaster)
    server = LogServer()
    await server.start(HOST, 0)
    forwarder = LogForwarder(HOST, server.port, "worker(9,Remote)")
    with captured("lpbc") as records:
        logging.getLogger("lpbc").addHandler(handler)
        logging.getLogger("lpbc.local").warning("local %d", 1)
        logging.getLogger("lpbc").info("with source", extra={"source": "ctl(x)"})
        thread = threading.Thread(target=logging.getLogger("lpbc.thread").error,
                                  args=("from a thread",))
        thread.start()
        await asyncio.to_thread(thread.join)
        await wait_until(lambda: len(messages) == 3)
        forwarder.handle(make_record("lpbc.remote", logging.ERROR, "remote\nline"))
        await asyncio.to_thread(forwarder.close)
        await wait_until(lambda: len(messages) == 4)
        logging.getLogger("lpbc").removeHandler(handler)
    assert len(records) == 4
    assert [m[:2] + m[3:] for m in messages] == [
        (30, "master", "lpbc.local:local 1"),
        (20, "ctl(x)", "lpbc:with source"),
        (40, "master", "lpbc.thread:from a thread"),
        (40, "worker(9,Remote)", "lpbc.remote:remote\nline"),
    ]
    assert all(type(m) is tuple and m[2] == r.created for m, r in zip(messages, records))
    await receiver.close()
    await server.stop()
    await broadcaster.stop()


def test_broadcast_handler_never_raises_nor_recurses(monkeypatch):
    monkeypatch.setattr(logging, "raiseExceptions", False)
    target = logging.getLogger("lprec")

    class Chatty:
        """A broadcaster that logs while broadcasting, through the same handler."""
        def __init__(self):
            self.sent = []

        def broadcast(self, channel, obj):
            self.sent.append((channel, obj[3]))
            target.warning("logged while broadcasting")

    class Broken:
        def broadcast(self, channel, obj):
            raise RuntimeError("broadcaster failure")

    with captured("lprec") as records:
        chatty = Chatty()
        handler = LogBroadcastHandler(chatty, channel="mylog")
        target.addHandler(handler)
        target.info("hello")
        target.removeHandler(handler)
        assert chatty.sent == [("mylog", "lprec:hello")]
        assert [r.getMessage() for r in records] == ["hello", "logged while broadcasting"]

        handler = LogBroadcastHandler(Broken())
        target.addHandler(handler)
        target.error("does not raise")
        target.error("%d args mismatch", "x")  # a formatting error does not raise either
        target.removeHandler(handler)


@async_test
async def test_dropping_a_slow_receiver_does_not_loop():
    # Dropping a receiver logs a warning, which reaches the handler while it is
    # broadcasting: it must be logged locally and not broadcast again.
    broadcaster = Broadcaster(queue_limit=1)
    await broadcaster.start(HOST, 0)
    reader, writer = await asyncio.open_connection(HOST, broadcaster.port)
    writer.write(b"ARTIQ broadcast\nlog\n")
    await wait_until(lambda: broadcaster.receiver_count("log") == 1)
    broadcast = broadcaster.broadcast
    sent = []
    broadcaster.broadcast = lambda channel, obj: (sent.append(obj[3]), broadcast(channel, obj))
    handler = LogBroadcastHandler(broadcaster)
    with captured("lploop") as records, captured("labpipe.protocol.sync") as warnings:
        logging.getLogger("labpipe.protocol.sync").addHandler(handler)
        logging.getLogger("lploop").addHandler(handler)
        for i in range(3):  # no await: the queue of one overflows on the second
            logging.getLogger("lploop").info("m%d", i)
        logging.getLogger("labpipe.protocol.sync").removeHandler(handler)
        logging.getLogger("lploop").removeHandler(handler)
    assert len(records) == 3
    assert len(warnings) == 1 and "cannot keep up" in warnings[0].getMessage()
    assert sent == ["lploop:m0", "lploop:m1", "lploop:m2"]
    await wait_until(lambda: broadcaster.receiver_count("log") == 0)
    writer.close()
    await broadcaster.stop()
