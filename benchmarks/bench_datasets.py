"""Benchmark dataset traffic from a run to a subscriber, through a real master.

Starts ``python -m labpipe.master`` in a temporary lab and follows the ``datasets``
notifier. Prints each figure beside its floor (``floors.py``, measured in the same run;
the ratio figure / floor after it):

- a loop setting a broadcast dataset N times (2,000 and 100,000 sets):
  - the loop's rate (updates/s) and time per update. Floor: a dict item set in a
    Python loop (in this process), the least an update can cost;
  - the rate to the subscriber (first set to last value seen) and its time per
    update. Floor: the loop's own time per update (nothing arrives faster than it
    is set);
  - how long after the loop's end the subscriber holds the last value. Floor: a
    loopback round trip;
  - the master's CPU time per update (all its threads, ``/proc/PID/stat``, from the
    submit to the run's end). Floor: ``json.loads`` of one update's PYON line and
    ``json.dumps`` of the result (the standard library's C code, in this process): the
    least a relay that reads and writes the update costs;
- a 150x150 float64 array set at 10 Hz for 3 s: the subscriber's lag behind each set
  (median in the first and last seconds), to show whether a backlog grows. Floor: a
  loopback round trip of 180 kB (the array's size).

The load average is printed at start and at end. Linux only (``floors.py``).

Usage: python benchmarks/bench_datasets.py
"""

import asyncio
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402
from bench_master import ScheduleWatch, master_process_in_temporary_lab  # noqa: E402

from labpipe.protocol import pyon
from labpipe.protocol.rpc import AsyncClient
from labpipe.protocol.sync import Subscriber

LOOP = """
import time
from labpipe.experiment import *

class Loop(EnvExperiment):
    def build(self):
        self.setattr_argument("n", NumberValue(2000, step=1, precision=0, type="int"))

    def run(self):
        t0 = time.time()
        for i in range(self.n):
            self.set_dataset("bench.counter", i, broadcast=True)
        self.set_dataset("bench.loop", (t0, time.time()), broadcast=True)
"""

IMAGE = """
import time
import numpy as np
from labpipe.experiment import *

class Image(EnvExperiment):
    def run(self):
        rng = np.random.default_rng(0)
        for i in range(30):
            self.set_dataset("bench.image", rng.random((150, 150)), broadcast=True)
            self.set_dataset("bench.image_sent", (i, time.time()), broadcast=True)
            time.sleep(0.1)
"""


class DatasetWatch:
    """Receive times of dataset values seen by a subscriber."""

    def __init__(self):
        self.seen = []  # (receive time, key, value)
        self.changed = asyncio.Event()

    def on_mod(self, mod):
        if mod["action"] == "setitem" and mod["path"] == []:
            self.seen.append((time.time(), mod["key"], mod["value"][1]))
            self.changed.set()

    async def wait_value(self, key, predicate):
        while True:
            for t, k, v in reversed(self.seen):
                if k == key and predicate(v):
                    return t, v
            self.changed.clear()
            await self.changed.wait()


def dict_set_in_a_loop(n: int = 100_000) -> floors.Floor:
    """Setting a dict item in a Python loop: per item."""
    d = {}
    t0 = time.perf_counter()
    for i in range(n):
        d["bench.counter"] = i
    return floors.Floor("a dict item set in a Python loop", (time.perf_counter() - t0) / n)


def relay_floor(n: int = 20_000) -> floors.Floor:
    """json.loads of a dataset mod's PYON line and json.dumps of it: CPU per update."""
    line = pyon.encode({"action": "setitem", "path": [], "key": "bench.counter",
                        "value": (False, 12345, {})})
    t0 = time.thread_time()
    for _ in range(n):
        json.dumps(json.loads(line), separators=(",", ":"))
    return floors.Floor("json.loads + json.dumps of one update's line, CPU",
                        (time.thread_time() - t0) / n)


def process_cpu(pid: int) -> float:
    """utime + stime of process pid (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_update(rate: float) -> str:
    return f"{rate:,.0f} updates/s"


async def loop_case(schedule, watch, runs, n, floor, pid):
    cpu0 = process_cpu(pid)
    rid = await schedule.submit("main", {"file": "repository/loop.py", "class_name": None,
                                         "arguments": {"n": n}, "log_level": 30})
    seen_last, _ = await watch.wait_value("bench.counter", lambda v: v == n - 1)
    _, (t0, t1) = await watch.wait_value("bench.loop", lambda v: True)
    await runs.wait((rid, "removed"))
    cpu = (process_cpu(pid) - cpu0) / n
    watch.seen.clear()
    in_loop = (t1 - t0) / n
    print(f"{n} broadcast sets: {n / (t1 - t0):,.0f} updates/s in the loop; "
          + floors.beside("time per update", in_loop, floor["dict"]))
    print(f"{n} broadcast sets: {n / (seen_last - t0):,.0f} updates/s to the subscriber; "
          + floors.beside("time per update", (seen_last - t0) / n,
                          floors.Floor("the loop's own time per update", in_loop)))
    print(floors.beside(f"{n} broadcast sets: the subscriber held the last value, after "
                        "the loop's end,", seen_last - t1, floor["loopback"]))
    print(floors.beside(f"{n} broadcast sets: the master's CPU per update", cpu,
                        floor["relay"]))


async def image_case(schedule, watch, runs, floor):
    rid = await schedule.submit("main", {"file": "repository/image.py", "class_name": None,
                                         "arguments": {}, "log_level": 30})
    await runs.wait((rid, "removed"))
    lags = [t - v[1] for t, k, v in watch.seen if k == "bench.image_sent"]
    images = sum(1 for _, k, _ in watch.seen if k == "bench.image")
    print(f"150x150 float64 at 10 Hz: {images} of 30 images received")
    for when, part in (("first", lags[:10]), ("last", lags[-10:])):
        print(floors.beside(f"150x150 float64 at 10 Hz: lag median in the {when} second",
                            statistics.median(part), floor["loopback_image"]))


async def bench(ports, floor, pid):
    schedule = AsyncClient()
    await schedule.connect_rpc("127.0.0.1", ports["control"], "schedule")
    runs = ScheduleWatch()
    watch = DatasetWatch()
    subscribers = [Subscriber("schedule", lambda init: init, runs.on_mod),
                   Subscriber("datasets", lambda init: init, watch.on_mod)]
    for subscriber in subscribers:
        await subscriber.connect("127.0.0.1", ports["notify"])
    try:
        await loop_case(schedule, watch, runs, 2000, floor, pid)
        await loop_case(schedule, watch, runs, 100_000, floor, pid)
        await image_case(schedule, watch, runs, floor)
    finally:
        for subscriber in subscribers:
            await subscriber.close()
        schedule.close_rpc()


def main():
    floors.header("bench_datasets.py")
    floor = {"dict": dict_set_in_a_loop(), "loopback": floors.loopback_round_trip(),
             "loopback_image": floors.loopback_round_trip(150 * 150 * 8, repeats=100),
             "relay": relay_floor()}
    with master_process_in_temporary_lab({"loop": LOOP, "image": IMAGE}) as (process, ports):
        asyncio.run(bench(ports, floor, process.pid))
    floors.load_average("end")


if __name__ == "__main__":
    main()
