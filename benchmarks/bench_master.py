"""Benchmark the master: latency, throughput and pipelining, through its real ports.

Starts ``labpipe-master`` in a temporary lab (all ports picked free), follows the
``schedule`` notifier, and prints each figure beside its floor (``floors.py``, measured
in the same run; the ratio figure / floor after it):

- RPC round trip: median of 200 ``schedule.get_status()`` calls on the control port
  (idle schedule). Floor: a loopback round trip.
- idle submit-to-running latency: median and max over 20 runs, from the ``submit``
  call to the ``running`` status arriving at the subscriber. Floor: a loopback round
  trip (the RPC) + a synced LMDB commit (the submission is on disk before its RID is
  returned).
- trivial runs per second: 100 queued runs, first submit to last run gone; printed
  as time per run too. Floor: what each run cannot skip, one after the other: a synced
  LMDB commit (its submission), a warm fork+exit+reap (its fresh process) and a small
  HDF5 file (its results). On 2 cores two runs' floors may overlap, so the floor
  bounds the time per run to within a factor of 2 at most.
- pipelining efficiency: 8 runs of prepare 0.2 s / run 0.5 s / analyze 0.2 s; the
  ideal makespan is 0.2 + 8 x 0.5 + 0.2 = 4.4 s, divided by the measured one. Floor:
  that ideal makespan.

The load average is printed at start and at end. Linux only (``floors.py``).

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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402

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
def master_process_in_temporary_lab(experiments: dict):
    """A master serving a temporary lab whose repository holds experiments
    ({name: source}); yields its process (a ``subprocess.Popen``) and its ports."""
    with tempfile.TemporaryDirectory() as lab:
        os.makedirs(os.path.join(lab, "repository"))
        for name, text in experiments.items():
            with open(os.path.join(lab, "repository", f"{name}.py"), "w") as f:
                f.write(text)
        with open(os.path.join(lab, "device_db.py"), "w") as f:
            f.write("device_db = {}\n")
        process, ports = start_master(lab)
        try:
            yield process, ports
        finally:
            process.terminate()
            process.wait(timeout=30)


@contextlib.contextmanager
def master_in_temporary_lab(experiments: dict):
    """As ``master_process_in_temporary_lab``; yields the ports only."""
    with master_process_in_temporary_lab(experiments) as (_, ports):
        yield ports


def start_master(lab):
    process = subprocess.Popen(
        [sys.executable, "-m", "labpipe.master", "--port-control", "0",
         "--port-notify", "0", "--port-logging", "0", "--port-broadcast", "0",
         "--bind", "127.0.0.1", "-q"],
        cwd=lab, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
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


def measure_floors() -> dict[str, floors.Floor]:
    fresh = floors.in_fresh_process()
    return {"loopback": floors.loopback_round_trip(), "lmdb": floors.synced_lmdb_commit(),
            "fork": fresh["fork"], "hdf5": fresh["hdf5_second"]}


TRIVIAL_EXPID: dict[str, object] = {"file": "repository/trivial.py", "class_name": None, "arguments": {},
                 "log_level": 30}


async def rpc_round_trip(schedule) -> float:
    """The median of 200 ``get_status`` calls (after 20 not counted)."""
    times = []
    for i in range(220):
        t0 = time.perf_counter()
        await schedule.get_status()
        if i >= 20:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def bench(ports, floor):
    schedule = AsyncClient()
    await schedule.connect_rpc("127.0.0.1", ports["control"], "schedule")
    watch = ScheduleWatch()
    subscriber = Subscriber("schedule", lambda init: init, watch.on_mod)
    await subscriber.connect("127.0.0.1", ports["notify"])
    trivial = TRIVIAL_EXPID
    try:
        for _ in range(3):  # warm-up
            await watch.wait((await schedule.submit("main", trivial), "removed"))

        print(floors.beside("RPC round trip (schedule.get_status), median of 200",
                            await rpc_round_trip(schedule), floor["loopback"]))

        latencies = []
        for _ in range(20):
            t0 = time.perf_counter()
            rid = await schedule.submit("main", trivial)
            latencies.append(await watch.wait((rid, "running")) - t0)
            await watch.wait((rid, "removed"))
        latency_floor = floors.total(floor["loopback"], floor["lmdb"])
        print(floors.beside("idle submit-to-running latency, median of 20",
                            statistics.median(latencies), latency_floor))
        print(floors.beside("idle submit-to-running latency, max of 20",
                            max(latencies), latency_floor))

        t0 = time.perf_counter()
        rids = [await schedule.submit("main", trivial) for _ in range(100)]
        for rid in rids:
            await watch.wait((rid, "removed"))
        elapsed = max(watch.times[(rid, "removed")] for rid in rids) - t0
        print(f"trivial runs: {100 / elapsed:.0f} runs/s (100 queued runs); "
              + floors.beside("time per run", elapsed / 100,
                              floors.total(floor["lmdb"], floor["fork"], floor["hdf5"])))

        stages = dict(trivial, file="repository/stages.py")
        t0 = time.perf_counter()
        rids = [await schedule.submit("main", stages) for _ in range(8)]
        for rid in rids:
            await watch.wait((rid, "removed"))
        makespan = max(watch.times[(rid, "removed")] for rid in rids) - t0
        print(f"pipelining efficiency: {4.4 / makespan:.3f} (8 runs of 0.2/0.5/0.2 s); "
              + floors.beside("makespan", makespan, floors.Floor("ideal makespan", 4.4)))
    finally:
        await subscriber.close()
        schedule.close_rpc()


def main():
    floors.header("bench_master.py")
    floor = measure_floors()
    with master_in_temporary_lab({"trivial": TRIVIAL, "stages": STAGES}) as ports:
        asyncio.run(bench(ports, floor))
    floors.load_average("end")


if __name__ == "__main__":
    main()
