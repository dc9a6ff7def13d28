"""A run's console over the wire: what a live follower of the ``console`` channel saw
equals what ``console.text`` returns afterwards, and what a follower that connects late
gets with ``text(rid, since_line=...)`` plus the channel; the results file holds it too
(read back with h5py); the buffer's bound drops the oldest lines first."""

import h5py

from conftest import run_ends, running_master, wait_until
from labpipe.master.console import ConsoleBuffers
from labpipe.protocol.broadcast import Receiver
from labpipe.protocol.rpc import AsyncClient

HOST = "127.0.0.1"

PRINTER = """
class Printer(EnvExperiment):
    def run(self):
        for i in range(500):
            print("line", i)
"""


async def test_console_text_equals_what_a_live_follower_saw(lab):
    lab.experiment("printer", PRINTER)
    async with running_master(lab) as m:
        seen = []
        receiver = Receiver("console", seen.append)
        await receiver.connect(HOST, m.port("broadcast"))
        await wait_until(lambda: m.broadcaster.receiver_count("console") == 1)
        console = AsyncClient()
        await console.connect_rpc(HOST, m.port("control"), "console")
        try:
            ends = run_ends(m.scheduler)
            rid = await m.scheduler.submit(
                "main", {"file": "repository/printer.py", "class_name": "Printer",
                         "arguments": {}, "log_level": 30})
            await wait_until(lambda: rid in ends, timeout=30)
            text = await console.text(rid)
            printed = [line[1] for line in text["lines"] if line[1].startswith("line ")]
            assert printed == [f"line {i}" for i in range(500)]
            assert text["first"] == 0 and text["next"] == len(text["lines"])
            await wait_until(lambda: sum(len(msg["lines"]) for msg in seen
                                         if msg["rid"] == rid) >= text["next"])
            live = {}
            for msg in seen:
                if msg["rid"] == rid:
                    for n, line in enumerate(msg["lines"], msg["first"]):
                        live[n] = line
            assert [live[n] for n in range(text["next"])] == text["lines"]
            # a monitor that reconnects after line 300: the rest, nothing twice
            rest = await console.text(rid, since_line=300)
            assert rest["first"] == 300 and rest["lines"] == text["lines"][300:]
            assert rid in await console.runs()
            with h5py.File(ends[rid].results) as f:
                stored = [t.decode() for t in f["console/text"][()]]
                assert len(f["console/time"]) == len(stored)
            assert [t for t in stored if t.startswith("line ")] == printed
        finally:
            console.close_rpc()
            await receiver.close()


def test_the_bound_drops_the_oldest_lines_and_keeps_numbers():
    published = []
    buffers = ConsoleBuffers(lambda channel, obj: published.append(obj), max_lines=10)
    for i in range(25):
        buffers.add(7, float(i), f"l{i}")
    text = buffers.text(7)
    assert text["first"] == 15 and text["next"] == 25
    assert [line[1] for line in text["lines"]] == [f"l{i}" for i in range(15, 25)]
    assert buffers.text(7, since_line=20)["lines"][0][1] == "l20"
    assert buffers.text(99) == {"rid": 99, "first": 0, "next": 0, "lines": []}
