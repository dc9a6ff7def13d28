"""The run history: every run that left the schedule, kept on disk.

``History(path, lab_dir, scheduler)`` opens (or creates) one LMDB file (``history.mdb``
in the lab directory, ``subdir=False``, the map growing by itself), keyed by the RID (8
bytes big-endian), valued by the PYON text of the record:

``{"rid", "expid", "pipeline", "class_name", "priority", "due_date", "flush", "status",
"repo_rev", "submitted", "stages": {stage: {"start", "end", "spent"}}, "ended", "error",
"results", "content", "user", "group", "analyzed_on"}`` (``class_name``: the class that ran, when known; ``content``:
``{"sha256": hex, "size": bytes}`` of the UTF-8 text of a run submitted by content,
else None)

- ``status``: ``completed``, ``failed``, ``terminated``, ``deleted`` or ``interrupted``
  (the master stopped while the run was past pending);
- ``stages``: each stage the run reached (``flushing``, ``preparing``, ``prepare_done``,
  ``running``, ``paused``, ``run_done``, ``analyzing``, ``deleting``):
  ``{"start": t, "end": t, "spent": s}``, from the time it first got there to the time
  it last left (the last ends at ``ended``), and the seconds it really spent there
  (``stage_clock.py``): a run that yielded to another is ``running``, ``paused``,
  ``running`` again, and ``spent`` counts each visit; a ``pause()`` that returned at
  once (nothing waiting) is no pause, and shows as running;
- ``error``: the error text of a failed run, else None; ``results``: the results file
  path relative to the lab directory (absolute when outside it), or None.
- ``analyzed_on``: where an ``@offload_analyze`` analysis ran, ``{"dask_scheduler":
  address, "dask_worker": address or None}`` (``docs/dask.md``; the worker is None when
  the analysis failed before it returned), else None: in the run's worker.

It is fed by ``scheduler.on_run_end`` (``on_run_end`` is a coroutine: the record is on
disk before the scheduler forgets the run's stored submission). The RPC target
``history`` offers ``get``, ``list``, ``resubmit`` and ``wait``; the ``history``
notifier ``{rid: record}`` holds the most recent ``NOTIFIER_SIZE`` records.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
import os
import struct
import time
from typing import TYPE_CHECKING, Any

import lmdb

from labpipe.master.lmdb_file import LMDBFile, Stored
from labpipe.master.results_reader import read_results
from labpipe.master.schedule_store import rid_key
from labpipe.master.scheduler import EXPID_KEYS
from labpipe.protocol import pyon
from labpipe.protocol.sync import Notifier

if TYPE_CHECKING:
    from labpipe.master.run import Run, RunEnd
    from labpipe.master.scheduler import Scheduler

__all__ = ["History", "HistoryTarget", "NOTIFIER_SIZE"]

logger = logging.getLogger(__name__)

NOTIFIER_SIZE = 1000
#: What resubmit(rid, overrides) may change besides the expid's own keys.
_SCHEDULING_OVERRIDES = {"pipeline", "priority", "due_date", "flush"}

#: A history record (see the module docstring).
Record = dict[str, Any]


def content_fingerprint(expid: Any) -> dict[str, Any] | None:
    """``{"sha256", "size"}`` of a submitted content's UTF-8 text, None without one."""
    content = expid.get("content") if isinstance(expid, dict) else None
    if not isinstance(content, str):
        return None
    data = content.encode("utf-8", "surrogatepass")
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _stages(run: Run, ended: float) -> dict[str, dict[str, float]]:
    """The record's ``stages``: the run's stage clock; for a run this master only
    restored (it knows when the run got to each stage, from the schedule store), each
    stage until the next one began."""
    if run.clock.visited:
        return run.clock.summary(ended)
    ordered = sorted(run.stage_times.items(), key=lambda kv: kv[1])
    stages = {}
    for i, (stage, start) in enumerate(ordered):
        end = ordered[i + 1][1] if i + 1 < len(ordered) else ended
        stages[stage] = {"start": start, "end": end, "spent": max(0.0, end - start)}
    return stages


