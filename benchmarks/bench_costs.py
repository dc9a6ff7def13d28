"""Benchmark where a run's costs go: CPU per process role, page faults, HDF5, template,
submit. Linux only (reads ``/proc``).

Each figure is printed beside its floor (``floors.py``, measured in the same run; the
ratio figure / floor after it):

- CPU per trivial run: a master in a temporary lab runs 200 queued trivial runs; the
  CPU time (``utime + stime`` from ``/proc/PID/stat``) each process role spent in that
  window, divided by the runs:
  - master: the ``labpipe.master`` process (all its threads), and its main thread (the
    event loop) alone. Floor: a synced LMDB commit's CPU;
  - template: the worker template process (``forkserver.py``), which forks the workers
    and reaps them. Floor: the parent's CPU of a warm fork+exit+reap;
  - workers: ``cutime + cstime`` of the template, which reaps them (each worker's CPU,
    from its fork to its exit, lands there when it is reaped). Floor: the child's CPU
    of a warm fork+exit + a small HDF5 file's CPU (its results file);
  - client: this process (the submitting RPC client and the schedule subscriber).
    Floor: a loopback round trip's CPU (its submit);
  - all processes: their sum. Floor: the sum of the role floors above.
  From the sum: how much of the machine's cores labpipe's processes used in the
  window (runs/s x CPU per run / cores); no floor.
- minor page faults per worker (``cminflt`` of the template over the runs): mostly
  copy-on-write copies of the template's pages. Floor: a warm fork+exit child's. Then
  their cost at the copy-on-write fault cost measured now (``floors.py``).
- small HDF5 file written and closed with h5py, with the minor page faults meanwhile:
  the first and the second in a fresh process (from ``floors.py``, one sample each);
  the first and second in a process forked, as a worker is, from a process that
  imported what the template imports (the last of which, ``labpipe/worker/
  template.py``, warms HDF5 up and freezes the garbage collector), and the same without
  that last module (median of 5 forked processes each). Floor: a small plain file.
- template start: a worker template process (``ForkServer``) started until ready,
  with the modules a lab without bluesky preloads, and with bluesky and ophyd too;
  median of 3 each, and its resident memory once ready (``VmRSS``). Floor: a Python
  start.
- in-process submit: ``Scheduler.submit`` with a schedule store in a temporary lab,
  the pipeline held (nothing runs); median of 50 submissions, and CPU per submission.
  Floor: a synced LMDB commit (the submission's commit makes its RID durable).

The load average is printed at start and at end.

Usage: python benchmarks/bench_costs.py
"""

import asyncio
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402
from bench_master import (TRIVIAL, TRIVIAL_EXPID, ScheduleWatch,  # noqa: E402
                          master_process_in_temporary_lab)

from labpipe.protocol.rpc import AsyncClient
from labpipe.protocol.sync import Subscriber
from labpipe.worker import launcher
from labpipe.worker.forkserver import ForkServer

RUNS = 200
TICK = os.sysconf("SC_CLK_TCK")


# --- /proc ---------------------------------------------------------------------------

@dataclasses.dataclass
class Usage:
    """A process's (or thread's) counters from ``/proc/PID/stat``, in seconds."""

    cpu: float  # utime + stime
    children_cpu: float  # cutime + cstime: children it has reaped
    faults: int  # minflt
    children_faults: int  # cminflt

    def __sub__(self, other: "Usage") -> "Usage":
        return Usage(*(a - b for a, b in zip(dataclasses.astuple(self),
                                             dataclasses.astuple(other))))


def stat_fields(path: str) -> list[str]:
    """The fields of a ``stat`` file; index n - 3 is field n of proc(5)."""
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()


def usage(pid: int, tid: int | None = None) -> Usage:
    fields = stat_fields(f"/proc/{pid}/stat" if tid is None
                         else f"/proc/{pid}/task/{tid}/stat")
    field = lambda n: int(fields[n - 3])  # noqa: E731
    return Usage((field(14) + field(15)) / TICK, (field(16) + field(17)) / TICK,
                 field(10), field(11))


