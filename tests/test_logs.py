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
from labpipe.protocol.logs import (MAX_FIELD_LENGTH, REMOTE_LOGGER, LogBroadcastHandler,
                                   LogForwarder, LogLine, LogServer, format_lines,
                                   parse_line, peer_label, peer_source)

from conftest import raw_exchange, wait_until

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

def test_parse_lines_as_sipyco():
    assert parse_line("worker(3,Scan):INFO:a.b:x: y :z") == LogLine(
        "worker(3,Scan)", 20, "a.b", "x: y :z")
    assert parse_line("ctl:WARNING::") == LogLine("ctl", 30, "", "")
    assert parse_line("ctl:WARN:n:m").level == 30
    assert parse_line("ctl:TRACE:n:m").level == 5
    assert parse_line("ctl:ERROR<3>:n:first") == LogLine("ctl", 40, "n", "first", 3)
    assert parse_line("ctl:ERROR<1>:n:one").lines == 1
    assert parse_line("ctl:ERROR<0>:n:one").lines == 1
    assert parse_line("c:INFO<" + "9" * 5000 + ">:n:m").lines == 10 ** 9  # capped later
    # not records: print lines, INFO, logger "print", text after the first ':'
    for line, source, message in [
            ("no colons", "", "no colons"), ("", "", ""), ("a:20:b:c", "a", "20:b:c"),
            ("s:LOUD:n:m", "s", "LOUD:n:m"), ("s:info:n:m", "s", "info:n:m"),
            ("s:INFO:n", "s", "INFO:n"), ("s:INFO<x>:n:m", "s", "INFO<x>:n:m"),
            ("s:INFO:a:b:c", None, None)]:
        entry = parse_line(line)
        if source is None:
            assert (entry.name, entry.message) == ("a", "b:c")
            continue
        assert entry == LogLine(source, logging.INFO, "print", message), line


def test_format_lines_as_sipyco_multiline_formatter():
    entry = LogLine("worker(1,X)", 40, "weird:name\n", "first\nsecond\n+third: x")
    assert format_lines(entry) == ("worker(1,X):ERROR<3>:weird_name_:first\n"
                                   "second\n"
                                   "+third: x\n")
    assert format_lines(LogLine("s", 20, "n", "one")) == "s:INFO:n:one\n"
    assert [format_lines(LogLine("s", level, "n", "m")).split(":")[1]
            for level in (50, 45, 40, 30, 25, 20, 15, 10, 5, 1)] == [
        "CRITICAL", "ERROR", "ERROR", "WARNING", "INFO", "INFO", "DEBUG", "DEBUG",
        "TRACE", "TRACE"]
    entry = LogLine("s", 40, "n", "a\nb")
    parsed = parse_line(format_lines(entry).split("\n")[0])
    assert (parsed.source, parsed.level, parsed.name, parsed.lines) == ("s", 40, "n", 2)


def test_forwarder_refuses_a_source_that_cannot_be_parsed():
    for source in ["", "a:b", "a\nb", "a\rb"]:
        with pytest.raises(ValueError):
            LogForwarder(HOST, 1, source)


def test_peer_sources():
    peer = "127.0.0.1:5000"
    assert peer_source("ctlmgr(lab1)", peer) == "ctlmgr(lab1)"
    assert peer_source("", peer) == peer
    for forged in ["master", "MASTER", " master ", "worker(12,Scan)", "Worker (1,x"]:
        assert peer_source(forged, peer) == forged + "@" + peer
    assert peer_source("a\x1b[31mb", peer) == "a\ufffd[31mb"
    assert len(peer_source("x" * 100_000, peer)) == MAX_FIELD_LENGTH
    assert peer_label(("::1", 5, 0, 0)) == "[::1]:5"
    assert peer_label(("127.0.0.1", 5)) == "127.0.0.1:5"


# --- LogServer --------------------------------------------------------------------------

async def test_lines_become_records_with_source():
    server = LogServer()
    await server.start(HOST, 0)
    with captured(REMOTE_LOGGER) as records:
        await raw_exchange(server.port, (
            b"ARTIQ logging\n"
            b"worker1:WARNING:lptest.scan:voltage: 3 V\n"
            b"ctlmgr(host):ERROR<4>:lptest:failed\n"
            b"Traceback (most recent call last):\n"
            b"  File \"x.py\", line 1\n"
            b"ValueError: boom: it:looks:like:a:record\n"
            b"ctl:TRACE:lptest.low:custom level\n"
            b"just some output\n"
            b"ctl: printed: with colons\n"
            b"ctl:DEBUG:lptest.low:last\n"))
        await wait_until(lambda: len(records) == 6)
    peer = records[0].peer
    assert peer.startswith("127.0.0.1:")
    assert summary(records) == [
        ("worker1", 30, "lptest.scan", "voltage: 3 V"),
        ("ctlmgr(host)", 40, "lptest",
         'failed\nTraceback (most recent call last):\n  File "x.py", line 1\n'
         "ValueError: boom: it:looks:like:a:record"),
        ("ctl", 5, "lptest.low", "custom level"),
        (peer, 20, "print", "just some output"),
        ("ctl", 20, "print", " printed: with colons"),
        ("ctl", 10, "lptest.low", "last"),
    ]
    assert records[1].levelname == "ERROR" and records[2].levelname == "TRACE"
    assert all(r.peer == peer for r in records)
    await server.stop()


