"""The schedule on disk: every accepted submission, until its run ends.

``ScheduleStore(path)`` opens (or creates) one LMDB file (``schedule.mdb`` in the lab
directory, ``subdir=False``). One entry per run still in the schedule:

- LMDB key: the RID as 8 bytes big-endian (so entries iterate in RID order);
- LMDB value: the PYON text of the record ``{"rid", "pipeline", "expid", "priority",
  "due_date", "flush", "submitted", "repo_rev", "stage_times", "user", "group",
  "queue_position", "immediate"}``; ``stage_times`` maps each stage the run reached
  (``preparing``, ``running``...) to the time it got there (records written before
  queue positions lack the last two: the RID, and not immediate).

Plus one meta entry, never removed: key ``b"meta/last_rid"`` (not 8 bytes: never taken
for a record), value the PYON text of the highest RID ever submitted. Each submission
writes it in the same transaction as its record; ``last_rid`` holds it (-1 for a new
file). This commit is what makes a RID durable: the scheduler writes ``last_rid.pyon``
without fsync when it has a store, and at start reserves RIDs up to ``last_rid``.

Durability: ``record_submission(run)`` commits (LMDB syncs on commit) before it returns,
and the scheduler awaits it before ``submit`` returns the RID. ``note_stage`` and
``remove`` are ordered after it: every change goes through ``LMDBFile.write`` (changes
commit in the order they were asked for; those asked for while a commit runs share the
next transaction; a note that would write the record as it was last written writes
nothing), and the commit itself runs in a thread (``asyncio.to_thread``): the
event loop never waits for the disk. ``write_record(run)`` commits a run's record now
(its staged changes included: ``change`` awaits it before applying them), and
``write_records(runs)`` several in one transaction (the scheduler's deletions, with
``run.deletion_asked`` set, and queue moves), before they are published. An ended run's
record goes with a later write (``remove_soon``). Stage notes of
one run waiting behind other writes are merged into one (the run's state at write time),
and a note still waiting when the run is removed is dropped.

The map grows by itself: a transaction that does not fit doubles the map and is retried.

``restore()`` (at start, before any change) reads every record (meta entries skipped).
The scheduler puts back those that never left ``pending``/``flushing``; the others were
past pending when the master died and go to history as ``interrupted``.
"""

import asyncio
import logging
import os
import struct
from typing import Any

import lmdb

from labpipe.master.lmdb_file import DEFAULT_MAP_SIZE, LMDBFile, Ops
from labpipe.master.run import Run
from labpipe.protocol import pyon

__all__ = ["ScheduleStore", "rid_key", "NOT_STARTED_STAGES", "LAST_RID_KEY",
           "REMOVAL_DELAY"]

logger = logging.getLogger(__name__)

#: Stages in which a run has not started doing anything: restored as they were.
NOT_STARTED_STAGES = frozenset({"pending", "flushing"})

#: Seconds an ended run's record may wait for a write to go with (``remove_soon``).
REMOVAL_DELAY = 0.05

#: The key of the highest RID ever submitted (record keys are exactly 8 bytes).
LAST_RID_KEY = b"meta/last_rid"
META_PREFIX = b"meta/"


def rid_key(rid: int) -> bytes:
    """The LMDB key of a RID: 8 bytes big-endian, so keys sort like RIDs."""
    return struct.pack(">Q", rid)


