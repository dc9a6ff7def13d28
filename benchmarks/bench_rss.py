"""Benchmark the master's resident memory: idle, and over rounds of queue edits.

Starts ``labpipe-master`` in a temporary lab (ports picked free) and prints, from
``/proc/PID/status`` and ``/proc/PID/smaps``:

- idle RSS, once the master is ready and 20 submits and deletes have warmed it up,
  beside two floors: the RSS of a bare ``python -c "import labpipe.master"`` (the
  issue's floor; the package's ``__init__`` only) and of ``import labpipe.master.main``
  (what ``python -m labpipe.master`` imports before it runs), each plus the resident
  pages of the LMDB maps the master holds (schedule store, history; from its smaps);
- the RSS after each of ``--rounds`` rounds of 1,000 submits to a held pipeline and
  1,000 deletes of them, and what rounds 1 to ``--rounds`` left behind (target: flat,
  within 2 MiB), as it is and without the resident pages of the LMDB maps (each
  deleted run's history record is written to the history's LMDB file, whose map
  pages the appends touch: file-backed page cache, shared and reclaimable, the floor's
  "LMDB maps it touched"); at the end, the anonymous and file-backed parts. The figure is measured ``--repeats`` times (a fresh master each
  time); the median of the growths is printed, each run after it.

Usage: python benchmarks/bench_rss.py [--rounds R] [--repeats N] [--per-round N]
(10, 3 and 1,000)
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402
from bench_master import TRIVIAL, TRIVIAL_EXPID, master_process_in_temporary_lab  # noqa: E402

from labpipe.protocol.rpc import AsyncClient

HELD = "held"
MIB = 1024 * 1024


def status_kib(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def lmdb_resident_kib(pid: int) -> int:
    """Resident kB of the process's mappings of LMDB files (``*.lmdb``, ``data.mdb``)."""
    total, current = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(maxsplit=6)
            if "-" in first[0] and len(first) >= 5 and ":" in first[3]:  # a mapping's header
                path = first[5].strip() if len(first) > 5 else ""
                current = path.endswith((".lmdb", ".mdb"))
            elif current and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def bare_import_kib(statement: str) -> int:
    """VmRSS of a fresh Python process after running statement."""
    out = subprocess.run(
        [sys.executable, "-c", statement + "\nimport sys\n"
         "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"],
        capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


def rss_and_lmdb_mib(pid: int) -> tuple[float, float]:
    return status_kib(pid, "VmRSS") / 1024, lmdb_resident_kib(pid) / 1024


async def rounds(port: int, pid: int, count: int,
                 per_round: int) -> tuple[tuple[float, float], list[tuple[float, float]]]:
    """Idle (RSS, LMDB maps resident) after a warm-up, then the same after each round,
    in MiB."""
    schedule = AsyncClient()
    await schedule.connect_rpc("127.0.0.1", port, "schedule")
    try:
        await schedule.hold(HELD)
        for rid in [await schedule.submit(HELD, TRIVIAL_EXPID) for _ in range(20)]:
            await schedule.delete(rid)
        await asyncio.sleep(1.5)  # the write behind of last_rid.pyon, the history's
        idle = rss_and_lmdb_mib(pid)
        after = []
        for _ in range(count):
            rids = [await schedule.submit(HELD, TRIVIAL_EXPID) for _ in range(per_round)]
            for rid in rids:
                await schedule.delete(rid)
            after.append(rss_and_lmdb_mib(pid))
        return idle, after
    finally:
        schedule.close_rpc()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=1000)
    args = parser.parse_args()
    floors.header("bench_rss.py")
    bare = statistics.median(bare_import_kib("import labpipe.master") for _ in range(3)) / 1024
    main_import = statistics.median(
        bare_import_kib("import labpipe.master.main") for _ in range(3)) / 1024
    idles, growths, bare_growths, lmdbs = [], [], [], []
    for _ in range(args.repeats):
        with master_process_in_temporary_lab({"trivial": TRIVIAL}) as (process, ports):
            (idle, idle_lmdb), after = asyncio.run(
                rounds(ports["control"], process.pid, args.rounds, args.per_round))
            anon = status_kib(process.pid, "RssAnon") / 1024
            file_backed = status_kib(process.pid, "RssFile") / 1024
        idles.append(idle)
        lmdbs.append(idle_lmdb)
        rss = [a for a, _ in after]
        without = [a - m for a, m in after]
        growths.append(rss[-1] - rss[0])
        bare_growths.append(without[-1] - without[0])
        print(f"run {len(idles)}: idle {idle:.1f} MiB (LMDB maps {idle_lmdb:.1f}); after each "
              f"round of {args.per_round:,} submits and deletes: "
              f"{', '.join(f'{a:.1f}' for a in rss)} MiB, of which LMDB maps "
              f"{', '.join(f'{m:.1f}' for _, m in after)}; round 1 -> {args.rounds}: "
              f"{growths[-1]:+.1f} MiB, without the LMDB maps {bare_growths[-1]:+.1f} MiB; "
              f"at the end anonymous {anon:.1f} MiB, file-backed {file_backed:.1f} MiB")
    idle, lmdb_mib = statistics.median(idles), statistics.median(lmdbs)

    def mib(value: float) -> str:
        return f"{value:.1f} MiB"

    print(floors.beside(f"master RSS, idle, median of {args.repeats}", idle,
                        floors.Floor('python -c "import labpipe.master" + the LMDB maps '
                                     'resident', bare + lmdb_mib), fmt=mib)
          + f" (bare import {bare:.1f} MiB, LMDB {lmdb_mib:.1f} MiB)")
    print(floors.beside(f"master RSS, idle, median of {args.repeats}", idle,
                        floors.Floor('python -c "import labpipe.master.main" + the LMDB maps '
                                     'resident', main_import + lmdb_mib), fmt=mib)
          + f" (import {main_import:.1f} MiB)")
    print(f"master RSS growth over rounds 1 -> {args.rounds} of {args.per_round:,} submits "
          f"and deletes, median of {args.repeats}: {statistics.median(growths):+.1f} MiB "
          f"(runs: {', '.join(f'{g:+.1f}' for g in growths)}); without the LMDB maps' "
          f"resident pages (the history written meanwhile): "
          f"{statistics.median(bare_growths):+.1f} MiB (runs: "
          f"{', '.join(f'{g:+.1f}' for g in bare_growths)}; target: within 2 MiB)")
    floors.load_average("end")


if __name__ == "__main__":
    main()
