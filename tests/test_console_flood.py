"""A run that prints as fast as it can, against a real master (in this event loop, a
real worker process): every line is kept, in order, in the master's buffer, on the
``console`` broadcast and in the results file (h5py); meanwhile the worker's messages
never take more than ``TURN_MESSAGES`` of one event-loop turn (another task gets a turn
at least that often, counted in lines, not timed), and at most ``INBOX_BATCHES``
decoded batches wait in the master (the pipe holds the rest)."""

import asyncio

import h5py

from conftest import run_ends, running_master, wait_until
from labpipe.protocol.broadcast import Receiver
from labpipe.worker.handle import INBOX_BATCHES, TURN_MESSAGES

HOST = "127.0.0.1"
LINES = 30_000

FLOODER = f"""
import sys

class Flooder(EnvExperiment):
    def run(self):
        for i in range({LINES}):
            print("flood", i)
            if i % 10_000 == 0:
                print("flood err", i, file=sys.stderr)
"""


async def test_a_flood_is_kept_whole_and_in_order_and_shares_the_loop(lab):
    lab.experiment("flooder", FLOODER)
    expected = []
    for i in range(LINES):
        expected.append(f"flood {i}")
        if i % 10_000 == 0:
            expected.append(f"flood err {i}")
    async with running_master(lab) as m:
        seen = []
        receiver = Receiver("console", seen.append)
        await receiver.connect(HOST, m.port("broadcast"))
        await wait_until(lambda: m.broadcaster.receiver_count("console") == 1)
        ends = run_ends(m.scheduler)
        rid = await m.scheduler.submit(
            "main", {"file": "repository/flooder.py", "class_name": "Flooder",
                     "arguments": {}, "log_level": 30})
        steps, inbox = [], []  # lines kept at each turn of ours; batches waiting

        async def sampler():
            while rid not in ends:
                steps.append(m.console.text(rid, 2 ** 62)["next"] if rid in m.console
                             else 0)
                try:
                    worker = m.scheduler.find(rid).worker
                except KeyError:
                    worker = None
                if worker is not None:
                    inbox.append(worker._inbox.qsize())
                await asyncio.sleep(0)

        sampling = asyncio.create_task(sampler())
        try:
            await wait_until(lambda: rid in ends, timeout=120)
            await sampling
            text = m.console.text(rid, 2 ** 62)
            assert text["next"] == len(expected)
            tail = m.console.text(rid, 0)
            assert [line[1] for line in tail["lines"]] == expected[tail["first"]:]
            await wait_until(lambda: sum(len(msg["lines"]) for msg in seen)
                             >= len(expected), timeout=30)
            numbered = [(n, line[1], line[2]) for msg in seen
                        for n, line in enumerate(msg["lines"], msg["first"])]
            assert [n for n, _, _ in numbered] == list(range(len(expected)))
            assert [text for _, text, _ in numbered] == expected
            assert {stream for _, text, stream in numbered if "err" in text} == {"stderr"}
            with h5py.File(ends[rid].results) as f:
                stored = [t.decode() for t in f["console/text"][()]]
            assert stored == expected
        finally:
            sampling.cancel()
            await receiver.close()
    growth = [b - a for a, b in zip(steps, steps[1:])]
    assert max(growth) <= TURN_MESSAGES, max(growth)
    assert sum(growth) > 0.9 * len(expected)  # the sampler saw the flood go by
    assert max(inbox) <= INBOX_BATCHES


def test_the_workers_outbox_is_bounded_and_keeps_every_message():
    """A sender faster than the reader waits once MAX_QUEUED messages are queued; once
    the other end reads, every message arrives, in order."""
    import multiprocessing
    import threading

    from labpipe.worker.ipc import ChildChannel
    from labpipe.worker.messages import FROM_WORKER, Log, decode

    ours, theirs = multiprocessing.Pipe()
    channel = ChildChannel(theirs)
    channel.MAX_QUEUED, channel.MAX_BATCH = 100, 50
    count = 10_000
    sent = []

    def flood():
        for i in range(count):
            channel.send(Log(20, "print", f"line {i}", 0.0))
            sent.append(i)

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    sender.join(timeout=1.0)  # nobody reads: it cannot finish
    assert sender.is_alive() and len(sent) < count
    assert channel._outbox.qsize() <= channel.MAX_QUEUED + 1
    received = []
    while len(received) < count:
        received += [decode(wire, FROM_WORKER).message for wire in ours.recv()]
    sender.join(timeout=30)
    assert not sender.is_alive()
    assert received == [f"line {i}" for i in range(count)]
    channel.close()
    ours.close()
