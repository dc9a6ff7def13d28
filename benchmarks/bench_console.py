"""Benchmark the master's other work while one run floods its console.

Starts ``labpipe-master`` in a temporary lab (ports picked free) and measures three
times: idle; while a run on pipeline ``main`` spins the CPU for ``--seconds`` printing
nothing (the share any busy run takes of the machine); while a run there prints
``--rate`` lines a second (100,000 by default) for ``--seconds``. Each figure is
printed beside its floor (``floors.py``, measured in the same run; the ratio after
it) and, under a run, as a multiple of the idle figure and of the busy-run figure:

- RPC round trip: median and 99th percentile of ``schedule.get_status()`` calls, one
  every 2 ms. Floor: a loopback round trip.
- submit RPC: median and 99th percentile of submits to a held pipeline (each then
  deleted; nothing runs). Floor: a loopback round trip + a synced LMDB commit.
- the flood: the master's CPU (``/proc/PID/stat``) and the lines a second it kept
  while measured, its CPU per line above idle; whether it kept every line (the count,
  and the last 10,000 in order, from ``console.text``); the rate the run printed at
  its end (from the lines' times: slower than asked when the master holds it back);
  the master's resident memory idle and its peak (VmHWM).

"Its own pipe's share": beside the flooding run the master's other work should be
slowed no more than beside the busy run, i.e. by the machine's CPU that run takes,
not by the master's handling of its lines (``labpipe.worker.handle``: the consumer
lets the loop turn every 64 messages; the inbox is bounded).

The load average is printed at start and at end. Linux only (``floors.py``).

Usage: python benchmarks/bench_console.py [--rate LINES_PER_S] [--seconds S]
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402
from bench_master import (TRIVIAL, TRIVIAL_EXPID, ScheduleWatch,  # noqa: E402
                          master_process_in_temporary_lab)

from labpipe.protocol.rpc import AsyncClient
from labpipe.protocol.sync import Subscriber

HELD = "held"
END = 2 ** 62

FLOOD = """
import time
from labpipe.experiment import *

