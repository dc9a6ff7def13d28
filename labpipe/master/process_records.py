"""The process groups a master started, recorded in its lab directory, and the ending of
those a previous master left running.

Normally nothing outlives a master: its template dies with it (watchdog pipe), and kills
every worker's process group; workers and examiners die with the template
(``PR_SET_PDEATHSIG``). This file covers what that cannot: a template killed at the same
time as the master, a process that left its group.

``ProcessRecords(path)`` keeps the file ``processes.pyon``: a list of
``{"pgid": int, "start": int}``, ``start`` being the group leader's start time from
``/proc`` (clock ticks after boot), so that a recycled pid is never taken for a recorded
group. ``add(pid)`` (thread-safe) records a new group leader, first dropping groups that
have no process any more, and rewrites the file atomically (without fsync: the file
must survive the master's crash, and no process survives a power loss).

``clear()`` empties it at a clean stop. ``end_leftovers(path)`` (blocking; the master calls it in a thread before it restores
the schedule) reads the file a previous master left, ends each recorded group still
running (SIGTERM, then SIGKILL after ``grace`` seconds), logs one line per group ended,
and empties the file. A torn or garbled file gives one warning and is treated as empty.

A group is recognised when its leader runs with the recorded start time, or, the leader
gone, when members started no earlier than it (while a group has members its id is not
given to a new process). A leader running with another start time is a recycled pid:
left alone.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from labpipe.protocol import pyon
from labpipe.worker import lifetime

__all__ = ["ProcessRecords", "end_leftovers", "read_records", "FILE_NAME"]

logger = logging.getLogger(__name__)

FILE_NAME = "processes.pyon"


def read_records(path: str) -> list[dict]:
    """The records in path ([] when missing; one warning when torn or garbled)."""
    if not os.path.exists(path):
        return []
    try:
        records = pyon.load_file(path)
        if not isinstance(records, list):
            raise ValueError(f"a list was expected, not {type(records).__name__}")
        good = [r for r in records
                if isinstance(r, dict) and isinstance(r.get("pgid"), int)
                and not isinstance(r.get("pgid"), bool) and r["pgid"] > 1
                and isinstance(r.get("start"), int)]
        if len(good) != len(records):
            raise ValueError("entries of a bad shape")
        return good
    except Exception as e:
        logger.warning("%s is torn or garbled (%s): no process group of a previous "
                       "master can be looked for", path, _one_line(e))
        return []


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:200]


def _members(record: dict, table: list[lifetime.ProcInfo]) -> list[lifetime.ProcInfo]:
    """The live processes of the recorded group (see the module docstring)."""
    pgid, start = record["pgid"], record["start"]
    if pgid == os.getpgrp():
        return []  # never our own group (the shell's job, a test runner's)
    leader = next((p for p in table if p.pid == pgid), None)
    if leader is not None and leader.start != start and leader.state != "Z":
        return []  # the pid was recycled
    return [p for p in table if p.pgid == pgid and p.state != "Z" and p.start >= start]


def end_leftovers(path: str, grace: float = 2.0) -> int:
    """End the groups recorded in path that still run; the number of groups ended."""
    records = read_records(path)
    ended = 0
    for record in records:
        members = _members(record, lifetime.process_table())
        if not members:
            continue
        pgid = record["pgid"]
        names = ", ".join(sorted({p.name for p in members}))
        lifetime.kill_group(pgid, signal.SIGTERM)
        how = "SIGTERM"
        deadline = time.monotonic() + grace
        while _members(record, lifetime.process_table()):
            if time.monotonic() > deadline:
                lifetime.kill_group(pgid, signal.SIGKILL)
                how = "SIGKILL"
                break
            time.sleep(0.02)
        logger.warning("ended process group %d left running by a previous master "
                       "(%d process%s: %s) with %s", pgid, len(members),
                       "" if len(members) == 1 else "es", names, how)
        ended += 1
    if records or os.path.exists(path):
        pyon.store_file(path, [], False)
    return ended


class ProcessRecords:
    """The process groups this master started, in ``path`` (see the module docstring)."""

    def __init__(self, path: str):
        self.path = path
        self._records: dict[int, int] = {}  # pgid -> leader's start time
        self._lock = threading.Lock()

    def add(self, pid: int) -> None:
        """Record the group led by pid (a no-op when it is recorded already)."""
        with self._lock:
            if pid in self._records:
                return
            start = lifetime.start_time(pid)
            self._prune()
            if start is not None:
                self._records[pid] = start
            self._write()

    def clear(self) -> None:
        """Forget every group (at the master's clean stop, every run having ended)."""
        with self._lock:
            self._records.clear()
            self._write()

    def _prune(self) -> None:
        for pgid in [g for g in self._records if not _group_exists(g)]:
            del self._records[pgid]

    def _write(self) -> None:
        pyon.store_file(self.path, [{"pgid": g, "start": s}
                                    for g, s in self._records.items()], False)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