class History:
    """The ``history`` RPC target, its notifier and its file."""

    def __init__(self, path: str | os.PathLike[str], lab_dir: str = ".",
                 scheduler: Scheduler | None = None):
        self.file = LMDBFile(path, label="history")
        self.path = self.file.path
        self.lab_dir = os.path.abspath(lab_dir)
        self.scheduler = scheduler
        self._waiters: dict[int, builtins.list[asyncio.Future[Record]]] = {}
        backing = {}
        for key, data in self.file.items_now()[-NOTIFIER_SIZE:]:
            record = self._decode(key, data)
            if record is not None:
                backing[record["rid"]] = record
        self.notifier = Notifier(backing)

    def _decode(self, key: Stored, data: Stored) -> Record | None:
        try:
            record = pyon.decode(bytes(data).decode("utf-8"))
            if not isinstance(record, dict) or record.get("rid") != struct.unpack(
                    ">Q", bytes(key))[0]:
                raise ValueError("not a history record")
            return record
        except Exception as e:
            logger.error("%s: cannot read the record at key %r (%s); ignored",
                         self.path, bytes(key), e)
            return None

    def _relative(self, path: str | None) -> str | None:
        if path is None:
            return None
        path = os.path.abspath(os.path.join(self.lab_dir, path))
        relative = os.path.relpath(path, self.lab_dir)
        return path if relative.startswith("..") else relative

    def record_of(self, run: Run, end: RunEnd) -> Record:
        ended = time.time()
        return {"rid": run.rid, "expid": run.expid, "pipeline": run.pipeline_name,
                "class_name": run.class_name or run.expid.get("class_name"),
                "priority": run.priority, "due_date": run.due_date, "flush": run.flush,
                "status": end.status, "repo_rev": run.repo_rev,
                "submitted": run.submitted, "stages": _stages(run, ended),
                "ended": ended, "error": end.error,
                "results": self._relative(end.results),
                "content": content_fingerprint(run.expid),
                "user": run.user, "group": run.group, "analyzed_on": run.analyzed_on}

    async def on_run_end(self, run: Run, end: RunEnd) -> None:
        """A run left the schedule: its record goes to disk, then to the notifier."""
        record = self.record_of(run, end)
        if end.status == "interrupted" and await self._stored(run.rid) is not None:
            # the run had ended, only its schedule record outlived the master: keep it
            return
        await self.file.write([(rid_key(run.rid), pyon.encode(record).encode("utf-8"))])
        self.notifier[run.rid] = record
        while len(self.notifier.raw_view) > NOTIFIER_SIZE:
            del self.notifier[min(self.notifier.raw_view)]
        for future in self._waiters.pop(run.rid, []):
            if not future.done():
                future.set_result(record)

    async def has(self, rid: int) -> bool:
        """Whether run rid has a history record (it ended)."""
        return rid in self.notifier.raw_view or await self._stored(rid) is not None

    async def _stored(self, rid: int) -> Record | None:
        data = await self.file.read(lambda txn: txn.get(rid_key(rid)))
        return None if data is None else self._decode(rid_key(rid), data)

    # --- RPC -------------------------------------------------------------------------

    async def get(self, rid: int) -> Record:
        """The record of run rid (KeyError when it has no record)."""
        if rid in self.notifier.raw_view:
            return self.notifier.raw_view[rid]
        if isinstance(rid, bool) or not isinstance(rid, int) or rid < 0:
            raise KeyError(f"RID {rid!r} has no history record")
        record = await self._stored(rid)
        if record is None:
            state = self._scheduled_state(rid)
            if state is not None:
                raise KeyError(f"RID {rid} has not ended yet (it is {state})")
            raise KeyError(f"RID {rid} has no history record")
        return record

    async def list(self, limit: int = 100,
                   before_rid: int | None = None) -> builtins.list[Record]:
        """The most recent records, newest first: at most limit of them, with RIDs
        below before_rid when given."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError("limit must be a non-negative integer")
        if before_rid is not None and (isinstance(before_rid, bool)
                                       or not isinstance(before_rid, int)):
            raise TypeError("before_rid must be an integer or None")

        def read(txn: lmdb.Transaction) -> builtins.list[tuple[Stored, Stored]]:
            out: builtins.list[tuple[Stored, Stored]] = []
            cursor = txn.cursor()
            if before_rid is None:
                positioned = cursor.last()
            elif before_rid <= 0:
                return out
            else:
                positioned = cursor.set_range(rid_key(before_rid))
                positioned = cursor.prev() if positioned else cursor.last()
            while positioned and len(out) < limit:
                out.append((cursor.key(), cursor.value()))
                positioned = cursor.prev()
            return out
        rows = await self.file.read(read)
        return [r for r in (self._decode(k, v) for k, v in rows) if r is not None]

    async def resubmit(self, rid: int, overrides: dict[str, Any] | None = None) -> int:
        """Submit run rid again (same expid, pipeline, priority, flush; same commit when
        from the repository); returns the new RID. overrides may change ``pipeline``,
        ``priority``, ``due_date``, ``flush`` and keys of the expid (``arguments`` are
        merged into the old ones)."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - _SCHEDULING_OVERRIDES - EXPID_KEYS
        if unknown:
            raise ValueError(f"cannot override {sorted(unknown)}; valid: "
                             f"{sorted(_SCHEDULING_OVERRIDES | EXPID_KEYS)}")
        if self.scheduler is None:
            raise RuntimeError("this history has no scheduler to resubmit runs to")
        record = await self.get(rid)
        expid = dict(record["expid"])
        for key in EXPID_KEYS & set(overrides):
            if key == "arguments":
                if not isinstance(overrides[key], dict):
                    raise TypeError("the 'arguments' override must be a dict")
                expid["arguments"] = {**expid.get("arguments", {}), **overrides[key]}
            else:
                expid[key] = overrides[key]
        return await self.scheduler.submit(
            overrides.get("pipeline", record["pipeline"]), expid,
            overrides.get("priority", record["priority"]),
            overrides.get("due_date"), overrides.get("flush", record["flush"]))

    async def wait(self, rid: int, timeout: float | None = None) -> Record:
        """Wait until run rid has ended and return its record (TimeoutError after timeout
        seconds; KeyError for a RID that is neither scheduled nor in the history)."""
        # waiting before looking: a run ending while we look resolves the future
        future: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(rid, []).append(future)
        try:
            try:
                return await self.get(rid)
            except KeyError:
                if not future.done() and self._scheduled_state(rid) is None:
                    raise
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise TimeoutError(f"RID {rid} has not ended within {timeout} s") from None
        finally:
            waiters = self._waiters.get(rid, [])
            if future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[rid]

    def _scheduled_state(self, rid: int) -> str | None:
        if self.scheduler is None:
            return None
        entry = self.scheduler.notifier.raw_view.get(rid)
        if entry is None:
            return "ending" if rid in self.scheduler.ending else None
        return entry["status"]

    def close(self) -> None:
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.cancel()
        self.file.close()


