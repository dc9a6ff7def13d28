"""The master's logging port end to end: sipyco records (multi-line tracebacks, print
lines) reach the ``log`` broadcast whole; forged sources are marked; hostile names,
lengths and line counts leave the master's memory flat."""

import asyncio
import logging
import os

import pytest

from conftest import raw_exchange, running_master, wait_until
from labpipe.protocol.broadcast import Receiver
from labpipe.protocol.logs import REMOTE_LOGGER

HOST = "127.0.0.1"


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def log_receiver(master):
    messages = []
    receiver = Receiver("log", messages.append)
    await receiver.connect(HOST, master.port("broadcast"))
    await wait_until(lambda: master.broadcaster.receiver_count("log") == 1)
    return receiver, messages


@pytest.fixture
def remote_at_info():
    """labpipe-master's root level is INFO (pytest leaves WARNING): print lines pass."""
    remote = logging.getLogger(REMOTE_LOGGER)
    saved = remote.level
    remote.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the caches
    yield
    remote.setLevel(saved)


async def test_multi_line_records_and_print_lines_reach_the_broadcast_whole(lab, remote_at_info):
    async def main():
        async with running_master(lab) as m:
            receiver, messages = await log_receiver(m)
            port = m.port("logging")
            await raw_exchange(port, (
                b"ARTIQ logging\n"
                b"ctl_a:ERROR<4>:ctl_a.driver:call failed\n"
                b"Traceback (most recent call last):\n"
                b"  File \"driver.py\", line 3, in call\n"
                b"ConnectionError: device: not responding\n"
                b"ctl_a:free text from a controller\n"
                b"ctl_a:WARNING:ctl_a:after\n"
                b"master:CRITICAL:labpipe.master:shutting down now\n"
                b"worker(1,Scan):ERROR:scan:forged run line\n"))
            await wait_until(lambda: len(messages) >= 5)
            await receiver.close()
            return messages

    messages = await main()
    assert [(level, source.partition("@")[0], text)
            for level, source, _, text in messages[:5]] == [
        (40, "ctl_a", 'ctl_a.driver:call failed\nTraceback (most recent call last):\n'
                      '  File "driver.py", line 3, in call\n'
                      'ConnectionError: device: not responding'),
        (20, "ctl_a", "print:free text from a controller"),
        (30, "ctl_a", "ctl_a:after"),
        (50, "master", "labpipe.master:shutting down now"),
        (40, "worker(1,Scan)", "scan:forged run line"),
    ]
    # a peer cannot speak as the master or as a run: its address marks the claim
    for _, source, _, _ in messages[3:5]:
        claimed, at, peer = source.partition("@")
        assert at and peer.startswith("127.0.0.1:")
    assert not any(source == "master" for _, source, _, _ in messages)


async def test_hostile_names_lengths_and_line_counts_keep_memory_flat(lab):
    async def main():
        async with running_master(lab) as m:
            port = m.port("logging")
            seen = []
            counter = logging.Handler()
            counter.emit = lambda record: seen.append(len(record.getMessage()))
            logging.getLogger(REMOTE_LOGGER).addHandler(counter)
            try:
                await raw_exchange(port, b"ARTIQ logging\nw:ERROR:warm:up\n")
                await wait_until(lambda: len(seen) == 1)
                loggers, before = len(logging.Logger.manager.loggerDict), rss()
                # a long dotted name (once a logger per prefix: 80 kB kept 1.5 GiB)
                await raw_exchange(port, b"ARTIQ logging\nw:ERROR:" + b"a." * 30_000
                                   + b":dotted\n")
                # 20,000 distinct names (once ~1.2 kB kept each)
                await raw_exchange(port, b"ARTIQ logging\n" + b"".join(
                    b"w:ERROR:unique%d.name:m\n" % i for i in range(20_000)))
                # a line of 10 MB, and a record announcing a billion lines that sends
                # 3 MB of them and then stops
                await raw_exchange(port, b"ARTIQ logging\nw:ERROR:big:" + b"x" * 10_000_000
                                   + b"\nw:ERROR<1000000000>:n:first\n"
                                   + (b"y" * 1000 + b"\n") * 3000)
                await wait_until(lambda: len(seen) == 1 + 1 + 20_000 + 2, timeout=60)
                grown = rss() - before
                assert len(logging.Logger.manager.loggerDict) == loggers
                assert grown < 64 * 1024 * 1024, f"RSS grew by {grown} bytes"
                assert max(seen) <= 1024 * 1024 + 100  # the message bound, plus a marker
                # and the port still serves
                await raw_exchange(port, b"ARTIQ logging\nw:ERROR:after:fine\n")
                await wait_until(lambda: len(seen) == 1 + 1 + 20_000 + 2 + 1)
            finally:
                logging.getLogger(REMOTE_LOGGER).removeHandler(counter)

    await main()


async def test_labpipe_forwarder_traceback_arrives_whole(lab):
    from labpipe.protocol.logs import LogForwarder

    async def main():
        async with running_master(lab) as m:
            receiver, messages = await log_receiver(m)
            forwarder = LogForwarder(HOST, m.port("logging"), "ctlmgr(lab1)")
            log = logging.getLogger("lpctl")
            log.addHandler(forwarder)
            log.propagate = False
            try:
                try:
                    raise KeyError("no such channel")
                except KeyError:
                    log.exception("read failed")
                await asyncio.to_thread(forwarder.close)
                await wait_until(lambda: messages)
            finally:
                log.removeHandler(forwarder)
                log.propagate = True
            await receiver.close()
            return messages

    (level, source, _, text), = await main()
    assert (level, source) == (40, "ctlmgr(lab1)")
    assert text.startswith("lpctl:read failed\nTraceback (most recent call last):\n")
    assert text.endswith("KeyError: 'no such channel'")