class Flood(EnvExperiment):
    def build(self):
        self.setattr_argument("rate", NumberValue(100000, precision=0, step=1, type="int"))
        self.setattr_argument("seconds", NumberValue(5.0))

    def run(self):
        total = int(self.rate * self.seconds)
        chunk = max(1, self.rate // 1000)  # a millisecond's lines at a time
        t0 = time.monotonic()
        n = 0
        while n < total:
            for i in range(n, min(n + chunk, total)):
                print("flood line", i)
            n = min(n + chunk, total)
            ahead = t0 + n / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        self.set_dataset("flood.seconds", time.monotonic() - t0, archive=True)
"""

HOG = """
import time
from labpipe.experiment import *

class Hog(EnvExperiment):
    def build(self):
        self.setattr_argument("seconds", NumberValue(5.0))

    def run(self):
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            pass
"""


def memory_mib(pid: int, field: str) -> float:
    """A field of /proc/PID/status in MiB (VmRSS: resident now; VmHWM: the peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process pid."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def connect(ports: dict[str, int], target: str) -> AsyncClient:
    client = AsyncClient()
    await client.connect_rpc("127.0.0.1", ports["control"], target)
    return client


async def round_trips(schedule: AsyncClient, count: int) -> list[float]:
    """count get_status calls, one every 2 ms: their times."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        await schedule.get_status()
        times.append(time.perf_counter() - t0)
        await asyncio.sleep(0.002)
    return times


async def submits(schedule: AsyncClient, count: int) -> list[float]:
    """count submits to the held pipeline, each deleted after: the submits' times."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        rid = await schedule.submit(HELD, TRIVIAL_EXPID)
        times.append(time.perf_counter() - t0)
        await schedule.delete(rid)
    return times


def p99(times: list[float]) -> float:
    return sorted(times)[min(len(times) - 1, int(len(times) * 0.99))]


async def measure(schedule: AsyncClient, rounds: int) -> tuple[list[float], list[float]]:
    rpc, sub = [], []
    for _ in range(rounds):
        rpc += await round_trips(schedule, 50)
        sub += await submits(schedule, 10)
    return rpc, sub


async def under(schedule: AsyncClient, watch: ScheduleWatch, pid: int, expid: dict,
                seconds: float, started: Callable[[int], Awaitable[bool]],
                lines: Callable[[int], Awaitable[int]] | None = None
                ) -> tuple[int, list[float], list[float], float, float]:
    """Submit expid to pipeline main; once started() says it is under way, measure for
    most of its time. Its RID, the RPC and submit times, the master's CPU a second,
    and the lines a second the master kept meanwhile (with lines(rid), the count)."""
    rid = await schedule.submit("main", expid)
    while not await started(rid):
        await asyncio.sleep(0.01)
    kept0 = await lines(rid) if lines else 0
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    rpc, sub = [], []
    while time.perf_counter() - t0 < seconds * 0.7:
        more_rpc, more_sub = await measure(schedule, 1)
        rpc += more_rpc
        sub += more_sub
    cpu = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
    kept = ((await lines(rid) if lines else 0) - kept0) / (time.perf_counter() - t0)
    await watch.wait((rid, "removed"))
    return rid, rpc, sub, cpu, kept


def report(label: str, times: list[float], floor: floors.Floor,
           idle: list[float] | None = None, hog: list[float] | None = None) -> None:
    for name, pick in (("median", statistics.median), ("99th percentile", p99)):
        line = floors.beside(f"{label}, {name} of {len(times)}", pick(times), floor)
        if idle:
            line += f"; x{pick(times) / pick(idle):.2f} idle"
        if hog:
            line += f", x{pick(times) / pick(hog):.2f} beside the busy run"
        print(line)


async def bench(ports: dict[str, int], pid: int, floor: dict[str, floors.Floor],
                rate: int, seconds: float) -> None:
    schedule = await connect(ports, "schedule")
    console = await connect(ports, "console")
    await schedule.hold(HELD)
    watch = ScheduleWatch()
    subscriber = Subscriber("schedule", lambda init: init, watch.on_mod)
    await subscriber.connect("127.0.0.1", ports["notify"])
    one_submit = floors.total(floor["loopback"], floor["lmdb"])

    async def running(rid: int) -> bool:
        return (rid, "running") in watch.times

    async def kept(rid: int) -> int:
        count = int((await console.text(rid, END))["next"])
        return 0 if count == END else count  # END: no line yet

    async def printing(rid: int) -> bool:
        return await kept(rid) > 0

    try:
        await measure(schedule, 1)  # warm-up
        rss_idle = memory_mib(pid, "VmRSS")
        t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
        idle_rpc, idle_sub = await measure(schedule, 6)
        idle_cpu = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
        hog = {"file": "repository/hog.py", "class_name": None, "log_level": 30,
               "arguments": {"seconds": seconds}}
        _, hog_rpc, hog_sub, hog_cpu, _ = await under(schedule, watch, pid, hog,
                                                      seconds, running)
        flood = {"file": "repository/flood.py", "class_name": None, "log_level": 30,
                 "arguments": {"rate": rate, "seconds": seconds}}
        rid, flood_rpc, flood_sub, flood_cpu, rate_kept = await under(
            schedule, watch, pid, flood, seconds, printing, kept)

        peak = memory_mib(pid, "VmHWM")
        total = int(rate * seconds)
        text = await console.text(rid, END)
        tail = (await console.text(rid, max(0, text["next"] - 10_000)))["lines"]
        first_n = text["next"] - len(tail)
        in_order = [line[1] for line in tail] == [f"flood line {i}" for i in
                                                    range(first_n, text["next"])]
        # the printing rate from the times of the last lines (the first are dropped)
        per_line = (tail[-1][0] - tail[0][0]) / max(1, len(tail) - 1)

        print("idle (nothing runs):")
        report("  RPC round trip (get_status)", idle_rpc, floor["loopback"])
        report("  submit RPC", idle_sub, one_submit)
        print(f"  master CPU {idle_cpu * 100:.0f} % of a core")
        print("beside a busy run (one that spins the CPU, printing nothing):")
        report("  RPC round trip (get_status)", hog_rpc, floor["loopback"], idle_rpc)
        report("  submit RPC", hog_sub, one_submit, idle_sub)
        print(f"  master CPU {hog_cpu * 100:.0f} % of a core")
        print(f"beside a run printing {rate:,} lines a second:")
        report("  RPC round trip (get_status)", flood_rpc, floor["loopback"], idle_rpc,
               hog_rpc)
        report("  submit RPC", flood_sub, one_submit, idle_sub, hog_sub)
        print(f"  master CPU {flood_cpu * 100:.0f} % of a core while it kept "
              f"{rate_kept:,.0f} lines/s: "
              f"{floors.duration(max(0.0, flood_cpu - idle_cpu) / max(rate_kept, 1))} "
              "per line above idle")
        print(f"  {total:,} lines asked; the master kept {text['next']:,} "
              f"({'all' if text['next'] == total else 'NOT all'}; the last 10,000 "
              f"{'in order' if in_order else 'NOT in order'}); the run printed "
              f"{1 / per_line if per_line > 0 else float('inf'):,.0f} lines/s at its end")
        print(f"  master RSS idle {rss_idle:.1f} MiB, peak {peak:.1f} MiB "
              f"({peak - rss_idle:+.1f} MiB)")
    finally:
        await subscriber.close()
        schedule.close_rpc()
        console.close_rpc()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    floors.header("bench_console.py")
    floor = {"loopback": floors.loopback_round_trip(), "lmdb": floors.synced_lmdb_commit()}
    with master_process_in_temporary_lab({"trivial": TRIVIAL, "flood": FLOOD,
                                          "hog": HOG}) as (
            process, ports):
        print(f"master PID {process.pid}", flush=True)
        asyncio.run(bench(ports, process.pid, floor, args.rate, args.seconds))
    floors.load_average("end")


if __name__ == "__main__":
    main()