class HistoryTarget:
    """The ``history`` RPC target: the queries of ``History``, nothing else."""

    def __init__(self, history: History):
        self._history = history

    async def get(self, rid: int) -> Record:
        """The record of run rid (KeyError when it has none)."""
        return await self._history.get(rid)

    async def list(self, limit: int = 100,
                   before_rid: int | None = None) -> builtins.list[Record]:
        """The most recent records (at most limit, RIDs below before_rid), newest first."""
        return await self._history.list(limit, before_rid)

    async def resubmit(self, rid: int, overrides: dict[str, Any] | None = None) -> int:
        """Submit run rid again, with overrides; returns the new RID."""
        return await self._history.resubmit(rid, overrides)

    async def wait(self, rid: int, timeout: float | None = None) -> Record:
        """Wait until run rid has ended; returns its record."""
        return await self._history.wait(rid, timeout)

    async def read_results(self, rid: int) -> dict[str, dict[str, Any]]:
        """The ``datasets`` and ``archive`` of run rid's results file (KeyError when it
        has no record, ValueError when it has no results file or it cannot be read)."""
        record = await self._history.get(rid)
        if not record.get("results"):
            raise ValueError(f"RID {rid} has no results file")
        path = os.path.join(self._history.lab_dir, record["results"])
        return await asyncio.to_thread(read_results, path)
