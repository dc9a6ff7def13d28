"""Physical floors, measured in the same run as the figures they bound (Linux only).

Each benchmark prints every figure beside the floor it cannot go below, both measured
in one run on one machine, so that a figure reads as a multiple of what the machine
allows at that moment (a loaded machine raises both). CPU times are the measuring
thread's (numpy's BLAS threads are not counted) unless said. The floors:

- loopback round trip: a small message sent over TCP on 127.0.0.1 to an echo server
  (a thread of this process) and read back; median wall time. CPU: both ends.
- synced LMDB commit: one small put per write transaction in a real LMDB file in the
  temporary directory (where the benchmarks' labs are), ``sync=True``; median wall time.
- warm fork+exit+reap: in a fresh process that has imported numpy and h5py, ``os.fork``
  of a child that exits at once, then ``waitpid``; median wall time, CPU of parent and
  child, and the child's minor page faults.
- small HDF5 file: a file with a scalar and a string dataset written and closed with
  h5py in that fresh process, the first one (HDF5 initialises itself) and a second one.
- small plain file: 1 kB written and closed (no fsync), the floor of any file.
- copy-on-write fault: a forked child writes one byte into each page of 16 MB its
  parent had written; the child's CPU per minor fault.
- Python start: ``python -c pass``, the floor of starting any Python process.

``header()`` and ``load_average()`` print what the figures were taken under: the
commit, the machine, and ``os.getloadavg()`` (at start and at end).

Usage (prints every floor once): python benchmarks/floors.py
"""

import dataclasses
import json
import mmap
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

__all__ = ["Floor", "header", "load_average", "loopback_round_trip", "synced_lmdb_commit",
           "small_plain_file", "small_hdf5_file", "python_start", "in_fresh_process",
           "beside", "total", "cpu_floor", "duration"]


@dataclasses.dataclass
class Floor:
    """A floor: its name; ``seconds``, what it bounds (a median wall time, or for a CPU
    floor a CPU time); the mean CPU time it took; for a child process, its mean minor
    page faults."""

    name: str
    seconds: float
    cpu: float = 0.0
    faults: float = 0.0

    def __str__(self) -> str:
        return f"{self.name} {duration(self.seconds)}"


def duration(seconds: float) -> str:
    """Seconds in the unit that fits: us, ms or s."""
    if seconds < 1e-5:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def beside(label: str, value: float, floor: Floor, fmt=duration) -> str:
    """``label value (floor: name value, xRATIO)``, the ratio being value / floor."""
    ratio = value / floor.seconds if floor.seconds > 0 else float("inf")
    times = f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.3g}"
    return f"{label} {fmt(value)} (floor: {floor.name} {fmt(floor.seconds)}, x{times})"


def cpu_floor(floor: Floor) -> Floor:
    """The floor's CPU time as a floor of its own."""
    return Floor(f"{floor.name}, CPU", floor.cpu, floor.cpu)


def total(*floors: Floor) -> Floor:
    """Floors one after the other: their sum, named by its parts."""
    name = " + ".join(str(f) for f in floors)
    return Floor(f"{name} =", sum(f.seconds for f in floors), sum(f.cpu for f in floors))


def _commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "labpipe"],
                               cwd=os.path.dirname(here), capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (labpipe/ modified)" if dirty else "")


def _filesystem(path: str) -> str:
    best, kind = "", "unknown"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, fstype = line.split()[:3]
            if path == point or path.startswith(point.rstrip("/") + "/"):
                if len(point) > len(best):
                    best, kind = point, fstype
    return kind


def header(script: str) -> None:
    """Print the script, commit, machine and the load average at start."""
    tmp = os.path.realpath(tempfile.gettempdir())
    print(f"{script} at commit {_commit()}; Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPU(s), temporary directory {tmp} on {_filesystem(tmp)}")
    load_average("start")


def load_average(when: str) -> None:
    """Print ``os.getloadavg()``, saying when."""
    one, five, fifteen = os.getloadavg()
    print(f"load average at {when}: {one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min)")


# --- floors measured in this process -----------------------------------------------------