class ScheduleStore:
    """The pending schedule on disk; see the module docstring."""

    def __init__(self, path: str | os.PathLike, map_size: int = DEFAULT_MAP_SIZE):
        self.file = LMDBFile(path, map_size, "schedule store")
        self.path = self.file.path
        self._records: dict[int, dict[str, Any]] = {}
        self._noting: set[int] = set()  # RIDs with a note_stage waiting to write
        self._removals: list[int] = []  # ended runs whose records go with a later write
        self._flushing: asyncio.Task[None] | None = None
        #: The highest RID ever submitted (-1 when none was), as committed with it.
        self.last_rid: int = self.file.read_now(self._read_last_rid)

    def _read_last_rid(self, txn: lmdb.Transaction) -> int:
        data = txn.get(LAST_RID_KEY)
        if data is None:
            return -1
        try:
            rid = pyon.decode(bytes(data).decode("utf-8"))
            if not isinstance(rid, int) or isinstance(rid, bool):
                raise ValueError("not an integer")
        except Exception as e:
            raise RuntimeError(f"{self.path}: cannot read the last RID at key "
                               f"{LAST_RID_KEY!r} ({e})") from e
        return rid

    @staticmethod
    def record_of(run: Run) -> dict[str, Any]:
        """The stored record of run, with the changes staged in ``run.staged`` (being
        written, not applied yet)."""
        record: dict[str, Any] = {"rid": run.rid, "pipeline": run.pipeline_name, "expid": run.expid,
                  "priority": run.priority, "due_date": run.due_date, "flush": run.flush,
                  "submitted": run.submitted, "repo_rev": run.repo_rev,
                  "stage_times": dict(run.stage_times),
                  "user": getattr(run, "user", None), "group": getattr(run, "group", None),
                  "queue_position": getattr(run, "queue_position", float(run.rid)),
                  "immediate": getattr(run, "immediate", False)}
        record.update(getattr(run, "staged", None) or {})
        if getattr(run, "starting_at", None) is not None:
            record["stage_times"].setdefault("preparing", run.starting_at)
        if getattr(run, "deletion_asked", None) is not None:
            record["stage_times"].setdefault("deleting", run.deletion_asked)
        return record

    async def write_record(self, run: Run) -> None:
        """Commit the run's record now (with its staged changes), after every write
        asked for before; returns once it is on disk. Does nothing for a run no longer
        stored."""
        if run.rid not in self._records:
            return

        def ops() -> Ops:
            if run.rid not in self._records:  # removed meanwhile
                return []
            record = self.record_of(run)
            self._records[run.rid] = record
            return [(rid_key(run.rid), pyon.encode(record).encode("utf-8")),
                    *self._drain_removals()]
        await self.file.write(ops)

    async def write_records(self, runs: list[Run]) -> None:
        """Commit the records of several runs (with their staged changes) in one
        transaction, after every write asked for before; runs no longer stored are
        left out."""
        def ops() -> Ops:
            written: Ops = []
            for run in runs:
                if run.rid in self._records:
                    record = self.record_of(run)
                    self._records[run.rid] = record
                    written.append((rid_key(run.rid), pyon.encode(record).encode("utf-8")))
            return written + self._drain_removals()
        await self.file.write(ops)

    async def record_submission(self, run: Run) -> None:
        """Commit the run's submission, and its RID as ``last_rid`` (unless a higher one
        was), in one transaction; returns once it is on disk."""
        record = self.record_of(run)
        self._records[run.rid] = record
        self.last_rid = max(self.last_rid, run.rid)
        await self.file.write([
            (rid_key(run.rid), pyon.encode(record).encode("utf-8")),
            (LAST_RID_KEY, pyon.encode(self.last_rid).encode("utf-8")),
            *self._drain_removals()])

    async def note_stage(self, run: Run) -> None:
        """Record the stages the run reached (and its current priority, due date,
        flush); does nothing for a run no longer stored. Notes of one run that pile up
        behind other writes become one write, of the run's state when it is made."""
        if run.rid not in self._records or run.rid in self._noting:
            return
        self._noting.add(run.rid)

        def ops() -> Ops:
            self._noting.discard(run.rid)
            if run.rid not in self._records:  # removed meanwhile
                return []
            record = self.record_of(run)
            if record == self._records[run.rid]:
                # already written (by this batch's transaction or an earlier one,
                # which commits before this write returns): nothing to add
                return []
            self._records[run.rid] = record
            return [(rid_key(run.rid), pyon.encode(record).encode("utf-8"))]
        await self.file.write(ops)

    async def remove(self, rid: int) -> None:
        """The run ended: forget it (committed before it returns)."""
        self._records.pop(rid, None)
        await self.file.write([(rid_key(rid), None)])

    def remove_soon(self, rid: int) -> None:
        """The run ended and its end is recorded elsewhere (history): its record goes
        with the next write, or within ``REMOVAL_DELAY`` seconds; a record that
        outlives a crash is dropped at restore (the scheduler asks history). One
        commit less per run's end: a commit saved for every delete."""
        self._records.pop(rid, None)
        self._removals.append(rid)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(
                self._flush_later(), name="schedule store removals")

    async def _flush_later(self) -> None:
        await asyncio.sleep(REMOVAL_DELAY)
        await self.flush_removals()

    async def flush_removals(self) -> None:
        """Commit the removals still waiting (the scheduler's stop awaits it)."""
        if self._removals:
            await self.file.write(self._drain_removals)

    def _drain_removals(self) -> Ops:
        removals, self._removals = self._removals, []
        return [(rid_key(rid), None) for rid in removals]

    def restore(self) -> list[dict[str, Any]]:
        """Every stored record, in RID order (blocking; call at start)."""
        records = []
        for key, data in self.file.items_now():
            if bytes(key).startswith(META_PREFIX):
                continue
            try:
                record = pyon.decode(bytes(data).decode("utf-8"))
                if not isinstance(record, dict) or record.get("rid") != struct.unpack(
                        ">Q", key)[0]:
                    raise ValueError("not a schedule record")
            except Exception as e:
                logger.error("%s: cannot read the record at key %r (%s); ignored",
                             self.path, bytes(key), e)
                continue
            record.setdefault("stage_times", {})
            records.append(record)
            self._records[record["rid"]] = record
        return records

    def close(self) -> None:
        self.file.close()
