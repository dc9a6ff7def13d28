"""Benchmark the cost of editing the queue: submits and deletes, idle, under load, in
bulk, from many clients at once, and with a long queue.

Starts ``labpipe-master`` in a temporary lab (ports picked free) and prints each figure
beside its floor (``floors.py``, measured in the same run; the ratio after it). The
floor of one durable submit is a loopback round trip (the RPC) plus one synced LMDB
commit (the submission is on disk before its RID is returned):

- submit RPC, idle: median of 200 submits to a held pipeline (nothing runs).
- submit RPC under load: median of 200 submits to a held pipeline while another
  pipeline runs trivial runs back to back (kept 5 deep).
- 1,000 sequential submits, then 1,000 deletes of those pending runs, one client.
- concurrent submits: 10 clients, each 200 submits one after the other; durable
  submits per second in all. Floor: one synced commit per *group* of submissions that
  arrived together, so the floor printed is per-submission cost of one round trip + one
  commit divided by the 10 clients.
- a submit at 10,000 pending runs against one at 0 pending (medians of 100).
- the master's RSS (``/proc/PID/status`` VmRSS) idle, and after each of 10 rounds of
  1,000 submits and 1,000 deletes: what the rounds left behind from round 1 to round 10
  (target: flat, within 2 MiB).

Usage: python benchmarks/bench_submit.py [--pending N] [--rounds R]  (10,000 and 10)
"""

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402
from bench_master import (TRIVIAL, TRIVIAL_EXPID, ScheduleWatch,  # noqa: E402
                          master_process_in_temporary_lab)

from labpipe.protocol.rpc import AsyncClient
from labpipe.protocol.sync import Subscriber

HELD = "held"


async def connect(ports: dict[str, int]) -> AsyncClient:
    client = AsyncClient()
    await client.connect_rpc("127.0.0.1", ports["control"], "schedule")
    return client


async def timed_submits(schedule: AsyncClient, count: int) -> tuple[list[float], list[int]]:
    """count submits to the held pipeline, one after the other: their times and RIDs."""
    times, rids = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        rids.append(await schedule.submit(HELD, TRIVIAL_EXPID))
        times.append(time.perf_counter() - t0)
    return times, rids


async def delete_all(schedule: AsyncClient, rids: list[int]) -> float:
    t0 = time.perf_counter()
    for rid in rids:
        await schedule.delete(rid)
    return time.perf_counter() - t0


async def keep_busy(schedule: AsyncClient, watch: ScheduleWatch, stop: asyncio.Event) -> int:
    """Trivial runs back to back on pipeline main, 5 queued at any time; how many ran."""
    queued: list[int] = []
    done = 0
    while not stop.is_set():
        while len(queued) < 5:
            queued.append(await schedule.submit("main", TRIVIAL_EXPID))
        await watch.wait((queued.pop(0), "removed"))
        done += 1
    for rid in queued:
        await watch.wait((rid, "removed"))
    return done


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def rss_rounds(schedule: AsyncClient, pid: int, rounds: int) -> None:
    idle = rss_mib(pid)
    after = []
    for _ in range(rounds):
        await delete_all(schedule, (await timed_submits(schedule, 1000))[1])
        after.append(rss_mib(pid))
    print(f"master RSS: idle {idle:.1f} MiB; after {rounds} rounds of 1,000 submits and "
          f"deletes {after[-1]:.1f} MiB; round 1 -> {rounds}: {after[-1] - after[0]:+.1f} MiB "
          f"(per round: {', '.join(f'{a:.1f}' for a in after)})")


async def bench(ports: dict[str, int], floor: dict[str, floors.Floor], pending: int,
                pid: int, rounds: int) -> None:
    schedule = await connect(ports)
    await schedule.hold(HELD)
    watch = ScheduleWatch()
    subscriber = Subscriber("schedule", lambda init: init, watch.on_mod)
    await subscriber.connect("127.0.0.1", ports["notify"])
    one = floors.total(floor["loopback"], floor["lmdb"])
    try:
        await delete_all(schedule, (await timed_submits(schedule, 20))[1])  # warm-up

        times, rids = await timed_submits(schedule, 200)
        print(floors.beside("submit RPC, idle, median of 200", statistics.median(times), one))
        await delete_all(schedule, rids)

        stop = asyncio.Event()
        busy = asyncio.create_task(keep_busy(await connect(ports), watch, stop))
        await asyncio.sleep(0.5)
        times, rids = await timed_submits(schedule, 200)
        stop.set()
        ran = await busy
        print(floors.beside("submit RPC under load, median of 200", statistics.median(times), one)
              + f" ({ran} trivial runs meanwhile)")
        await delete_all(schedule, rids)

        t0 = time.perf_counter()
        times, rids = await timed_submits(schedule, 1000)
        print(floors.beside("1,000 sequential submits", time.perf_counter() - t0,
                            floors.Floor("1,000 x (round trip + commit)", 1000 * one.seconds)))
        print(floors.beside("1,000 deletes of pending runs", await delete_all(schedule, rids),
                            floors.Floor("1,000 x (round trip + commit)", 1000 * one.seconds)))

        clients = [await connect(ports) for _ in range(10)]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(timed_submits(c, 200) for c in clients))
        elapsed = time.perf_counter() - t0
        print(f"concurrent submits: {2000 / elapsed:.0f} durable submits/s (10 clients x 200); "
              + floors.beside("time per submit", elapsed / 2000,
                              floors.Floor("(round trip + commit) / 10", one.seconds / 10)))
        for client in clients:
            client.close_rpc()
        await delete_all(schedule, [rid for _, rids in results for rid in rids])

        at_zero, rids = await timed_submits(schedule, 100)
        await delete_all(schedule, rids)
        _, filler = await timed_submits(schedule, pending)
        at_many, rids = await timed_submits(schedule, 100)
        ratio = statistics.median(at_many) / statistics.median(at_zero)
        print(f"submit at {pending:,} pending: median {statistics.median(at_many) * 1e3:.2f} ms, "
              f"at 0 pending {statistics.median(at_zero) * 1e3:.2f} ms (x{ratio:.2f})")
        await delete_all(schedule, rids + filler)
        await rss_rounds(schedule, pid, rounds)
    finally:
        await subscriber.close()
        schedule.close_rpc()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    floors.header("bench_submit.py")
    floor = {"loopback": floors.loopback_round_trip(), "lmdb": floors.synced_lmdb_commit()}
    with master_process_in_temporary_lab({"trivial": TRIVIAL}) as (process, ports):
        asyncio.run(bench(ports, floor, args.pending, process.pid, args.rounds))
    floors.load_average("end")


if __name__ == "__main__":
    main()