def _echo(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        while data := conn.recv(1 << 20):
            conn.sendall(data)


def loopback_round_trip(size: int = 1, repeats: int = 300) -> Floor:
    """A message of ``size`` bytes to an echo server on 127.0.0.1 and back."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        thread = threading.Thread(target=_echo, args=(server,), daemon=True)
        thread.start()
        with socket.create_connection(server.getsockname()) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            message = b"x" * size
            walls = []
            cpu0 = time.process_time()
            for _ in range(repeats):
                t0 = time.perf_counter()
                conn.sendall(message)
                received = 0
                while received < size:
                    received += len(conn.recv(1 << 20))
                walls.append(time.perf_counter() - t0)
            cpu = (time.process_time() - cpu0) / repeats
        thread.join(timeout=5)
    name = "loopback round trip" + (f" of {size // 1000} kB" if size >= 1000 else "")
    return Floor(name, statistics.median(walls), cpu)


def synced_lmdb_commit(repeats: int = 40) -> Floor:
    """One small put per synced write transaction, in the temporary directory."""
    import lmdb
    with tempfile.TemporaryDirectory() as tmp:
        env = lmdb.open(os.path.join(tmp, "floor.lmdb"), subdir=False,
                        map_size=4 << 20, max_dbs=0, lock=True)  # sync=True: the default
        try:
            walls = []
            cpu0 = time.thread_time()
            for i in range(repeats):
                t0 = time.perf_counter()
                with env.begin(write=True) as txn:
                    txn.put(b"key", i.to_bytes(8, "little") * 8)
                walls.append(time.perf_counter() - t0)
            cpu = (time.thread_time() - cpu0) / repeats
        finally:
            env.close()
    return Floor("synced LMDB commit", statistics.median(walls), cpu)


def small_plain_file(repeats: int = 50) -> Floor:
    """1 kB written to a new file and closed (no fsync)."""
    with tempfile.TemporaryDirectory() as tmp:
        walls = []
        cpu0 = time.thread_time()
        for i in range(repeats):
            t0 = time.perf_counter()
            with open(os.path.join(tmp, f"{i}.bin"), "wb") as f:
                f.write(b"x" * 1000)
            walls.append(time.perf_counter() - t0)
        cpu = (time.thread_time() - cpu0) / repeats
    return Floor("small plain file", statistics.median(walls), cpu)


def python_start(repeats: int = 5) -> Floor:
    """``python -c pass``: wall time, and the child's CPU."""
    walls = []
    before = os.times()
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        walls.append(time.perf_counter() - t0)
    after = os.times()
    cpu = (after.children_user + after.children_system
           - before.children_user - before.children_system) / repeats
    return Floor("Python start", statistics.median(walls), cpu)


def in_fresh_process() -> dict[str, Floor]:
    """The floors measured in a fresh process that has imported numpy and h5py:
    ``fork`` (warm fork+exit+reap; its CPU split in ``fork_parent_cpu`` and
    ``fork_child_cpu``), ``hdf5_first``, ``hdf5_second`` (small HDF5 file) and
    ``cow_fault`` (copy-on-write fault)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return {key: Floor(**value) for key, value in json.loads(out).items()}


# --- the fresh process's part ------------------------------------------------------------

def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _fork_exit_reap(repeats: int = 200) -> dict[str, Floor]:
    walls = []
    self0 = time.thread_time()  # not numpy's BLAS threads
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(repeats):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        walls.append(time.perf_counter() - t0)
    self1 = time.thread_time()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    parent = (self1 - self0) / repeats
    child = (_cpu(children1) - _cpu(children0)) / repeats
    faults = (children1.ru_minflt - children0.ru_minflt) / repeats
    return {"fork": Floor("warm fork+exit+reap", statistics.median(walls), parent + child,
                          faults),
            "fork_parent_cpu": Floor("warm fork+exit+reap, the parent's CPU", parent, parent),
            "fork_child_cpu": Floor("warm fork+exit, the child's CPU", child, child, faults)}


def small_hdf5_file(path: str, name: str = "small HDF5 file") -> Floor:
    """A small HDF5 file written and closed at ``path`` with h5py: its wall and CPU
    time and the process's minor page faults meanwhile, once (the first in a process
    costs more: see ``in_fresh_process``)."""
    import h5py
    # this thread's CPU: numpy's BLAS threads, if busy, are not the file's
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0, cpu0 = time.perf_counter(), time.thread_time()
    with h5py.File(path, "w") as f:
        f["x"] = 0
        f.create_dataset("s", data="x", dtype=h5py.string_dtype())
    wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    return Floor(name, wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0)


def _cow_fault(size: int = 16 << 20) -> Floor:
    pages = size // mmap.PAGESIZE
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory.madvise(mmap.MADV_NOHUGEPAGE)  # one fault per 4 kB page, not per 2 MB
    memory[:] = b"\x01" * size
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        usage0, cpu0 = resource.getrusage(resource.RUSAGE_SELF), time.thread_time()
        memory[::mmap.PAGESIZE] = b"\x02" * pages
        cpu = time.thread_time() - cpu0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - usage0.ru_minflt
        os.write(write_end, json.dumps([cpu, faults]).encode())
        os._exit(0)
    os.close(write_end)
    cpu, faults = json.loads(os.read(read_end, 1000))
    os.close(read_end)
    os.waitpid(pid, 0)
    memory.close()
    return Floor("copy-on-write fault", cpu / max(faults, 1), cpu / max(faults, 1), faults)


def _fresh_process_floors() -> dict[str, Floor]:
    import h5py  # noqa: F401  (imported before anything is timed, as in a template)
    import numpy  # noqa: F401
    floors = {}
    with tempfile.TemporaryDirectory() as tmp:
        floors["hdf5_first"] = small_hdf5_file(os.path.join(tmp, "1.h5"),
                                               "first small HDF5 file in a process")
        floors["hdf5_second"] = small_hdf5_file(os.path.join(tmp, "2.h5"))
    floors.update(_fork_exit_reap())
    floors["cow_fault"] = _cow_fault()
    return floors


if __name__ == "__main__":
    floors = _fresh_process_floors()
    if sys.argv[1:] == ["--json"]:
        print(json.dumps({key: dataclasses.asdict(f) for key, f in floors.items()}))
    else:
        for f in [*floors.values(), loopback_round_trip(), synced_lmdb_commit(),
                  small_plain_file(), python_start()]:
            print(f"{f}; CPU {duration(f.cpu)}" + (f"; {f.faults:.0f} minor faults"
                                                   if f.faults else ""))