async def test_a_record_whose_lines_never_come_is_emitted_after_a_timeout():
    server = LogServer(continuation_timeout=0.05)
    await server.start(HOST, 0)
    reader, writer = await asyncio.open_connection(HOST, server.port)
    with captured(REMOTE_LOGGER) as records:
        writer.write(b"ARTIQ logging\nw:INFO<1000000>:lpquiet:one\ntwo\n")
        await wait_until(lambda: records)  # the connection is still open
        assert summary(records) == [
            ("w", 20, "lpquiet", "one\ntwo\n[incomplete: 2 of 1000000 lines arrived]")]
        writer.write(b"w:INFO:lpquiet:afresh\n")  # the next line starts afresh
        await wait_until(lambda: len(records) == 2)
        assert records[1].getMessage() == "afresh"
    writer.close()
    await writer.wait_closed()
    await server.stop()


async def test_bounds_on_lines_messages_and_announced_lines():
    server = LogServer(max_line_length=1024, max_message_length=100, max_record_lines=3)
    await server.start(HOST, 0)
    with captured(REMOTE_LOGGER) as records:
        await raw_exchange(server.port, (
            b"ARTIQ logging\n"
            b"w:INFO:lpbig:" + b"x" * 5000 + b"\n"          # cut, the connection stays
            b"w:INFO<2>:lpbig:long\n" + b"z" * 200 + b"\n"  # message cut at 100
            b"w:INFO<5>:lpbig:a\nb\nc\nd\ne\n"               # 3 lines kept, 2 left
            b"\xff\xfe:INFO:lpbig:not utf-8\n"
            b"w:INFO:lpbig:still served\n"))
        await wait_until(lambda: len(records) == 7)
    messages = [r.getMessage() for r in records]
    assert messages[0] == "x" * 100 + " [truncated]"
    assert messages[1] == "long\n" + "z" * 95 + " [truncated]"
    assert messages[2] == "a\nb\nc\n[cut: 5 lines announced, 3 kept]"
    assert [(r.name, r.getMessage()) for r in records[3:5]] == [("print", "d"),
                                                               ("print", "e")]
    assert records[5].source == "\ufffd\ufffd" and messages[5] == "not utf-8"
    assert messages[6] == "still served"
    await server.stop()


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
        b"ARTIQ logging\nw:INFO<99999>:lpfuzz:never ends\n",
        b"ARTIQ logging\nw:INFO:lpfuzz:partial line, no newline",
    ] + [b"ARTIQ logging\n" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 900)))
         for _ in range(30)]
    with captured(REMOTE_LOGGER) as records:
        for payload in payloads:
            await raw_exchange(server.port, payload)
        await raw_exchange(server.port, b"ARTIQ logging\nw:INFO:lpfuzz:well behaved\n")
        await wait_until(lambda: any(r.getMessage() == "well behaved" for r in records))
    assert not any(r.getMessage() == "wrong banner" for r in records)
    await server.stop()


# --- LogForwarder -----------------------------------------------------------------------

def make_record(name, level, msg, exc_info=None):
    return logging.LogRecord(name, level, __file__, 1, msg, (), exc_info)


async def test_forwarder_round_trip():
    server = LogServer()
    await server.start(HOST, 0)
    forwarder = LogForwarder(HOST, server.port, "ctl(5,Fit)")
    try:
        raise ValueError("bad fit")
    except ValueError:
        exc_info = sys.exc_info()
    with captured(REMOTE_LOGGER) as records:
        forwarder.handle(make_record("lpfwd.fit", logging.INFO, "chi2: 1.2"))
        forwarder.handle(make_record("lpfwd", logging.ERROR, "fit failed", exc_info))
        forwarder.handle(make_record("lpfwd.fit", logging.DEBUG, "é ✓"))
        await asyncio.to_thread(forwarder.close)  # sends what is queued, then disconnects
        await wait_until(lambda: len(records) == 3)
    assert summary(records)[0] == ("ctl(5,Fit)", 20, "lpfwd.fit", "chi2: 1.2")
    source, level, name, message = summary(records)[1]
    assert (source, level, name) == ("ctl(5,Fit)", 40, "lpfwd")
    assert message.startswith("fit failed\nTraceback (most recent call last):\n")
    assert message.endswith("ValueError: bad fit")
    assert summary(records)[2] == ("ctl(5,Fit)", 10, "lpfwd.fit", "é ✓")
    assert forwarder.dropped == 0
    await server.stop()


async def test_forwarder_drops_while_the_server_is_down_and_reconnects():
    server = LogServer()
    await server.start(HOST, 0)
    port = server.port
    forwarder = LogForwarder(HOST, port, "w", retry_interval=0.02)
    with captured(REMOTE_LOGGER) as records:
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
    forwarder = LogForwarder(HOST, server.port, "ctl(9)")
    with captured("lpbc") as records, captured(REMOTE_LOGGER) as remote:
        logging.getLogger("lpbc").addHandler(handler)
        logging.getLogger(REMOTE_LOGGER).addHandler(handler)
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
        logging.getLogger(REMOTE_LOGGER).removeHandler(handler)
    assert len(records) == 3 and len(remote) == 1
    records += remote
    assert [m[:2] + m[3:] for m in messages] == [
        (30, "master", "lpbc.local:local 1"),
        (20, "ctl(x)", "lpbc:with source"),
        (40, "master", "lpbc.thread:from a thread"),
        (40, "ctl(9)", "lpbc.remote:remote\nline"),
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