def children(pid: int) -> set[int]:
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(stat_fields(f"/proc/{name}/stat")[1]) == pid:
                    found.add(int(name))
            except (OSError, IndexError):
                pass  # ended meanwhile
    return found


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def resident_memory(pid: int) -> int:
    """VmRSS in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def settle(pid: int, timeout: float = 10.0) -> set[int]:
    """Wait until pid's set of children stays the same for 0.5 s; returns it."""
    deadline = time.monotonic() + timeout
    last, since = children(pid), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = children(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            break
    return last


# --- CPU and page faults per trivial run ----------------------------------------------------

async def costs_per_run(master_pid: int, ports: dict, floor: dict) -> None:
    schedule = AsyncClient()
    await schedule.connect_rpc("127.0.0.1", ports["control"], "schedule")
    watch = ScheduleWatch()
    subscriber = Subscriber("schedule", lambda init: init, watch.on_mod)
    await subscriber.connect("127.0.0.1", ports["notify"])
    try:
        templates = [pid for pid in children(master_pid)
                     if "labpipe.worker.forkserver" in cmdline(pid)]
        if len(templates) != 1:
            raise SystemExit(f"expected one template process, found {templates}")
        template = templates[0]
        for _ in range(3):  # warm-up
            await watch.wait((await schedule.submit("main", TRIVIAL_EXPID), "removed"))
        idle = len(await settle(template))  # the spare worker and the examining processes

        master0, main0, template0 = (usage(master_pid), usage(master_pid, master_pid),
                                     usage(template))
        client0 = own_cpu()
        t0 = time.perf_counter()
        rids = [await schedule.submit("main", TRIVIAL_EXPID) for _ in range(RUNS)]
        for rid in rids:
            await watch.wait((rid, "removed"))
        elapsed = max(watch.times[(rid, "removed")] for rid in rids) - t0
        client = (own_cpu() - client0) / RUNS
        # the last workers are closed in the background: wait until they are reaped
        deadline = time.monotonic() + 10
        while len(children(template)) > idle and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        master = usage(master_pid) - master0
        main = usage(master_pid, master_pid) - main0
        forks = usage(template) - template0
    finally:
        await subscriber.close()
        schedule.close_rpc()

    per_run = {"master": master.cpu / RUNS, "template": forks.cpu / RUNS,
               "workers": forks.children_cpu / RUNS, "client": client}
    role_floor = {
        "master": floors.cpu_floor(floor["lmdb"]),
        "template": floor["fork_parent_cpu"],
        "workers": floors.total(floor["fork_child_cpu"], floors.cpu_floor(floor["hdf5"])),
        "client": floors.cpu_floor(floor["loopback"])}
    everything = sum(per_run.values())
    print(f"{RUNS} queued trivial runs: {RUNS / elapsed:.0f} runs/s in this window")
    print(floors.beside("CPU per trivial run, all processes", everything, floors.Floor(
        "the role floors below, summed", sum(f.seconds for f in role_floor.values()))))
    for role in ("master", "template", "workers", "client"):
        print(floors.beside(f"  CPU per trivial run, {role}", per_run[role],
                            role_floor[role]))
    print(f"  of the master's: its main thread (event loop) {floors.duration(main.cpu / RUNS)}"
          f", its other threads {floors.duration((master.cpu - main.cpu) / RUNS)}")
    print(f"labpipe's processes used {100 * everything * RUNS / elapsed / os.cpu_count():.0f} %"
          f" of the {os.cpu_count()} cores in the window ({floors.duration(everything)} x "
          f"{RUNS / elapsed:.0f} runs/s)")

    faults = forks.children_faults / RUNS
    count = lambda n: f"{n:,.0f}"  # noqa: E731
    print(floors.beside("minor page faults per worker", faults, floors.Floor(
        "a warm fork+exit child's", floor["fork"].faults), fmt=count))
    in_faults = faults * floor["cow_fault"].seconds
    print(f"  at {floors.duration(floor['cow_fault'].seconds)} per copy-on-write fault "
          f"(measured now): {floors.duration(in_faults)}, "
          f"{100 * in_faults / per_run['workers']:.0f} % of a worker's CPU")


# --- HDF5 in a forked worker --------------------------------------------------------------

def hdf5_in_forked_worker(warm_up: bool, children: int = 5) -> None:
    """(In a fresh process.) Import what the template imports (with warm_up, the last
    module too: ``labpipe.worker.template``), then in each of a few forked children
    write two small HDF5 files; print their costs as JSON."""
    import importlib

    for name in launcher.preload(False):
        if warm_up or name != launcher.TEMPLATE_MODULE:
            importlib.import_module(name)
    results = []
    for _ in range(children):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            with tempfile.TemporaryDirectory() as tmp:
                files = [floors.small_hdf5_file(os.path.join(tmp, f"{i}.h5"))
                         for i in (1, 2)]
            os.write(write_end, json.dumps([dataclasses.asdict(f) for f in files]).encode())
            os._exit(0)
        os.close(write_end)
        data = b""
        while chunk := os.read(read_end, 65536):
            data += chunk
        os.close(read_end)
        os.waitpid(pid, 0)
        results.append([floors.Floor(**f) for f in json.loads(data)])
    print(json.dumps([[dataclasses.asdict(f) for f in r] for r in results]))


def hdf5_files(floor: dict) -> None:
    plain = floor["plain_file"]
    for which, f in (("first", floor["hdf5_first"]), ("second", floor["hdf5"])):
        print(floors.beside(f"small HDF5 file, the {which} in a fresh process", f.seconds,
                            plain) + f"; {f.faults:,.0f} minor faults")
    for warm_up in (True, False):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--hdf5-in-fork",
                              "warm" if warm_up else "cold"],
                             capture_output=True, text=True, check=True).stdout
        results = [[floors.Floor(**f) for f in r] for r in json.loads(out)]
        imports = ("the template's imports" if warm_up
                   else f"the template's imports but {launcher.TEMPLATE_MODULE}")
        for i, which in enumerate(("first", "second")):
            print(floors.beside(
                f"small HDF5 file, the {which} in a process forked from {imports}, median "
                f"of {len(results)}", statistics.median(r[i].seconds for r in results),
                plain) + f"; {statistics.median(r[i].faults for r in results):,.0f} minor "
                "faults")


