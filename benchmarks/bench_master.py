"""Benchmark the master: latency, throughput and pipelining, through its real ports.

Starts ``labpipe-master`` in a temporary lab (all ports picked free), follows the
``schedule`` notifier, and prints:

- idle submit-to-running latency: median and max over 20 runs, from the ``submit``
  call to the ``running`` status arriving at the subscriber;
- trivial runs per second: 100 queued runs, first submit to last run gone;
- pipelining efficiency: 8 runs of prepare 0.2 s / run 0.5 s / analyze 0.2 s; the
  ideal makespan is 0.2 + 8 x 0.5 + 0.2 = 4.4 s, divided by the measured one.

Usage: python benchmarks/bench_master.py
"""

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

from labpipe.protocol.rpc import AsyncClient
from labpipe.protocol.sync import Subscriber

TRIVIAL = """
from labpipe.experiment import *

class Trivial(EnvExperiment):
    def run(self):
        pass
"""

STAGES = """
import time
from labpipe.experiment import *

class Stages(EnvExperiment):
    def prepare(self):
        time.sleep(0.2)

    def run(self):
        time.sleep(0.5)

    def analyze(self):
        time.sleep(0.2)
"""


@contextlib.contextmanager
def master_in_temporary_lab(experiments: dict):
    """A master serving a temporary lab whose repository holds experiments
    ({name: source}); yields its ports."""
    with tempfile.TemporaryDirectory() as lab:
        os.makedirs(os.path.join(lab, "repository"))
        for name, text in experiments.items():
            with open(os.path.join(lab, "repository", f"{name}.py"), "w") as f:
                f.write(text)
        with open(os.path.join(lab, "device_db.py"), "w") as f:
            f.write("device_db = {}\n")
        process, ports = start_master(lab)
        try:
            yield ports
        finally:
            process.terminate()
            process.wait(timeout=30)


def start_master(lab):
    process = subprocess.Popen(
        [sys.executable, "-m", "labpipe.master", "--port-control", "0",
         "--port-notify", "0", "--port-logging", "0", "--port-broadcast", "0",
         "--bind", "127.0.0.1", "-q"],
        cwd=lab, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if "ready" not in line:
        process.kill()
        raise SystemExit(f"master did not start: {line!r}")
    ports = dict(part.strip().split(" ") for part in line.split(": ", 1)[1].split(","))
    return process, {name: int(port) for name, port in ports.items()}


class ScheduleWatch:
    """Timestamps of status changes seen by a subscriber."""

    def __init__(self):
        self.times = {}
        self.changed = asyncio.Event()

    def on_mod(self, mod):
        now = time.perf_counter()
        if mod["action"] == "setitem" and mod["path"] == []:
            self.times[(mod["key"], mod["value"]["status"])] = now
        elif mod["action"] == "setitem" and mod.get("key") == "status":
            self.times[(mod["path"][0], mod["value"])] = now
        elif mod["action"] == "delitem" and mod["path"] == []:
            self.times[(mod["key"], "removed")] = now
        self.changed.set()

    async def wait(self, key):
        while key not in self.times:
            self.changed.clear()
            await self.changed.wait()
        return self.times[key]


async def bench(ports):
    schedule = AsyncClient()
    await schedule.connect_rpc("127.0.0.1", ports["control"], "schedule")
    watch = ScheduleWatch()
    subscriber = Subscriber("schedule", lambda init: init, watch.on_mod)
    await subscriber.connect("127.0.0.1", ports["notify"])
    trivial = {"file": "repository/trivial.py", "class_name": None, "arguments": {},
               "log_level": 30}
    try:
        for _ in range(3):  # warm-up
            await watch.wait((await schedule.submit("main", trivial), "removed"))

        latencies = []
        for _ in range(20):
            t0 = time.perf_counter()
            rid = await schedule.submit("main", trivial)
            latencies.append(await watch.wait((rid, "running")) - t0)
            await watch.wait((rid, "removed"))
        print(f"idle submit-to-running latency: median {1e3 * statistics.median(latencies):.1f} ms, "
              f"max {1e3 * max(latencies):.1f} ms (20 runs)")

        t0 = time.perf_counter()
        rids = [await schedule.submit("main", trivial) for _ in range(100)]
        for rid in rids:
            await watch.wait((rid, "removed"))
        end = max(watch.times[(rid, "removed")] for rid in rids)
        print(f"trivial runs: {100 / (end - t0):.0f} runs/s (100 queued runs)")

        stages = dict(trivial, file="repository/stages.py")
        t0 = time.perf_counter()
        rids = [await schedule.submit("main", stages) for _ in range(8)]
        for rid in rids:
            await watch.wait((rid, "removed"))
        makespan = max(watch.times[(rid, "removed")] for rid in rids) - t0
        print(f"pipelining efficiency: {4.4 / makespan:.3f} (makespan {makespan:.2f} s, "
              f"ideal 4.4 s; 8 runs of 0.2/0.5/0.2 s)")
    finally:
        await subscriber.close()
        schedule.close_rpc()


def main():
    with master_in_temporary_lab({"trivial": TRIVIAL, "stages": STAGES}) as ports:
        asyncio.run(bench(ports))


if __name__ == "__main__":
    main()
