"""Benchmark dataset traffic from a run to a subscriber, through a real master.

Starts ``python -m labpipe.master`` in a temporary lab and follows the ``datasets``
notifier. Prints:

- a loop setting a broadcast dataset N times: the loop's rate (updates/s) and how long
  after the loop's end the subscriber holds the last value (2,000 and 100,000 sets);
- a 150x150 float64 array set at 10 Hz for 3 s: the subscriber's lag behind each set
  (first and last seconds), to show whether a backlog grows.

Usage: python benchmarks/bench_datasets.py
"""

import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_master import ScheduleWatch, master_in_temporary_lab  # noqa: E402

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


async def loop_case(schedule, watch, runs, n):
    rid = await schedule.submit("main", {"file": "repository/loop.py", "class_name": None,
                                         "arguments": {"n": n}, "log_level": 30})
    seen_last, _ = await watch.wait_value("bench.counter", lambda v: v == n - 1)
    _, (t0, t1) = await watch.wait_value("bench.loop", lambda v: True)
    await runs.wait((rid, "removed"))
    watch.seen.clear()
    print(f"{n} broadcast sets: {n / (t1 - t0):,.0f} updates/s in the loop, "
          f"{n / (seen_last - t0):,.0f} updates/s to the subscriber; it held the last "
          f"value {1e3 * (seen_last - t1):.1f} ms after the loop ended")


async def image_case(schedule, watch, runs):
    rid = await schedule.submit("main", {"file": "repository/image.py", "class_name": None,
                                         "arguments": {}, "log_level": 30})
    await runs.wait((rid, "removed"))
    lags = [t - v[1] for t, k, v in watch.seen if k == "bench.image_sent"]
    images = sum(1 for _, k, _ in watch.seen if k == "bench.image")
    print(f"150x150 float64 at 10 Hz: {images} of 30 images received; lag median "
          f"{1e3 * statistics.median(lags[:10]):.1f} ms in the first second, "
          f"{1e3 * statistics.median(lags[-10:]):.1f} ms in the last")


async def bench(ports):
    schedule = AsyncClient()
    await schedule.connect_rpc("127.0.0.1", ports["control"], "schedule")
    runs = ScheduleWatch()
    watch = DatasetWatch()
    subscribers = [Subscriber("schedule", lambda init: init, runs.on_mod),
                   Subscriber("datasets", lambda init: init, watch.on_mod)]
    for subscriber in subscribers:
        await subscriber.connect("127.0.0.1", ports["notify"])
    try:
        await loop_case(schedule, watch, runs, 2000)
        await loop_case(schedule, watch, runs, 100_000)
        await image_case(schedule, watch, runs)
    finally:
        for subscriber in subscribers:
            await subscriber.close()
        schedule.close_rpc()


def main():
    with master_in_temporary_lab({"loop": LOOP, "image": IMAGE}) as ports:
        asyncio.run(bench(ports))


if __name__ == "__main__":
    main()