# --- template start ------------------------------------------------------------------------

def template_start(floor: dict) -> None:
    for bluesky, label in ((False, "without bluesky"), (True, "with bluesky and ophyd")):
        modules = launcher.preload(bluesky)
        times, memory = [], []
        for _ in range(3):
            server = ForkServer(modules)
            t0 = time.perf_counter()
            server.ensure_started()
            times.append(time.perf_counter() - t0)
            assert server.pid is not None  # started
            memory.append(resident_memory(server.pid))
            server.stop(wait=10)
        print(floors.beside(f"template start {label} ({len(modules)} modules), median "
                            f"of 3", statistics.median(times), floor["python"])
              + f"; resident memory {statistics.median(memory) / 2**20:.0f} MB")


# --- in-process submit ---------------------------------------------------------------------

async def in_process_submit(floor: dict, count: int = 50) -> None:
    from labpipe.master.rid import RIDCounter
    from labpipe.master.schedule_store import ScheduleStore
    from labpipe.master.scheduler import Scheduler, SchedulerConfig
    # the pipeline is held: no worker is ever started, the launcher stays idle
    with tempfile.TemporaryDirectory() as lab, launcher.Launcher(spares=0) as idle:
        store = ScheduleStore(os.path.join(lab, "schedule.lmdb"))
        scheduler = Scheduler(RIDCounter(os.path.join(lab, "last_rid.pyon")),
                              SchedulerConfig(lab_dir=lab), launcher=idle, store=store)
        try:
            await scheduler.hold("main")
            for _ in range(5):  # warm-up
                await scheduler.submit("main", TRIVIAL_EXPID)
            times = []
            cpu0 = time.process_time()
            for _ in range(count):
                t0 = time.perf_counter()
                await scheduler.submit("main", TRIVIAL_EXPID)
                times.append(time.perf_counter() - t0)
            cpu = (time.process_time() - cpu0) / count
        finally:
            await scheduler.stop()
            store.close()
    print(floors.beside(f"in-process submit, median of {count}", statistics.median(times),
                        floor["lmdb"]))
    print(floors.beside("in-process submit, CPU", cpu, floors.cpu_floor(floor["lmdb"])))


def main() -> None:
    floors.header("bench_costs.py")
    fresh = floors.in_fresh_process()
    floor = {"fork": fresh["fork"], "fork_parent_cpu": fresh["fork_parent_cpu"],
             "fork_child_cpu": fresh["fork_child_cpu"], "cow_fault": fresh["cow_fault"],
             "hdf5_first": fresh["hdf5_first"], "hdf5": fresh["hdf5_second"],
             "loopback": floors.loopback_round_trip(), "lmdb": floors.synced_lmdb_commit(),
             "plain_file": floors.small_plain_file(), "python": floors.python_start()}
    with master_process_in_temporary_lab({"trivial": TRIVIAL}) as (process, ports):
        asyncio.run(costs_per_run(process.pid, ports, floor))
    hdf5_files(floor)
    template_start(floor)
    asyncio.run(in_process_submit(floor))
    floors.load_average("end")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--hdf5-in-fork"]:
        hdf5_in_forked_worker(warm_up=sys.argv[2] == "warm")
    else:
        main()
